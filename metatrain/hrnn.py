"""The hierarchical RNN learned optimizer of Wichrowska et al. (ICML 2017).

Three GRUs run at three levels:

* a per-parameter GRU (``param_units``), shared by every scalar parameter;
* a per-tensor GRU (``tensor_units``) whose input is the tensor-mean of the
  new parameter-GRU states and the input features;
* a global GRU (``global_units``) whose input is the mean over tensors of the
  new tensor-GRU states. (The 2017 reference code fed only the *last*
  tensor's state, a known bug; we use the mean.)

The previous tensor and global states enter the lower GRUs as extra biases.

Everything here is a pure function of ``(config, theta, state, grads)`` over
any params pytree, so it works under ``jit``, ``vmap`` (over tasks) and
``grad`` (with respect to ``theta`` through a multi-step unroll).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metatrain.hrnn_config import HRNNConfig

Theta = dict[str, Any]

_EPS_MS = 1e-12  # added to g^2 in the RMS update (reference value)
_EPS_RMS = 1e-16  # inside sqrt / log of the RMS (reference value)
_MIN_LOG_LR = -33.0


@struct.dataclass
class LeafState:
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
class HRNNState:
  """Optimizer state: one LeafState per params leaf plus the global state."""

  step: jax.Array
  leaves: tuple
  h_global: jax.Array


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
  """Samples fresh meta-parameters with the reference initialisation."""
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
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), theta)


def num_meta_params(theta: Theta) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(theta)))


# ----------------------------------------------------------------------------
# State.


def _is_trainable(leaf) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


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
  lo = 0.5 * math.log(cfg.init_lr_range[0])
  hi = 0.5 * math.log(cfg.init_lr_range[1])
  out = []
  for i, leaf in enumerate(leaves):
    n = int(np.size(leaf)) if _is_trainable(leaf) else 0
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
    out.append(LeafState(
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
  return HRNNState(step=jnp.zeros((), jnp.int32), leaves=tuple(out),
                   h_global=h_g)


# ----------------------------------------------------------------------------
# The update.


def _gru(p, x, h, ext_bias=None):
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


def _gru_vec(p, x, h, ext_bias=None):
  """GRU step on single vectors (the tensor and global levels)."""
  return _gru(p, x[:, None], h[:, None], ext_bias)[:, 0]


def _affine(p, x):
  return x @ p["w"] + p["b"]


def _clip_straight_through(x, lo, hi):
  return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def _features(cfg, ls: LeafState, g, first_step, mean_log_lr):
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


def _unit_rms(d):
  return d / jnp.sqrt(jnp.mean(d * d) + _EPS_RMS)


def _leaf_update(cfg, theta, ls: LeafState, g, first_step, mean_log_lr,
                 bias_p, bias_t):
  """One step for one (non-empty) tensor. Returns (step, attend, new ls)."""
  feats, acc, ms, scaled = _features(cfg, ls, g, first_step, mean_log_lr)
  h = _gru(theta["param_rnn"], feats, ls.h, bias_p)
  h_t = ls.h_tensor
  if cfg.use_tensor_rnn:
    t_in = jnp.mean(jnp.concatenate([h, feats], axis=0), axis=1)
    h_t = _gru_vec(theta["tensor_rnn"], t_in, ls.h_tensor, bias_t)
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
    d = _unit_rms(d)
    step_log_lr = ls.log_lr + proj[3] + theta["b_lr"]
    step_log_lr = _clip_straight_through(step_log_lr, _MIN_LOG_LR,
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
      a = _unit_rms(a)
    attend = lr_attend * a
  new_ls = ls.replace(h=h, acc=acc, ms=ms, scl_decay=scl_decay,
                      inp_decay=inp_decay, log_lr=new_log_lr, h_tensor=h_t)
  return step, attend, new_ls


def update(config: HRNNConfig, theta: Theta, state: HRNNState, grads: Any,
           params: Any = None) -> tuple[Any, HRNNState]:
  """One optimizer step.

  Args:
    config: the optimizer config.
    theta: meta-parameters.
    state: state from ``init_state`` or a previous ``update``.
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
    bias_p = _affine(theta["global_to_param"], state.h_global)
    bias_t = _affine(theta["global_to_tensor"], state.h_global)

  updates, new_leaves = [], list(state.leaves)
  for i, (g, ls) in enumerate(zip(g_leaves, state.leaves)):
    if i not in live_set:
      updates.append(jnp.zeros_like(g) if g is not None else g)
      continue
    bp = bias_p
    if cfg.use_tensor_rnn:
      bp = bp + _affine(theta["tensor_to_param"], ls.h_tensor)
    g32 = jnp.reshape(g, (-1,)).astype(cdt)
    step, attend, new_ls = _leaf_update(cfg, theta, ls, g32, first_step,
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
    h_global = _gru_vec(theta["global_rnn"], g_in, state.h_global)
  new_state = HRNNState(step=state.step + 1, leaves=tuple(new_leaves),
                        h_global=h_global)
  return jax.tree_util.tree_unflatten(treedef, updates), new_state


def true_params(state: HRNNState, params: Any) -> Any:
  """The true (non-attended) params; equals ``params`` without attention."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  out = [ls.true_param if ls.true_param is not None else p
         for p, ls in zip(leaves, state.leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def state_bytes_per_param(state: HRNNState) -> float:
  """Bytes of optimizer state per optimized scalar (all state included)."""
  n = sum(ls.size for ls in state.leaves)
  total = sum(np.size(x) * jnp.result_type(x).itemsize
              for x in jax.tree_util.tree_leaves(state))
  return total / max(n, 1)
