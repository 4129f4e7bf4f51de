"""One meta-step's pieces, shared by every way of meta-training.

Single-process training (``local_train``), the Ray unroll workers
(``worker``) and the learner (``learner``) all build on these: the
meta-optimizer and its update (``meta_optimizer``, ``make_apply``), a
sampled task group and its meta-gradient (``TaskGroup``, BPTT or PES per
``group_estimator``), the averaging of several groups' meta-gradients
(``average_grads``), and the XLA:CPU stall watchdog (``StallWatchdog``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain import tasks
from metatrain.training import pes, programs, unroll
from metatrain.training.config import (MetaGradConfig, MetaOptConfig,
                                       TrainConfig)


def meta_optimizer(cfg: MetaOptConfig) -> optax.GradientTransformation:
  """Clip elementwise (as the reference), clip the norm, then Adam/RMSProp."""
  parts = [optax.clip(cfg.clip_value)]
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.name == "rmsprop":
    parts.append(optax.rmsprop(cfg.learning_rate, decay=cfg.rmsprop_decay))
  else:
    parts.append(optax.adam(cfg.learning_rate))
  return optax.chain(*parts)


def make_apply(opt: optax.GradientTransformation):
  """Jitted meta-update: (theta, opt_state, grad) -> (theta', state', finite,
  grad norm). Callers keep the old theta when ``finite`` is False."""

  @jax.jit
  def apply(theta, opt_state, grad):
    updates, new_opt_state = opt.update(grad, opt_state, theta)
    new_theta = optax.apply_updates(theta, updates)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in
                                jax.tree_util.tree_leaves(new_theta)]))
    return new_theta, new_opt_state, finite, optax.tree.norm(grad)

  return apply


def group_estimator(seed: int, mcfg: MetaGradConfig) -> str:
  """The estimator of a new group whose key is drawn from ``seed``.

  For "mix" a coin seeded by ``seed`` and a tag picks PES with probability
  ``mix_pes_fraction``; it draws nothing from the trainer's generator, so
  every estimator setting samples the same task configs and keys.
  """
  if mcfg.estimator != "mix":
    return mcfg.estimator
  coin = np.random.default_rng([seed, 0x9E5]).random()
  return "pes" if coin < mcfg.mix_pes_fraction else "bptt"


@dataclasses.dataclass
class TaskGroup:
  """Vmapped copies of one sampled task config and their carried states.

  A BPTT group holds ``unroll.tasks_per_group`` tasks
  (``unroll.TaskUnrollState``); a PES group ``2 * meta_grad.pes_pairs``
  particles and their perturbation accumulators (``pes.PESState``). Its
  programs are keyed on the config's ``bucket`` and take its ``hparams``
  as inputs (``tasks.buckets``): a new group of a bucket already compiled
  compiles nothing. Its tasks start inside the first truncation.
  """

  config: tasks.TaskConfig
  states: Any
  age: int = 0
  estimator: str = "bptt"  # "bptt" or "pes", fixed for the group's life
  bucket: Any = None  # what its programs are keyed on (default: config)
  hparams: Any = None  # the bucket's hyperparameters of this config

  def __post_init__(self):
    if self.bucket is None:
      self.bucket = self.config

  @classmethod
  def sample(cls, rng: np.random.Generator, ensemble: tasks.Ensemble,
             cfg: TrainConfig, theta) -> "TaskGroup":
    tc = ensemble.sample(rng)
    return cls.of(tc, int(rng.integers(2**31)), cfg, theta)

  @classmethod
  def of(cls, tc: tasks.TaskConfig, seed: int, cfg: TrainConfig,
         theta) -> "TaskGroup":
    """The group of config ``tc`` whose instances are drawn from ``seed``."""
    estimator = group_estimator(seed, cfg.meta_grad)
    key = jax.random.PRNGKey(seed)
    bucket, hparams = tasks.split(tc)
    kw = dict(task_config=bucket, hcfg=cfg.hrnn, ucfg=cfg.unroll)
    if estimator == "pes":
      states = pes.pending_pes_states(theta, key, hparams,
                                      num_pairs=cfg.meta_grad.pes_pairs, **kw)
    else:
      states = unroll.pending_group_states(
          theta, key, hparams, num_tasks=cfg.unroll.tasks_per_group, **kw)
    # On theta's device, as the programs' outputs will be: numpy inputs the
    # first time and device arrays later would compile the program twice.
    leaf = jax.tree_util.tree_leaves(theta)[0]
    device = (next(iter(leaf.devices())) if isinstance(leaf, jax.Array)
              else None)
    states, hparams = jax.device_put((states, hparams), device)
    return cls(tc, states, estimator=estimator, bucket=bucket,
               hparams=hparams)

  @property
  def label(self) -> str:
    return self.config.name + (" [pes]" if self.estimator == "pes" else "")

  def meta_grad(self, theta, rng: np.random.Generator, cfg: TrainConfig):
    """One truncation: returns (grad, metrics, task_steps).

    Metrics are ``group_meta_grad``'s plus ``grad_weight``, the fraction of
    the group's members whose gradient counts; task steps count every
    member (PES: both particles of every pair).
    """
    length = unroll.sample_length(rng, cfg.unroll)
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    scan_len = unroll.bucket(length, cfg.unroll)
    mask = trainable_mask(theta, cfg.meta_grad.train_only)
    if self.estimator == "pes":
      n = pes.num_pairs(self.states)
      k_run, k_eps = jax.random.split(key)
      loss_diff = cfg.meta_grad.pes_loss_diff
      programs.note(("pes", self.bucket, scan_len, cfg.unroll, cfg.hrnn,
                     loss_diff, mask is None))
      grad, self.states, metrics = pes.pes_meta_grad(
          theta, self.states, jax.random.split(k_run, n), k_eps, length,
          cfg.meta_grad.pes_std, self.hparams, task_config=self.bucket,
          hcfg=cfg.hrnn, ucfg=cfg.unroll, scan_len=scan_len,
          loss_diff=loss_diff, mask=mask)
      members = 2 * n
    else:
      members = cfg.unroll.tasks_per_group
      programs.note(("grad", self.bucket, scan_len, cfg.unroll, cfg.hrnn))
      grad, self.states, metrics = unroll.group_meta_grad(
          theta, self.states, jax.random.split(key, members), length,
          self.hparams, task_config=self.bucket, hcfg=cfg.hrnn,
          ucfg=cfg.unroll, scan_len=scan_len)
      metrics = dict(metrics, grad_weight=metrics["num_good"] / members)
      if mask is not None:  # frozen entries: exactly 0, even if not finite
        grad = jax.tree_util.tree_map(
            lambda g, m: jnp.where(m > 0, g, jnp.zeros_like(g)), grad, mask)
    if cfg.meta_grad.normalize_groups:
      grad, _ = unit_norm(grad)
    self.age += 1
    return grad, metrics, length * members


def trainable_mask(theta, names) -> Any:
  """None when ``names`` is empty (train all of theta), else a tree shaped
  like theta's leaves with one float32 scalar each: 1 under the top-level
  entries named (``MetaGradConfig.train_only``), 0 elsewhere."""
  if not names:
    return None
  unknown = [k for k in names if k not in theta]
  if unknown:
    raise ValueError(f"meta_grad.train_only: {unknown[0]!r} is not an entry "
                     f"of theta (it has: {', '.join(theta)})")
  return {k: jax.tree_util.tree_map(
      lambda _, on=(k in names): np.float32(on), v) for k, v in theta.items()}


def unit_norm(grad) -> tuple[Any, jax.Array]:
  """``grad`` over its global norm, and that norm.

  It is divided by its largest magnitude first, so that a finite gradient
  whose squared norm overflows float32 is scaled too. A zero gradient (no
  task of the group counted) stays zero, and a non-finite one is returned
  as it is, for the learner to count and drop.
  """
  leaves = jax.tree_util.tree_leaves(grad)
  amax = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
  ok = jnp.isfinite(amax) & (amax > 0)
  pre = jax.tree_util.tree_map(lambda g: g / jnp.where(ok, amax, 1.0), grad)
  norm = optax.tree.norm(pre)
  out = jax.tree_util.tree_map(lambda g: g / jnp.where(ok, norm, 1.0), pre)
  return out, jnp.where(ok, amax * norm, jnp.where(amax == 0, 0.0, amax))


def average_grads(results: list[tuple[Any, dict]]) -> tuple[Any, dict]:
  """Averages group gradients, weighting groups by their good-task count.

  Groups report ``grad_weight``, the fraction of their members that count,
  so a BPTT and a PES group of different sizes weigh the same when all
  their members count; results without it are weighted by ``num_good``.
  """
  weights = np.array([float(m.get("grad_weight", m["num_good"]))
                      for _, m in results])
  total = weights.sum()
  if total == 0:
    grad = jax.tree_util.tree_map(jnp.zeros_like, results[0][0])
  else:
    grad = jax.tree_util.tree_map(
        lambda *gs: sum(w * g for w, g in zip(weights, gs)) / total,
        *[g for g, _ in results])
  summed = {k: float(sum(float(m[k]) for _, m in results))
            for k in ("num_nonfinite", "num_diverged", "num_resets",
                      "num_good")}
  # Every group has the same number of tasks, diverged ones included.
  summed["meta_loss"] = float(np.mean([float(m["meta_loss"])
                                       for _, m in results]))
  return grad, summed


class StallWatchdog:
  """Ends the process (exit code 3) when one unit of work runs too long.

  jax 0.10's XLA:CPU runtime can wait forever on a result whose completion
  was lost (docs/architecture.md). A thread stuck like that cannot be
  interrupted from Python, so this watchdog thread logs ``describe()`` and
  ends the process: a Ray worker is then restarted by Ray, and a
  single-process run can be rerun. Call ``beat()`` when a unit starts and
  ends, ``stop()`` when the work is over.

  ``clock`` and ``exit`` are injectable, and ``thread=False`` starts no
  thread, so that tests drive ``check()`` by hand.
  """

  def __init__(self, seconds: float, describe: Callable[[], str],
               log: Callable[[str], None], *,
               clock: Callable[[], float] = time.monotonic,
               exit: Callable[[int], Any] = os._exit,  # pylint: disable=redefined-builtin,protected-access
               thread: bool = True):
    self.seconds, self.describe, self.log = seconds, describe, log
    self.clock, self.exit = clock, exit
    self.last = clock()
    if seconds > 0 and thread:
      threading.Thread(target=self._watch, daemon=True).start()

  def beat(self) -> None:
    self.last = self.clock()

  def stop(self) -> None:
    self.last = float("inf")

  def check(self) -> bool:
    """Ends the process if the current unit is over the limit; returns
    whether it tried (an injected ``exit`` may return)."""
    if self.seconds <= 0:
      return False
    waited = self.clock() - self.last
    if waited <= self.seconds:
      return False
    self.log(f"STALLED: {self.describe()} has run {waited:.0f}s (limit "
             f"{self.seconds:g}s); compiled programs {programs.stats()}. "
             "This is the XLA:CPU stall in docs/architecture.md; the "
             "process exits with code 3.")
    self.exit(3)
    return True

  def _watch(self) -> None:
    while True:
      time.sleep(min(5.0, self.seconds / 4))
      self.check()
