"""Persistent Evolution Strategies (PES) meta-gradients of a task group.

PES (Vicol, Metz and Sohl-Dickstein, ICML 2021) estimates the gradient of
the sum of truncation losses of an unrolled computation without the bias of
truncated BPTT and without backpropagation. A PES group holds N antithetic
pairs of *particles*, each with its own carried ``TaskUnrollState``:
particle 2i runs ``theta + eps_i`` and particle 2i+1 ``theta - eps_i`` on
the same task instance (seed) with the same minibatch keys. Every truncation
draws fresh ``eps_i ~ N(0, std^2 I)`` and adds it to the pair's accumulator
``xi_i``, the sum of the perturbations applied since the pair's task reset
(the minus member's is ``-xi_i``). With ``L_i^+-`` the truncation's
meta-loss of each member, the estimate is

    g = sum_i xi_i (L_i^+ - L_i^-) / (2 N std^2)

(the paper's antithetic estimator: each pair is unbiased for the gradient of
the Gaussian-smoothed objective, since ``E[eps (L(t+eps) - L(t-eps))] =
2 std^2 grad``). When a pair's task resets, its accumulator restarts at zero
before the new eps is added, and both members reset together. Diverged
particles pay the capped penalty of ``unroll._truncation``, so the losses
stay finite and PES sees divergence as a high loss to move away from.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.tasks import buckets
from metatrain.tasks.buckets import TaskSpec
from metatrain.training import unroll

# ``truncs_left`` of a pair whose task has not started: its first call
# (re)starts the task with its perturbed theta, not counted as a reset.
_START = unroll.START

# pylint: disable=protected-access
_fresh_task = unroll._fresh_task
_truncation = unroll._truncation


@struct.dataclass
class PESState:
  """The carried state of a PES group of N antithetic pairs.

  ``tasks`` has leading axis 2N, members interleaved (2i: ``+eps_i``, 2i+1:
  ``-eps_i``); ``accum`` has theta's structure with leading axis N.
  """

  tasks: unroll.TaskUnrollState
  accum: Any


def num_pairs(state: PESState) -> int:
  return int(jax.tree_util.tree_leaves(state.accum)[0].shape[0])


def _bcast(v, x):
  """Reshapes a (N,) vector to broadcast against x of shape (N, ...)."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def perturbations(theta, key, n: int, std):
  """``n`` draws of theta-shaped N(0, std^2 I) noise (leading axis n)."""
  leaves, treedef = jax.tree_util.tree_flatten(theta)
  sizes = [math.prod(jnp.shape(x)) for x in leaves]
  # One draw for all leaves: each random.normal call adds a threefry
  # kernel to the program, and theta has ~20 leaves.
  z = std * jax.random.normal(key, (n, sum(sizes)), jnp.float32)
  cuts = list(np.cumsum(sizes)[:-1])
  return jax.tree_util.tree_unflatten(treedef, [
      part.reshape((n,) + jnp.shape(x)).astype(jnp.result_type(x))
      for part, x in zip(jnp.split(z, cuts, axis=1), leaves)])


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg", "ucfg",
                                             "num_pairs"))
def init_pes_states(theta, key, hparams=None, *, task_config: TaskSpec,
                    hcfg: HRNNConfig, ucfg: unroll.UnrollConfig,
                    num_pairs: int) -> PESState:  # pylint: disable=redefined-outer-name
  """A PES group of ``num_pairs`` pairs, every task pending its start.

  The first ``pes_meta_grad`` call starts each pair's task with its
  perturbed theta (``hrnn.init_state`` reads theta), so every carried state
  depends on theta only through perturbations that the accumulator holds.
  """
  task = buckets.make_task(task_config, hparams)
  keys = jax.random.split(key, num_pairs)
  tasks = jax.vmap(lambda k: _fresh_task(task, hcfg, theta, k, ucfg))(keys)
  tasks = tasks.replace(truncs_left=jnp.full_like(tasks.truncs_left, _START))
  tasks = jax.tree_util.tree_map(lambda x: jnp.repeat(x, 2, axis=0), tasks)
  accum = jax.tree_util.tree_map(
      lambda t: jnp.zeros((num_pairs,) + jnp.shape(t), jnp.result_type(t)),
      theta)
  return PESState(tasks=tasks, accum=accum)


def pending_pes_states(theta, key, hparams=None, *, task_config: TaskSpec,
                       hcfg: HRNNConfig, ucfg: unroll.UnrollConfig,
                       num_pairs: int) -> PESState:  # pylint: disable=redefined-outer-name
  """``init_pes_states``'s group without compiling anything (zeros, each
  pair's seed, every task pending its start)."""
  shapes = jax.eval_shape(functools.partial(
      init_pes_states, task_config=task_config, hcfg=hcfg, ucfg=ucfg,
      num_pairs=num_pairs), theta, key, hparams)
  seeds = np.repeat(np.asarray(jax.random.split(key, num_pairs)), 2, axis=0)
  return PESState(tasks=unroll.pending_states(shapes.tasks, seeds),
                  accum=unroll.zeros(shapes.accum))


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg", "ucfg",
                                             "scan_len", "loss_diff"))
def pes_meta_grad(theta, state: PESState, keys, eps_key, length, std,
                  hparams=None, *, task_config: TaskSpec, hcfg: HRNNConfig,
                  ucfg: unroll.UnrollConfig, scan_len: int,
                  loss_diff: str = "raw", mask=None):
  """One forward-only truncation of every particle; the PES estimate.

  Args:
    theta: the meta-parameters.
    state: the group's ``PESState`` (N pairs).
    keys: N run keys (PRNG keys), one per pair, shared by its members.
    eps_key: the key this truncation's perturbations are drawn from.
    length: steps of the truncation (``scan_len`` is its bucket).
    std: the perturbation standard deviation (traced: no recompiles).
    hparams: a bucket's hyperparameters (``task_config`` a bucket), or None.
    loss_diff: how each pair's loss difference ``d_i = L_i^+ - L_i^-``
      weighs its accumulated perturbation (``MetaGradConfig.pes_loss_diff``):
      "raw", the unbiased estimate above; "sign" (VeLO's ES),
      ``g = sum_i xi_i sign(d_i) / (N std)``, blind to the scale of each
      task's losses (a task whose meta-loss moves a lot no longer outweighs
      the others); "normalized", ``g = sum_i xi_i (d_i / rms(d)) / (N std)``
      with ``rms(d)`` over the group's pairs (one task configuration), as
      blind to the task's scale as "sign" (same overall magnitude) but
      keeping which pairs' differences are larger. Neither magnitude is the
      gradient's, which the meta-optimizer (Adam, clipped) does not need.
    mask: None (perturb all of theta), or a theta-shaped tree of 0/1
      scalars (``meta_step.trainable_mask``): entries at 0 are neither
      perturbed nor estimated (their gradient is exactly 0).

  Returns:
    ``(grad, new_state, metrics)`` with ``group_meta_grad``'s metrics,
    counted over particles: ``meta_loss`` (mean over all particles, capped),
    ``num_good`` (members of pairs whose estimate counts),
    ``num_nonfinite`` (members of pairs zeroed for a non-finite loss or
    accumulator), ``num_diverged``, ``num_resets`` (particles reset at the
    start of this call, first starts excluded), ``final_loss`` (mean over
    particles that did not diverge), plus ``grad_weight``, the fraction of
    pairs that count.
  """
  task = buckets.make_task(task_config, hparams)
  n = keys.shape[0]
  std = jnp.asarray(std, jnp.float32)
  tl = state.tasks.truncs_left.reshape(n, 2)
  # A pair restarts when either member needs it: both reset together.
  restart = jnp.any(tl <= 0, axis=1)
  num_resets = 2 * jnp.sum(restart & (tl[:, 0] != _START))
  tasks = state.tasks.replace(truncs_left=jnp.where(
      jnp.repeat(restart, 2), jnp.minimum(state.tasks.truncs_left, 0),
      state.tasks.truncs_left))
  eps = perturbations(theta, eps_key, n, std)
  if mask is not None:
    eps = jax.tree_util.tree_map(lambda e, m: e * m.astype(e.dtype), eps,
                                 mask)
  # A restarting pair's accumulator is zeroed before the new eps is added.
  accum = jax.tree_util.tree_map(
      lambda a, e: jnp.where(_bcast(restart, a), 0.0, a) + e, state.accum,
      eps)
  signs = jnp.tile(jnp.array([1.0, -1.0], jnp.float32), n)

  def particle(t, e):
    e2 = jnp.repeat(e, 2, axis=0)
    return t + _bcast(signs, e2).astype(e2.dtype) * e2

  thetas = jax.tree_util.tree_map(particle, theta, eps)
  fn = functools.partial(_truncation, task=task, hcfg=hcfg, ucfg=ucfg,
                         scan_len=scan_len)
  losses, aux = jax.vmap(fn, in_axes=(0, 0, 0, None))(
      thetas, tasks, jnp.repeat(keys, 2, axis=0), length)

  lp, lm = losses[0::2], losses[1::2]
  ok = jnp.isfinite(lp) & jnp.isfinite(lm)
  for a in jax.tree_util.tree_leaves(accum):
    ok = ok & jnp.all(jnp.isfinite(a.reshape(n, -1)), 1)
  n_ok = jnp.sum(ok)
  # (std = 0, allowed here for tests, gives a zero estimate, not 0/0.)
  tiny = jnp.finfo(jnp.float32).tiny
  n_div = jnp.maximum(n_ok, 1).astype(jnp.float32)
  d = jnp.where(ok, lp - lm, 0.0)
  if loss_diff == "sign":
    scale = jnp.sign(d) / (jnp.maximum(std, tiny) * n_div)
  elif loss_diff == "normalized":
    rms = jnp.sqrt(jnp.sum(d * d) / n_div)
    scale = jnp.where(rms > 0, d / jnp.maximum(rms, tiny), 0.0) / (
        jnp.maximum(std, tiny) * n_div)
  elif loss_diff == "raw":
    scale = d / (2.0 * jnp.maximum(std**2, tiny) * n_div)
  else:
    raise ValueError(f"loss_diff must be 'raw', 'sign' or 'normalized', got "
                     f"{loss_diff!r}")
  grad = jax.tree_util.tree_map(
      lambda a: jnp.tensordot(scale, jnp.where(_bcast(ok, a), a, 0.0),
                              axes=1), accum)

  new_tasks = aux["state"]
  diverged = aux["diverged"]
  # Either member diverged, or the pair's estimate was not finite: both
  # members reset on the next call.
  bad = jnp.repeat(jnp.any(diverged.reshape(n, 2), 1) | ~ok, 2)
  new_tasks = new_tasks.replace(
      truncs_left=jnp.where(bad, 0, new_tasks.truncs_left))
  alive = ~diverged
  metrics = {
      "meta_loss": jnp.mean(jnp.where(jnp.isfinite(losses), losses,
                                      math.log(ucfg.divergence_factor))),
      "num_good": 2 * n_ok,
      "num_nonfinite": 2 * (n - n_ok),
      "num_diverged": jnp.sum(diverged),
      "num_resets": num_resets,
      "final_loss": jnp.sum(jnp.where(alive, aux["final_loss"], 0.0)) /
                    jnp.maximum(jnp.sum(alive), 1),
      "grad_weight": n_ok / n,
  }
  return grad, PESState(tasks=new_tasks, accum=accum), metrics
