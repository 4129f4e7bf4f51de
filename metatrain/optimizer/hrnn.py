"""The hierarchical RNN learned optimizer of Wichrowska et al. (ICML 2017).

Three GRUs run at three levels:

* a per-parameter GRU (``param_units``), shared by every scalar parameter;
* a per-tensor GRU (``tensor_units``) whose input is the tensor-mean of the
  new parameter-GRU states and the input features;
* a global GRU (``global_units``) whose input is the mean over tensors of the
  new tensor-GRU states. (The 2017 reference code fed only the *last*
  tensor's state, a known bug; we use the mean.)

The previous tensor and global states enter the lower GRUs as extra biases.

The per-parameter state of all tensors is packed into one slab (see
``hrnn_packing``), so one step is one pass over the slab, in blocks for big
models, that also takes the per-tensor sums, then a cheap elementwise pass
per tensor that applies the per-tensor output normalisation.

Everything here is a pure function of ``(config, theta, state, grads)`` over
any params pytree, so it works under ``jit``, ``vmap`` (over tasks) and
``grad`` (with respect to ``theta`` through a multi-step unroll).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metatrain.optimizer import hrnn_config
from metatrain.optimizer import hrnn_kernel
from metatrain.optimizer import hrnn_packing as packing
from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.optimizer.hrnn_packing import Layout

Theta = dict[str, Any]

_EPS_MS = 1e-12  # added to g^2 in the RMS update (reference value)
_EPS_RMS = 1e-16  # inside sqrt / log of the RMS (reference value)
_MIN_LOG_LR = -33.0


class HRNNState(NamedTuple):
  """Optimizer state: packed per-parameter slabs, tensor and global states.

  The per-parameter arrays cover every trainable params leaf, packed as
  ``packing.make_layout`` of the params' leaves says (each step derives the
  layout from the gradients); ``size`` is the layout's size, the number of
  optimized scalars plus padding. The state holds only arrays, so its tree
  structure does not depend on the params: optax's ``tree_map_params``
  maps the params-shaped part (``true_params``, with attention) and passes
  the rest, and ``optax.tree_utils.tree_get(state, "count")`` finds the
  step counter (a NamedTuple, like optax's own states). Dtypes never change
  across steps.
  """

  count: jax.Array  # () int32 steps taken (optax's name)
  h: jax.Array  # (param_units, size) parameter-GRU states, feature-major
  acc: jax.Array  # (T, size) gradient running averages
  ms: jax.Array  # (T, size) running mean squares of the averages
  log_lr: jax.Array  # (size,) stored log learning rates; (0,) if unused
  adam_m: jax.Array  # (size,) nominal Adam's first moment; (0,) if unused
  adam_v: jax.Array  # (size,) nominal Adam's second moment; (0,) if unused
  h_tensor: jax.Array  # (num_tensors, tensor_units); (0,) if unused
  h_global: jax.Array  # (global_units,); (0,) if unused
  true_params: Any  # attention: a copy of the params (true point); else None

  @property
  def step(self) -> jax.Array:
    """Steps taken (``count``)."""
    return self.count

  def replace(self, **changes: Any) -> "HRNNState":
    return self._replace(**changes)


# ----------------------------------------------------------------------------
# Meta-parameters.


def _gru_init(key, in_dim, units, cfg):
  k1, k2 = jax.random.split(key)
  std = cfg.rnn_init_scale / math.sqrt(in_dim + units)
  b = jnp.concatenate([jnp.full((2 * units,), cfg.gate_bias_init),
                       jnp.zeros((units,))])
  return {"wx": std * jax.random.normal(k1, (in_dim, 3 * units)),
          "wh": std * jax.random.normal(k2, (units, 3 * units)),
          "b": b}


def _affine_init(key, in_dim, out_dim, cfg):
  std = cfg.affine_init_scale / math.sqrt(in_dim)
  return {"w": std * jax.random.normal(key, (in_dim, out_dim)),
          "b": jnp.zeros((out_dim,))}


def init_theta(key: jax.Array, config: HRNNConfig) -> Theta:
  """Samples fresh meta-parameters with the reference initialisation.

  With ``config.nominal_adam`` the direction readout and the gradient
  shortcut start at zero and the step-size offset at 0, so that the
  untrained optimizer is exactly Adam(``config.init_lr``).
  """
  cfg = config
  p, t, g = cfg.param_units, cfg.tensor_units, cfg.global_units
  ks = iter(jax.random.split(key, 16))
  ro = cfg.readout_init_scale / math.sqrt(p)
  theta: Theta = {
      "param_rnn": _gru_init(next(ks), cfg.num_features, p, cfg),
      "init_param_h": jax.random.uniform(next(ks), (p,), minval=-1, maxval=1),
      "w_update": ro * jax.random.normal(next(ks), (p,)),
      "w_scl_decay": ro * jax.random.normal(next(ks), (p,)),
      "b_scl_decay": jnp.asarray(cfg.scl_decay_bias_init),
      "w_inp_decay": ro * jax.random.normal(next(ks), (p,)),
      "b_inp_decay": jnp.asarray(cfg.inp_decay_bias_init),
      "w_lr": jnp.zeros((p,)),
      "b_lr": jnp.asarray(0.0),
      "lr_momentum_logit": jnp.asarray(cfg.lr_momentum_logit_init),
      "stepsize_offset": jnp.asarray(cfg.stepsize_offset_init),
  }
  t_sc = cfg.num_timescales
  if cfg.use_gradient_shortcut:
    theta["shortcut"] = (1.0 / t_sc + cfg.shortcut_init_std *
                         jax.random.normal(next(ks), (t_sc,)))
  if cfg.use_attention:
    theta["w_attention"] = theta["w_update"]
    if cfg.use_gradient_shortcut:
      theta["shortcut_attention"] = theta["shortcut"]
  if cfg.use_tensor_rnn:
    theta["tensor_rnn"] = _gru_init(next(ks), p + cfg.num_features, t, cfg)
    theta["init_tensor_h"] = jax.random.uniform(next(ks), (t,), minval=-1,
                                                maxval=1)
    theta["tensor_to_param"] = _affine_init(next(ks), t, 3 * p, cfg)
  if cfg.use_global_rnn:
    theta["global_rnn"] = _gru_init(next(ks), t, g, cfg)
    theta["init_global_h"] = jax.random.uniform(next(ks), (g,), minval=-1,
                                                maxval=1)
    theta["global_to_param"] = _affine_init(next(ks), g, 3 * p, cfg)
    theta["global_to_tensor"] = _affine_init(next(ks), g, 3 * t, cfg)
  if cfg.nominal_adam:  # the RNN's contributions start at zero
    theta["w_update"] = jnp.zeros((p,))
    theta["stepsize_offset"] = jnp.asarray(0.0)
    for k in ("shortcut", "w_attention", "shortcut_attention"):
      if k in theta:
        theta[k] = jnp.zeros_like(theta[k])
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), theta)


def num_meta_params(theta: Theta) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(theta)))


# ----------------------------------------------------------------------------
# State.


def init_state(config: HRNNConfig, theta: Theta, params: Any,
               key: jax.Array | None = None) -> HRNNState:
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
  _refuse_complex(leaves, "params")
  layout = packing.make_layout(leaves)
  size, nt = layout.size, layout.num_tensors
  t = cfg.num_timescales
  if cfg.nominal_adam:  # deterministic: every element starts at init_lr
    log_lr = packing.pack(
        layout, {i: jnp.full((layout.sizes[i],), math.log(cfg.init_lr))
                 for i in layout.live}, jnp.result_type(float))
  elif cfg.dynamic_output_scale:
    lo = 0.5 * math.log(cfg.init_lr_range[0])
    hi = 0.5 * math.log(cfg.init_lr_range[1])
    draws = {}
    for i in layout.live:  # keyed by leaf index, as before packing
      k_el, k_off = jax.random.split(jax.random.fold_in(key, i))
      draws[i] = jnp.clip(
          jax.random.uniform(k_el, (layout.sizes[i],), minval=lo, maxval=hi)
          + jax.random.uniform(k_off, (), minval=lo, maxval=hi),
          _MIN_LOG_LR, cfg.max_log_lr)
    # Padding log-LRs are 0 and stay 0 (the mean log-LR sums the slab).
    log_lr = packing.pack(layout, draws, jnp.result_type(float))
  else:
    log_lr = jnp.zeros((0,))
  # Fresh buffers (broadcasts and copies): state buffers must never alias
  # theta or each other, so that callers may donate the state.
  h_t = (jnp.broadcast_to(theta["init_tensor_h"], (nt, cfg.tensor_units))
         if cfg.use_tensor_rnn else jnp.zeros((0,)))
  h_g = (jnp.array(theta["init_global_h"]) if cfg.use_global_rnn
         else jnp.zeros((0,)))
  true = (jax.tree_util.tree_map(jnp.array, params) if cfg.use_attention
          else None)
  # Per-parameter state storage: bf16 if asked, else the default float
  # (float64 under jax_enable_x64, as the gradient checks use).
  sdt = (jnp.dtype(jnp.bfloat16) if cfg.state_dtype == "bfloat16"
         else jnp.result_type(float))
  return HRNNState(
      count=jnp.zeros((), jnp.int32),
      h=jnp.broadcast_to(theta["init_param_h"][:, None].astype(sdt),
                         (cfg.param_units, size)),
      acc=jnp.zeros((t, size), sdt), ms=jnp.zeros((t, size), sdt),
      log_lr=log_lr.astype(sdt),
      adam_m=jnp.zeros((size if cfg.nominal_adam else 0,), sdt),
      adam_v=jnp.zeros((size if cfg.nominal_adam else 0,), sdt),
      h_tensor=h_t, h_global=h_g, true_params=true)


def _refuse_complex(leaves, what: str) -> None:
  for leaf in leaves:
    if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
      raise TypeError(
          f"the HRNN optimizer does not support complex {what} (got a "
          f"{jnp.result_type(leaf)} leaf of shape {jnp.shape(leaf)}); "
          "optimize real and imaginary parts as separate real params, e.g. "
          "optax.contrib.split_real_and_imaginary(tx)")


# ----------------------------------------------------------------------------
# The update.


def _gru(p, x, h, add_bias):
  """Feature-major GRU step: x (in, ...), h (units, ...).

  Feature-major layout keeps the long axes (parameters) last, so every
  matmul is a small (3u, in) matrix times a wide (in, n) one and every
  elementwise op runs over contiguous rows. ``add_bias(gx)`` adds the full
  bias (``p["b"]`` plus any external bias) to the (3 units, ...) input gates.
  """
  u = h.shape[0]
  gx = add_bias(_mm(p["wx"], x))
  gh = _mm(p["wh"][:, :2 * u], h)
  r = jax.nn.sigmoid(gx[:u] + gh[:u])
  z = jax.nn.sigmoid(gx[u:2 * u] + gh[u:])
  c = jnp.tanh(gx[2 * u:] + _mm(p["wh"][:, 2 * u:], r * h))
  return z * h + (1.0 - z) * c


def _mm(w, x):
  """w.T @ x over the first axis of x: (k, m), (k, ...) -> (m, ...)."""
  return jnp.tensordot(w, x, axes=(0, 0))


def _gru_cols(p, x, h, ext_bias=None):
  """GRU step on columns: x (in, k), h (units, k), ext_bias (3 units,)."""
  b = p["b"] if ext_bias is None else p["b"] + ext_bias
  return _gru(p, x, h, lambda gx: gx + b[:, None])


def _affine(p, x):
  return x @ p["w"] + p["b"]


def _clip_straight_through(x, lo, hi):
  return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def _decays(cfg, theta, h, first_step):
  """The decays of ms and of the averages that the previous step output.

  They are readouts of the previous step's hidden state ``h``, so they are
  recomputed from it here rather than stored (8 bytes per parameter less
  state; the same values while theta is fixed). On the first step both are
  0: the averages and mean squares start at the first gradient.
  """
  if cfg.learnable_decay:
    proj = _mm(jnp.stack([theta["w_scl_decay"], theta["w_inp_decay"]], 1), h)
    scl = jax.nn.sigmoid(proj[0] + theta["b_scl_decay"])
    inp = jax.nn.sigmoid(proj[1] + theta["b_inp_decay"])
  else:
    scl = jnp.full(h.shape[1:], 0.93, h.dtype)
    inp = jnp.full(h.shape[1:], 0.89, h.dtype)
  return (jnp.where(first_step, 0.0, scl), jnp.where(first_step, 0.0, inp))


def _features(cfg, s, g, first_step, mean_log_lr, decays):
  """Updates averages and mean squares; returns (features, acc, ms, scaled).

  ``decays``: (ms decay, base decay of the averages), from ``_decays``.
  """
  t = cfg.num_timescales
  scl_decay, inp_decay = decays
  decays = [inp_decay]
  for _ in range(t - 1):
    decays.append(jnp.sqrt(decays[-1]))
  dec = jnp.stack(decays) if t > 1 else jnp.zeros_like(s["acc"])
  acc = (1.0 - dec) * g[None] + dec * s["acc"]
  sd = scl_decay[None]
  ms = (1.0 - sd) * (acc * acc + _EPS_MS) + sd * s["ms"]
  if cfg.dynamic_input_scaling:
    scaled = jnp.arcsinh(acc / jnp.sqrt(ms + _EPS_RMS))
  else:
    scaled = acc
  feats = [scaled]
  if cfg.use_grad_products and t > 1:
    feats.append(scaled[:-1] * scaled[1:])
  if cfg.use_log_ms:
    log_ms = jnp.log(ms + _EPS_RMS)
    # An explicit sum of the T rows: XLA:CPU's row-mean reduce is slow.
    mean = functools.reduce(jnp.add, list(log_ms)) / t
    feats.append(log_ms - mean[None])
  if cfg.use_relative_lr:
    feats.append((s["log_lr"] - mean_log_lr)[None])
  return jnp.concatenate(feats, axis=0), acc, ms, scaled


def _param_pass(cfg, theta, s, g, info, bias_table, first_step, mean_log_lr,
                t1=None):
  """The per-parameter work on one block of the slab.

  Args:
    cfg: the config.
    theta: meta-parameters.
    s: the block's state slabs (see ``HRNNState``), (rows, *view) or
      (*view), where (*view) is ``info``'s view of the block's elements.
    g: (*view) gradients.
    info: the block's chunks (view, tensor ids, padding mask).
    bias_table: (num_tensors, 3 param_units) parameter-GRU bias per tensor,
      or a (3 param_units,) one shared by all.
    first_step: whether this is the first step.
    mean_log_lr: mean stored log-LR over the problem.
    t1: the step number counting from 1 (nominal Adam's bias correction).

  Returns:
    ``(new_s, (step, attend), sums)``: ``step`` and ``attend`` (*view)
    before the per-tensor normalisation (``attend`` None without
    attention), and ``sums`` a dict of (k, nc) per-chunk sums.
  """
  narrow = cfg.state_dtype == "bfloat16"
  if narrow:  # stored in bf16: compute in g's dtype (f32)
    s = {k: v.astype(g.dtype) for k, v in s.items()}
  decays = _decays(cfg, theta, s["h"], first_step)
  feats, acc, ms, scaled = _features(cfg, s, g, first_step, mean_log_lr,
                                     decays)
  if bias_table.ndim == 2:  # a bias per tensor
    add_bias = functools.partial(info.add_per_tensor, table=bias_table)
  else:  # one bias for all
    add_bias = lambda gx: gx + bias_table.reshape((-1,) + (1,) * (gx.ndim - 1))
  h = _gru(theta["param_rnn"], feats, s["h"], add_bias)
  # All per-parameter readouts in one matmul.
  # (The decay readouts of this h are recomputed by the next step.)
  w_lr, b_lr = hrnn_config.lr_head(cfg, theta)
  rows = [theta["w_update"], w_lr]
  if cfg.use_attention:
    rows.append(theta["w_attention"])
  proj = _mm(jnp.stack(rows, axis=1), h)
  d = proj[0]
  if cfg.use_gradient_shortcut:
    d = d + _mm(theta["shortcut"], scaled)
  adam = None
  if cfg.nominal_adam:  # Adam's direction, bias-corrected
    b1, b2 = cfg.adam_b1, cfg.adam_b2
    m = b1 * s["adam_m"] + (1.0 - b1) * g
    v = b2 * s["adam_v"] + (1.0 - b2) * g * g
    # 1e-30 under the root: Adam's value to ~1e-15, and a finite
    # derivative where v is exactly 0 (a zero or sparse gradient), whose
    # inf * 0 would otherwise make the meta-gradient NaN.
    adam = (m / (1.0 - b1 ** t1)) / (jnp.sqrt(v / (1.0 - b2 ** t1) + 1e-30) +
                                     cfg.adam_eps)
  new = {"h": h, "acc": acc, "ms": ms}
  if adam is not None:
    # The step is lr * (Adam's direction + the RNN's): no per-tensor
    # normalisation, which would erase Adam's per-element scale.
    new["adam_m"], new["adam_v"] = m, v
    d = adam + d
  sums = {}
  if cfg.use_tensor_rnn:
    sums["h"] = info.sums(h)
    sums["feats"] = info.sums(feats)
  if cfg.dynamic_output_scale:
    if adam is None:
      sums["d2"] = info.sums((d * d)[None])
    log_lr = s["log_lr"]
    if cfg.lr_correction_range > 0:  # anchored: a bounded correction
      step_log_lr = log_lr + cfg.lr_correction_range * jnp.tanh(
          proj[1] + b_lr)
      new_log_lr = log_lr
    else:  # the paper's: the log-LR integrates the readouts
      step_log_lr = log_lr + proj[1] + b_lr
      step_log_lr = _clip_straight_through(step_log_lr, _MIN_LOG_LR,
                                           cfg.max_log_lr)
      m = jax.nn.sigmoid(theta["lr_momentum_logit"])
      new_log_lr = m * log_lr + (1.0 - m) * step_log_lr
    if info.mask is not None:
      new_log_lr = jnp.where(info.mask, new_log_lr, 0.0)
    new["log_lr"] = new_log_lr
    lr = jnp.exp(step_log_lr + theta["stepsize_offset"])
    lr_attend = jnp.exp(step_log_lr)
  else:
    lr = 2.0 * jax.nn.sigmoid(proj[1] + b_lr)
    lr_attend = lr
  attend = None
  if cfg.use_attention:
    a = proj[2]
    if cfg.use_gradient_shortcut:
      a = a + _mm(theta["shortcut_attention"], scaled)
    if cfg.dynamic_output_scale:
      sums["a2"] = info.sums((a * a)[None])
    attend = lr_attend * a
  if narrow:
    new = {k: v.astype(jnp.bfloat16) for k, v in new.items()}
  return new, (lr * d, attend), sums


def update(config: HRNNConfig, theta: Theta, state: HRNNState, grads: Any,
           params: Any = None, kernel: bool | None = False,
           learning_rate: Any = None) -> tuple[Any, HRNNState]:
  """One optimizer step.

  Args:
    config: the optimizer config.
    theta: meta-parameters.
    state: state from ``init_state`` or a previous ``update``.
    grads: gradients, a pytree with the structure of the params.
    params: the current params; only needed with attention, where they are
      the attended point returned by the previous step.
    kernel: run the per-parameter pass as the compiled CPU kernel
      (``hrnn_kernel``): False (the default: pure JAX, differentiable), True
      (warns once and falls back where it cannot), None (when it can).
      The kernel has no derivatives: never for meta-training.
    learning_rate: the nominal rate (a scalar, may be traced); None is
      ``config.init_lr``. The step is this rate times the learned,
      relative corrections: it scales linearly with ``learning_rate /
      config.init_lr`` (with ``config.global_step == "fixed"`` its RMS over
      all parameters is exactly Adam's at this rate; with "capped" at
      most Adam's).

  Returns:
    ``(updates, new_state)``: add ``updates`` to the params (optax
    convention). Updates have the dtype of the corresponding gradients;
    the new state has the dtypes of ``state``.
  """
  cfg = config
  g_leaves, treedef = jax.tree_util.tree_flatten(grads)
  _refuse_complex(g_leaves, "gradients")
  layout = packing.make_layout(g_leaves)
  if state.h.shape[-1] != layout.size:
    raise ValueError(
        f"grads do not match the params this HRNN state was built for (a "
        f"slab of {layout.size} elements, the state has {state.h.shape[-1]});"
        " call init() with params of the same structure and shapes")
  if cfg.use_attention and params is None:
    raise ValueError("HRNN with use_attention=True needs `params` in update()")
  if not layout.live:
    zeros = [jnp.zeros_like(g) for g in g_leaves]
    return (jax.tree_util.tree_unflatten(treedef, zeros),
            state.replace(count=state.count + 1))
  p_leaves = (jax.tree_util.tree_leaves(params) if params is not None
              else [None] * len(g_leaves))
  cdt = jnp.result_type(theta["w_update"])  # compute dtype: theta's (f32)
  first_step = state.count == 0
  mean_log_lr = 0.0
  if cfg.use_relative_lr:  # padding log-LRs are 0
    mean_log_lr = jnp.sum(state.log_lr, dtype=cdt) / layout.num_params
  bias_p, bias_t = 0.0, None
  if cfg.use_global_rnn:
    bias_p = _affine(theta["global_to_param"], state.h_global)
    bias_t = _affine(theta["global_to_tensor"], state.h_global)
  b = theta["param_rnn"]["b"]
  if cfg.use_tensor_rnn:  # (num_tensors, 3 param_units)
    bias_table = b + (bias_p + _affine(theta["tensor_to_param"],
                                       state.h_tensor))
    if layout.num_tensors == 1:  # shared: no gathers
      bias_table = bias_table[0]
  else:
    bias_table = b + bias_p

  # Pass 1: the per-parameter GRU over the slab, with per-chunk sums.
  slabs = {"h": state.h, "acc": state.acc, "ms": state.ms}
  if cfg.dynamic_output_scale:
    slabs["log_lr"] = state.log_lr
  if cfg.nominal_adam:
    slabs["adam_m"], slabs["adam_v"] = state.adam_m, state.adam_v
  g = packing.pack(layout, g_leaves, cdt)
  t1 = (state.count + 1).astype(cdt)  # nominal Adam's bias correction
  if kernel is not False and hrnn_kernel.should_use(cfg, theta, state,
                                                    kernel):
    new, step, sums = hrnn_kernel.param_pass(
        cfg, theta, layout, slabs, g, bias_table, first_step, mean_log_lr, t1)
    attend = None
  else:
    fn = functools.partial(_param_pass, cfg, theta, bias_table=bias_table,
                           first_step=first_step, mean_log_lr=mean_log_lr,
                           t1=t1)
    new, (step, attend), sums = packing.blocked_map(layout, fn, slabs, g)
    sums = {k: packing.segment_sums(layout, v) for k, v in sums.items()}
  n_t = layout.tensor_sizes(cdt)[:, None]
  rate_scale = _rate_scale(cfg, learning_rate, cdt)
  step = step * rate_scale
  if cfg.global_step != "learned":  # "fixed" or "capped": Adam's RMS
    factor = _fixed_step_factor(cfg, layout, new, step, t1, rate_scale)
    if cfg.global_step == "capped":  # only ever scale down
      factor = jnp.minimum(1.0, factor)
    step = step * factor

  # Per-tensor and global GRUs.
  h_tensor, h_global = state.h_tensor, state.h_global
  if cfg.use_tensor_rnn:
    t_in = jnp.concatenate([sums["h"], sums["feats"]], axis=1) / n_t
    h_tensor = _gru_cols(theta["tensor_rnn"], t_in.T, state.h_tensor.T,
                         bias_t).T
  if cfg.use_global_rnn:
    h_global = _gru_cols(theta["global_rnn"],
                         jnp.mean(h_tensor, axis=0)[:, None],
                         state.h_global[:, None])[:, 0]

  # Pass 2, per tensor: unit-RMS normalisation, unpacking, attention.
  rms = {k: jnp.sqrt(sums[k][:, 0] / n_t[:, 0] + _EPS_RMS)
         for k in ("d2", "a2") if k in sums}
  steps = packing.unpack(layout, step)
  attends = packing.unpack(layout, attend) if cfg.use_attention else None
  true_leaves = (jax.tree_util.tree_leaves(state.true_params)
                 if cfg.use_attention else [None] * len(g_leaves))
  updates, new_true = [], list(true_leaves)
  for i, g_leaf in enumerate(g_leaves):
    if not layout.sizes[i]:
      updates.append(jnp.zeros_like(g_leaf))
      continue
    t = layout.live.index(i)
    shape, dtype = jnp.shape(g_leaf), jnp.result_type(g_leaf)
    st = steps[i] / rms["d2"][t] if "d2" in rms else steps[i]
    if cfg.use_attention:
      at = attends[i] / rms["a2"][t] if "a2" in rms else attends[i]
      true = true_leaves[i]
      true_t = true.astype(cdt) - st.reshape(shape)
      cur = jnp.asarray(p_leaves[i]).astype(cdt)
      upd = (true_t - at.reshape(shape)) - cur
      new_true[i] = true_t.astype(true.dtype)
    else:
      upd = -st.reshape(shape)
    updates.append(upd.astype(dtype))

  new_true = (jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(state.true_params), new_true)
              if cfg.use_attention else None)
  new_state = state.replace(count=state.count + 1, h_tensor=h_tensor,
                            h_global=h_global, true_params=new_true, **new)
  # The state keeps its dtypes (e.g. float64 slabs with a float32 theta,
  # whose GRUs would otherwise promote the tensor and global states): a
  # state that changed dtype breaks lax.cond/scan-based wrappers.
  new_state = jax.tree_util.tree_map(
      lambda new_x, old_x: new_x.astype(jnp.result_type(old_x)), new_state,
      state)
  return jax.tree_util.tree_unflatten(treedef, updates), new_state


def _rate_scale(cfg: HRNNConfig, learning_rate: Any, dtype) -> Any:
  """``learning_rate / cfg.init_lr`` (1 for None), as a ``dtype`` scalar."""
  if learning_rate is None:
    return jnp.ones((), dtype)
  return jnp.asarray(learning_rate, dtype) / cfg.init_lr


def _fixed_step_factor(cfg: HRNNConfig, layout: Layout, new: dict, step,
                       t1, rate_scale) -> jax.Array:
  """The factor that gives ``step`` the RMS of Adam's step at the rate.

  ``step`` is ``rate/init_lr * exp(learned log-LRs) * (Adam's direction +
  the RNN's)``; Adam's step at the rate is ``rate * adam``, where ``adam``
  is the bias-corrected direction of the new moments. Sums run over the
  slab (padding holds zero gradients, so its moments, hence its ``adam``,
  are zero; its ``step`` is masked out). Meta-training cannot move the
  global step size: it decides only where and in which direction it goes.
  """
  b1, b2 = cfg.adam_b1, cfg.adam_b2
  m = new["adam_m"].astype(step.dtype)
  v = new["adam_v"].astype(step.dtype)
  adam = (m / (1.0 - b1 ** t1)) / (jnp.sqrt(v / (1.0 - b2 ** t1) + 1e-30) +
                                   cfg.adam_eps)
  if layout.padded:
    step = step * packing.live_mask(layout, step.dtype)
  ref = rate_scale * cfg.init_lr * jnp.sqrt(jnp.sum(adam * adam) + _EPS_RMS)
  return ref / jnp.sqrt(
      jnp.sum(step * step) + _EPS_RMS * cfg.init_lr ** 2)


def true_params(state: HRNNState, params: Any) -> Any:
  """The true (non-attended) params; equals ``params`` without attention."""
  return params if state.true_params is None else state.true_params


def state_bytes_per_param(state: HRNNState, params: Any = None) -> float:
  """Bytes of optimizer state per optimized scalar (all state included);
  without ``params``, per slab element (padding included)."""
  num_params = (state.h.shape[-1] if params is None else packing.make_layout(
      jax.tree_util.tree_leaves(params)).num_params)
  total = sum(np.size(x) * jnp.result_type(x).itemsize
              for x in jax.tree_util.tree_leaves(state))
  return total / max(num_params, 1)
