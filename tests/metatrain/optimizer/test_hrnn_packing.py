"""The packed HRNN update against the per-leaf implementation it replaced.

The reference below is the per-leaf code (one state per params leaf) as it
was before the per-parameter state was packed into one slab; it is kept here,
private to the tests, to pin the packed update to the same results.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from metatrain.optimizer import hrnn
from metatrain.optimizer import hrnn_packing as packing
from metatrain.optimizer.hrnn_config import HRNNConfig

Theta = dict[str, Any]

_EPS_MS = 1e-12
_EPS_RMS = 1e-16
_MIN_LOG_LR = -33.0

# ----------------------------------------------------------------------------
# Reference: the per-leaf implementation before packing (verbatim but for
# the names).


@struct.dataclass
class _RefLeafState:
  """Optimizer state of one parameter tensor, flattened to ``n`` elements."""

  h: jax.Array  # (param_units, n) parameter-GRU state, feature-major
  acc: jax.Array  # (T, n) gradient running averages
  ms: jax.Array  # (T, n) running mean squares of the averages
  scl_decay: jax.Array  # (n,) decay of ms, output by the optimizer
  inp_decay: jax.Array  # (n,) base decay of the averages
  log_lr: jax.Array  # (n,) stored log learning rate (0-size if unused)
  h_tensor: jax.Array  # (tensor_units,) tensor-GRU state
  true_param: Any  # original-shape copy of the params, attention only

  @property
  def size(self) -> int:
    """Number of optimized scalars in this tensor (0 for skipped leaves)."""
    return self.scl_decay.shape[0]


@struct.dataclass
class _RefState:
  """Optimizer state: one _RefLeafState per params leaf, the global state."""

  step: jax.Array
  leaves: tuple
  h_global: jax.Array


# ----------------------------------------------------------------------------
# State.


def _ref_is_trainable(leaf) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _ref_init_state(config: HRNNConfig, theta: Theta, params: Any,
               key: jax.Array | None = None) -> _RefState:
  """Initial optimizer state for ``params`` (any pytree of arrays).

  Args:
    config: the optimizer config.
    theta: meta-parameters (the learned initial RNN states live here).
    params: the parameters to be optimized; only shapes/dtypes are used,
      except with attention, where a copy of the true params is kept.
    key: seeds the per-element initial log learning rates; defaults to
      ``PRNGKey(config.init_seed)``.
  """
  cfg = config
  if key is None:
    key = jax.random.PRNGKey(cfg.init_seed)
  leaves = jax.tree_util.tree_leaves(params)
  lo = 0.5 * math.log(cfg.init_lr_range[0])
  hi = 0.5 * math.log(cfg.init_lr_range[1])
  out = []
  for i, leaf in enumerate(leaves):
    n = int(np.size(leaf)) if _ref_is_trainable(leaf) else 0
    k_el, k_off = jax.random.split(jax.random.fold_in(key, i))
    if cfg.dynamic_output_scale:
      log_lr = (jax.random.uniform(k_el, (n,), minval=lo, maxval=hi) +
                jax.random.uniform(k_off, (), minval=lo, maxval=hi))
      log_lr = jnp.clip(log_lr, _MIN_LOG_LR, cfg.max_log_lr)
    else:
      log_lr = jnp.zeros((0,))
    # jnp.array copies: state buffers must never alias theta or each other,
    # so that callers may donate the state.
    h_t = (jnp.array(theta["init_tensor_h"]) if cfg.use_tensor_rnn
           else jnp.zeros((0,)))
    true_param = (jnp.array(leaf) if cfg.use_attention and n else None)
    out.append(_RefLeafState(
        h=jnp.broadcast_to(theta["init_param_h"][:, None],
                           (cfg.param_units, n)),
        acc=jnp.zeros((cfg.num_timescales, n)),
        ms=jnp.zeros((cfg.num_timescales, n)),
        scl_decay=jnp.zeros((n,)),
        inp_decay=jnp.zeros((n,)),
        log_lr=log_lr,
        h_tensor=h_t,
        true_param=true_param))
  h_g = (jnp.array(theta["init_global_h"]) if cfg.use_global_rnn
         else jnp.zeros((0,)))
  return _RefState(step=jnp.zeros((), jnp.int32), leaves=tuple(out),
                   h_global=h_g)


# ----------------------------------------------------------------------------
# The update.


def _ref_gru(p, x, h, ext_bias=None):
  """Feature-major GRU step: x (in, n), h (units, n), ext_bias (3 units,).

  Feature-major layout keeps the long axis (parameters) last, so every matmul
  is a small (3u, in) matrix times a wide (in, n) one and every elementwise
  op runs over contiguous rows.
  """
  u = h.shape[0]
  b = p["b"] if ext_bias is None else p["b"] + ext_bias
  gx = p["wx"].T @ x + b[:, None]
  gh = p["wh"][:, :2 * u].T @ h
  r = jax.nn.sigmoid(gx[:u] + gh[:u])
  z = jax.nn.sigmoid(gx[u:2 * u] + gh[u:])
  c = jnp.tanh(gx[2 * u:] + p["wh"][:, 2 * u:].T @ (r * h))
  return z * h + (1.0 - z) * c


def _ref_gru_vec(p, x, h, ext_bias=None):
  """GRU step on single vectors (the tensor and global levels)."""
  return _ref_gru(p, x[:, None], h[:, None], ext_bias)[:, 0]


def _ref_affine(p, x):
  return x @ p["w"] + p["b"]


def _ref_clip(x, lo, hi):
  return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def _ref_features(cfg, ls: _RefLeafState, g, first_step, mean_log_lr):
  """Updates averages and mean squares; returns (features, acc, ms, scaled)."""
  t = cfg.num_timescales
  base = ls.inp_decay
  decays = [base]
  for _ in range(t - 1):
    decays.append(jnp.sqrt(decays[-1]))
  dec = jnp.stack(decays) if t > 1 else jnp.zeros_like(ls.acc)
  acc = (1.0 - dec) * g[None] + dec * ls.acc
  s = jnp.where(first_step, 0.0, ls.scl_decay)[None]
  ms = (1.0 - s) * (acc * acc + _EPS_MS) + s * ls.ms
  if cfg.dynamic_input_scaling:
    scaled = jnp.arcsinh(acc / jnp.sqrt(ms + _EPS_RMS))
  else:
    scaled = acc
  feats = [scaled]
  if cfg.use_grad_products and t > 1:
    feats.append(scaled[:-1] * scaled[1:])
  if cfg.use_log_ms:
    log_ms = jnp.log(ms + _EPS_RMS)
    feats.append(log_ms - jnp.mean(log_ms, axis=0, keepdims=True))
  if cfg.use_relative_lr:
    feats.append((ls.log_lr - mean_log_lr)[None])
  return jnp.concatenate(feats, axis=0), acc, ms, scaled


def _ref_unit_rms(d):
  return d / jnp.sqrt(jnp.mean(d * d) + _EPS_RMS)


def _ref_leaf_update(cfg, theta, ls: _RefLeafState, g, first_step, mean_log_lr,
                 bias_p, bias_t):
  """One step for one (non-empty) tensor. Returns (step, attend, new ls)."""
  feats, acc, ms, scaled = _ref_features(cfg, ls, g, first_step, mean_log_lr)
  h = _ref_gru(theta["param_rnn"], feats, ls.h, bias_p)
  h_t = ls.h_tensor
  if cfg.use_tensor_rnn:
    t_in = jnp.mean(jnp.concatenate([h, feats], axis=0), axis=1)
    h_t = _ref_gru_vec(theta["tensor_rnn"], t_in, ls.h_tensor, bias_t)
  # All per-parameter readouts in one matmul.
  names = ["w_update", "w_scl_decay", "w_inp_decay", "w_lr"]
  if cfg.use_attention:
    names.append("w_attention")
  proj = jnp.stack([theta[k] for k in names]) @ h
  d = proj[0]
  if cfg.use_gradient_shortcut:
    d = d + theta["shortcut"] @ scaled
  if cfg.learnable_decay:
    scl_decay = jax.nn.sigmoid(proj[1] + theta["b_scl_decay"])
    inp_decay = jax.nn.sigmoid(proj[2] + theta["b_inp_decay"])
  else:
    scl_decay = jnp.full_like(d, 0.93)
    inp_decay = jnp.full_like(d, 0.89)
  if cfg.dynamic_output_scale:
    d = _ref_unit_rms(d)
    step_log_lr = ls.log_lr + proj[3] + theta["b_lr"]
    step_log_lr = _ref_clip(step_log_lr, _MIN_LOG_LR,
                                         cfg.max_log_lr)
    m = jax.nn.sigmoid(theta["lr_momentum_logit"])
    new_log_lr = m * ls.log_lr + (1.0 - m) * step_log_lr
    lr = jnp.exp(step_log_lr + theta["stepsize_offset"])
    lr_attend = jnp.exp(step_log_lr)
  else:
    new_log_lr = ls.log_lr
    lr = 2.0 * jax.nn.sigmoid(proj[3] + theta["b_lr"])
    lr_attend = lr
  step = lr * d
  attend = None
  if cfg.use_attention:
    a = proj[4]
    if cfg.use_gradient_shortcut:
      a = a + theta["shortcut_attention"] @ scaled
    if cfg.dynamic_output_scale:
      a = _ref_unit_rms(a)
    attend = lr_attend * a
  new_ls = ls.replace(h=h, acc=acc, ms=ms, scl_decay=scl_decay,
                      inp_decay=inp_decay, log_lr=new_log_lr, h_tensor=h_t)
  return step, attend, new_ls


def _ref_update(config: HRNNConfig, theta: Theta, state: _RefState, grads: Any,
           params: Any = None) -> tuple[Any, _RefState]:
  """One optimizer step.

  Args:
    config: the optimizer config.
    theta: meta-parameters.
    state: state from ``_ref_init_state`` or a previous ``update``.
    grads: gradients, a pytree with the structure of the params.
    params: the current params; only needed with attention, where they are
      the attended point returned by the previous step.

  Returns:
    ``(updates, new_state)``: add ``updates`` to the params (optax
    convention). Updates have the dtype of the corresponding gradients.
  """
  cfg = config
  g_leaves, treedef = jax.tree_util.tree_flatten(grads)
  if len(g_leaves) != len(state.leaves):
    raise ValueError(
        f"grads have {len(g_leaves)} leaves but the HRNN state was built for "
        f"{len(state.leaves)}; call init() with params of the same structure")
  if cfg.use_attention and params is None:
    raise ValueError("HRNN with use_attention=True needs `params` in update()")
  p_leaves = (jax.tree_util.tree_leaves(params) if params is not None
              else [None] * len(g_leaves))
  live = [i for i, ls in enumerate(state.leaves) if ls.size > 0]
  live_set = set(live)
  for i in live:
    if np.size(g_leaves[i]) != state.leaves[i].size:
      raise ValueError(
          f"grad leaf {i} has {np.size(g_leaves[i])} elements but the state "
          f"expects {state.leaves[i].size}")

  first_step = state.step == 0
  cdt = jnp.result_type(theta["w_update"])  # compute dtype: theta's (f32)
  mean_log_lr = 0.0
  if cfg.use_relative_lr and live:
    tot = sum(jnp.sum(state.leaves[i].log_lr) for i in live)
    mean_log_lr = tot / sum(state.leaves[i].size for i in live)
  bias_p, bias_t = 0.0, None
  if cfg.use_global_rnn:
    bias_p = _ref_affine(theta["global_to_param"], state.h_global)
    bias_t = _ref_affine(theta["global_to_tensor"], state.h_global)

  updates, new_leaves = [], list(state.leaves)
  for i, (g, ls) in enumerate(zip(g_leaves, state.leaves)):
    if i not in live_set:
      updates.append(jnp.zeros_like(g) if g is not None else g)
      continue
    bp = bias_p
    if cfg.use_tensor_rnn:
      bp = bp + _ref_affine(theta["tensor_to_param"], ls.h_tensor)
    g32 = jnp.reshape(g, (-1,)).astype(cdt)
    step, attend, new_ls = _ref_leaf_update(cfg, theta, ls, g32, first_step,
                                        mean_log_lr, bp, bias_t)
    shape, dtype = jnp.shape(g), jnp.result_type(g)
    if cfg.use_attention:
      new_true = ls.true_param.astype(cdt) - step.reshape(shape)
      new_attend = new_true - attend.reshape(shape)
      cur = jnp.asarray(p_leaves[i]).astype(cdt)
      upd = new_attend - cur
      new_ls = new_ls.replace(true_param=new_true.astype(
          ls.true_param.dtype))
    else:
      upd = -step.reshape(shape)
    updates.append(upd.astype(dtype))
    new_leaves[i] = new_ls

  h_global = state.h_global
  if cfg.use_global_rnn and live:
    g_in = jnp.mean(jnp.stack([new_leaves[i].h_tensor for i in live]), 0)
    h_global = _ref_gru_vec(theta["global_rnn"], g_in, state.h_global)
  new_state = _RefState(step=state.step + 1, leaves=tuple(new_leaves),
                        h_global=h_global)
  return jax.tree_util.tree_unflatten(treedef, updates), new_state




# ----------------------------------------------------------------------------
# Tests.

# The reference above is the paper's optimizer (no nominal Adam term).
CFG = HRNNConfig.paper()

CONFIGS = {
    "default": {},
    "attention": {"use_attention": True},
    "no_tensor_rnn": {"use_tensor_rnn": False, "use_global_rnn": False},
    "no_global_rnn": {"use_global_rnn": False},
    "fixed_output_scale": {"dynamic_output_scale": False,
                           "use_relative_lr": False},
}
ABLATIONS = {
    "no_input_scaling": {"dynamic_input_scaling": False},
    "no_grad_products": {"use_grad_products": False},
    "no_log_ms": {"use_log_ms": False},
    "no_relative_lr": {"use_relative_lr": False},
    "fixed_decay": {"learnable_decay": False},
    "no_shortcut": {"use_gradient_shortcut": False},
    "one_timescale": {"num_timescales": 1},
    "attention_no_shortcut_fixed_scale": {
        "use_attention": True, "use_gradient_shortcut": False,
        "dynamic_output_scale": False, "use_relative_lr": False},
}


@pytest.fixture
def small_blocks(monkeypatch):
  """Forces chunks and the blocked pass on slabs of more than 1024 elements."""
  monkeypatch.setattr(packing, "MIN_CHUNKED", 0)
  monkeypatch.setattr(packing, "BLOCK_THRESHOLD", 1024)
  monkeypatch.setattr(packing, "BLOCK_SIZE", 512)


def _odd_params(big=(60, 50)):
  return {
      "scalar": jnp.asarray(0.5, jnp.float32),
      "empty": jnp.zeros((0, 3), jnp.float32),
      "bf16": jnp.full((3, 4), 0.5, jnp.bfloat16),
      "nested": [jnp.ones((2,), jnp.float16),
                 {"deep": jnp.full((5, 1, 2), 0.1)}],
      "count": jnp.asarray(3, jnp.int32),
      "big": jnp.full(big, -0.2),
      "mid": jnp.full((7, 33), 0.3),
  }


def _grads(params, key, step):
  """Random gradients, a different scale per leaf; zeros for int leaves."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  out = []
  for i, p in enumerate(leaves):
    if not jnp.issubdtype(p.dtype, jnp.inexact):
      out.append(jnp.zeros_like(p))
      continue
    k = jax.random.fold_in(jax.random.fold_in(key, step), i)
    g = jax.random.normal(k, p.shape) * 10.0 ** (i % 5 - 2) + 0.1 * (i - 3)
    out.append(g.astype(p.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def _tol(dtype):
  # float32: the per-tensor sums and the matmuls add in another order; the
  # worst update seen was 3e-5 of the tensor's largest (typically < 1e-5).
  return {jnp.dtype(jnp.bfloat16): 2e-2,
          jnp.dtype(jnp.float16): 2e-3}.get(jnp.dtype(dtype), 5e-5)


def _assert_close(new, ref, what, tol=None, atol=0.0):
  """Max error relative to the largest reference value (plus ``atol``)."""
  new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
  assert new.shape == ref.shape, what
  scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
  err = float(np.max(np.abs(new - ref), initial=0.0))
  assert err <= (tol or 1e-5) * scale + atol, (
      f"{what}: relative error {err / scale:.2e}")


_PARAMS = {"odd": _odd_params, "odd_big": lambda: _odd_params(big=(401, 400))}


@functools.lru_cache(maxsize=None)
def _reference(cfg, params_name, steps, seed):
  """The per-leaf reference run: its grads, updates and final state.

  Computed once per case and shared by the tests that compare the packed
  update with it unblocked and blocked (the reference has no blocks).
  """
  params = _PARAMS[params_name]()
  theta = hrnn.init_theta(jax.random.PRNGKey(seed), cfg)
  key = jax.random.PRNGKey(seed + 1)
  ref_s = _ref_init_state(cfg, theta, params, key)
  ref_step = jax.jit(lambda s, g, p: _ref_update(cfg, theta, s, g, p))
  ref_p, trail = params, []
  for t in range(steps):
    grads = _grads(ref_p, jax.random.PRNGKey(seed + 2), t)
    ref_u, ref_s = ref_step(ref_s, grads, ref_p)
    trail.append((grads, ref_u, ref_p))
    ref_p = jax.tree_util.tree_map(lambda p, u: p + u, ref_p, ref_u)
  return theta, _ref_init_state(cfg, theta, params, key), trail, ref_s


def _run_both(cfg, params_name="odd", steps=4, seed=0):
  """Runs ``steps`` steps of both implementations, comparing every step."""
  params = _PARAMS[params_name]()
  theta, ref_s0, trail, ref_s = _reference(cfg, params_name, steps, seed)
  key = jax.random.PRNGKey(seed + 1)
  new_s = hrnn.init_state(cfg, theta, params, key)
  layout = packing.make_layout(jax.tree_util.tree_leaves(params))
  if cfg.dynamic_output_scale:  # identical initial learning rates
    pieces = packing.unpack(layout, new_s.log_lr)
    for i in layout.live:
      np.testing.assert_array_equal(np.asarray(pieces[i]),
                                    np.asarray(ref_s0.leaves[i].log_lr))
  new_step = jax.jit(lambda s, g, p: hrnn.update(cfg, theta, s, g, p))
  new_p = params
  for t, (grads, ref_u, ref_p) in enumerate(trail):
    new_u, new_s = new_step(new_s, grads, new_p)
    assert (jax.tree_util.tree_structure(new_u) ==
            jax.tree_util.tree_structure(params))
    for (path, nu), ru, rp in zip(jax.tree_util.tree_leaves_with_path(new_u),
                                  jax.tree_util.tree_leaves(ref_u),
                                  jax.tree_util.tree_leaves(ref_p)):
      assert nu.dtype == ru.dtype and nu.shape == ru.shape
      # With attention the update is a difference of params-sized values,
      # so it carries a few ulps of the params as rounding noise.
      atol = 0.0
      if (cfg.use_attention and nu.size and
          jnp.issubdtype(rp.dtype, jnp.inexact)):
        atol = 4 * float(jnp.finfo(rp.dtype).eps) * float(
            np.max(np.abs(np.asarray(rp, np.float64))))
      _assert_close(nu, ru, f"step {t} update {path}", _tol(nu.dtype), atol)
    new_p = jax.tree_util.tree_map(lambda p, u: p + u, new_p, new_u)
  # The states agree too.
  for i, t in zip(layout.live, range(layout.num_tensors)):
    ls = ref_s.leaves[i]
    pieces = {k: packing.unpack(layout, v) for k, v in (
        ("h", new_s.h), ("acc", new_s.acc), ("ms", new_s.ms))}
    for k in ("h", "acc", "ms"):
      _assert_close(pieces[k][i], getattr(ls, k), f"state {k} of leaf {i}")
    if cfg.use_tensor_rnn:
      _assert_close(new_s.h_tensor[t], ls.h_tensor, f"h_tensor {t}")
    if cfg.use_attention:
      _assert_close(jax.tree_util.tree_leaves(new_s.true_params)[i],
                    ls.true_param, f"true param {i}",
                    _tol(ls.true_param.dtype))
  _assert_close(new_s.h_global, ref_s.h_global, "h_global")
  assert int(new_s.step) == int(ref_s.step) == steps
  true = hrnn.true_params(new_s, new_p)
  for a, b in zip(jax.tree_util.tree_leaves(true),
                  jax.tree_util.tree_leaves(new_p if not cfg.use_attention
                                            else true)):
    assert a.shape == b.shape and a.dtype == b.dtype
  return layout


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_reference_on_odd_pytree(name):
  cfg = dataclasses.replace(CFG, **CONFIGS[name])
  layout = _run_both(cfg)
  assert layout.num_blocks == 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_blocked_pass_matches_reference(name, small_blocks):
  del small_blocks
  cfg = dataclasses.replace(CFG, **CONFIGS[name])
  layout = _run_both(cfg)
  assert layout.num_blocks > 2 and layout.chunk > 1 and layout.padded


def test_blocked_pass_at_default_block_size():
  """A leaf above the real threshold, with the real block size."""
  layout = _run_both(CFG, "odd_big", steps=2)
  assert layout.num_blocks > 4
  assert layout.block <= packing.BLOCK_SIZE + max(layout.chunk, 128)
  assert layout.size - layout.num_params < layout.num_params / 16


@pytest.mark.slow
@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablations_match_reference(name, blocked, monkeypatch):
  if blocked:
    monkeypatch.setattr(packing, "MIN_CHUNKED", 0)
    monkeypatch.setattr(packing, "BLOCK_THRESHOLD", 1024)
    monkeypatch.setattr(packing, "BLOCK_SIZE", 512)
  cfg = dataclasses.replace(CFG, **ABLATIONS[name])
  _run_both(cfg, steps=3)


def test_only_untrainable_leaves():
  params = {"count": jnp.asarray(3, jnp.int32), "empty": jnp.zeros((0,))}
  theta = hrnn.init_theta(jax.random.PRNGKey(0), CFG)
  state = hrnn.init_state(CFG, theta, params)
  ups, state = jax.jit(lambda s: hrnn.update(CFG, theta, s, params))(state)
  assert int(state.step) == 1
  assert ups["empty"].shape == (0,) and int(ups["count"]) == 0


def _meta_loss(impl, cfg, theta, params, steps=4):
  """Sum of quadratic losses along a short unroll of ``impl``."""
  init, upd = impl
  target = jax.tree_util.tree_map(
      lambda p: jnp.linspace(-1.0, 1.0, p.size).reshape(p.shape), params)
  loss = lambda p: sum(jnp.sum((a - b) ** 2 * (1.0 + k))
                       for k, (a, b) in enumerate(zip(
                           jax.tree_util.tree_leaves(p),
                           jax.tree_util.tree_leaves(target))))
  state = init(cfg, theta, params, jax.random.PRNGKey(3))

  def step(carry, _):  # a scan: one step to compile, not ``steps``
    params, state = carry
    l, g = jax.value_and_grad(loss)(params)
    u, state = upd(cfg, theta, state, g, params)
    return (jax.tree_util.tree_map(lambda p, v: p + v, params, u), state), l

  (params, _), losses = jax.lax.scan(step, (params, state), None, steps)
  return jnp.sum(losses) + loss(params)


def _meta_grad_problem(cfg):
  """float64 theta (larger initial learning rates, so that the steps
  matter to the loss) and params; call under ``jax.enable_x64``."""
  theta = jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float64),
      hrnn.init_theta(jax.random.PRNGKey(0), cfg))
  theta["stepsize_offset"] = jnp.asarray(3.0, jnp.float64)
  params = {"w": jnp.zeros((9, 11), jnp.float64),
            "b": [jnp.zeros((3,), jnp.float64), jnp.zeros((), jnp.float64)]}
  return theta, params


@functools.lru_cache(maxsize=None)
def _reference_meta_grad(cfg):
  """The reference's meta-loss and meta-gradient, once per config."""
  with jax.enable_x64(True):
    theta, params = _meta_grad_problem(cfg)
    return jax.jit(jax.value_and_grad(lambda th: _meta_loss(
        (_ref_init_state, _ref_update), cfg, th, params)))(theta)


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("name", ["default", "attention"])
def test_meta_gradient_matches_reference(name, blocked, monkeypatch):
  if blocked:
    monkeypatch.setattr(packing, "BLOCK_THRESHOLD", 64)
    monkeypatch.setattr(packing, "BLOCK_SIZE", 32)
  cfg = dataclasses.replace(CFG, **CONFIGS[name])
  ref = _reference_meta_grad(cfg)
  with jax.enable_x64(True):
    theta, params = _meta_grad_problem(cfg)
    new = jax.jit(jax.value_and_grad(lambda th: _meta_loss(
        (hrnn.init_state, hrnn.update), cfg, th, params)))(theta)
    if blocked:
      layout = packing.make_layout(jax.tree_util.tree_leaves(params))
      assert layout.num_blocks > 2
  _assert_close(new[0], ref[0], "meta-loss", 1e-9)
  flat_new = jax.tree_util.tree_leaves_with_path(new[1])
  flat_ref = jax.tree_util.tree_leaves(ref[1])
  overall = max(float(np.max(np.abs(g))) for g in flat_ref)
  assert overall > 0
  for (path, a), b in zip(flat_new, flat_ref):
    _assert_close(a, b, f"meta-gradient {path}", 1e-8, 1e-10 * overall)


def test_layout_chunks_and_padding(monkeypatch):
  monkeypatch.setattr(packing, "MIN_CHUNKED", 0)
  sizes = [1, 12, 2, 10, 3000, 231]
  leaves = [jnp.zeros((n,)) for n in sizes]
  layout = packing.make_layout(leaves + [jnp.zeros((4,), jnp.int32)])
  assert layout.sizes == tuple(sizes) + (0,)
  assert layout.chunk == 32  # the largest with padding <= 1/16 of the params
  assert all(o % layout.chunk == 0 for o in layout.offsets)
  assert layout.size - layout.num_params <= layout.num_params / 16
  assert layout.num_blocks == 1
  # Padding chunks are masked; chunk counts add up to the params.
  assert int(layout.chunk_count.sum()) == layout.num_params
  np.testing.assert_array_equal(np.diff(layout.chunk_tensor) >= 0, True)
  # Many tiny tensors get no padding at all.
  small = packing.make_layout([jnp.zeros((3,)), jnp.zeros((2, 2))])
  assert small.chunk == 1 and small.size == 7 and not small.padded
  monkeypatch.undo()
  # Nor do small slabs, by default.
  assert packing.make_layout(leaves).chunk == 1
  # pack / unpack round trip.
  flat = packing.pack(layout, leaves, jnp.float32)
  back = packing.unpack(layout, flat)
  for i, x in enumerate(leaves):
    np.testing.assert_array_equal(np.asarray(back[i]), np.asarray(x))


def test_big_layout_is_blocked():
  layout = packing.make_layout(
      [jax.ShapeDtypeStruct((packing.BLOCK_THRESHOLD + 5,), jnp.float32),
       jax.ShapeDtypeStruct((3,), jnp.bfloat16)])
  assert layout.num_blocks > 1
  assert layout.size % layout.block == 0
  assert layout.block % layout.chunk == 0
