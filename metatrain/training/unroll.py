"""Truncated unrolls of vmapped task groups, the meta-objective and its gradient.

A *task group* is N copies of one sampled ``TaskConfig`` (same shapes,
different seeds), vmapped. Each copy carries a ``TaskUnrollState`` across
truncations: inner params, HRNN state, step, ``f_0`` and its seed. A task
lives for a heavy-tailed number of truncations (``round(Exp(mean)) + 1``);
when it is used up, or diverges, it is reset inside jit with a new seed and
the same shapes.

Each call runs one truncation of ``length`` inner steps: by default a fixed
length (one compiled program per task bucket, ``tasks.buckets``); or drawn
heavy-tailed (``round(Exp(mean)) + min``), in which case the scan runs for
the next bucket length (a power of two times ``min_steps``) and masks the
steps past ``length``, so the drawn length is exact and at most one program
per length bucket is compiled.

The meta-objective of a truncation is the mean over its steps of
``log(f_t / (f_0 + 1e-6) + 1e-6)`` where ``f`` is the full-batch loss (the
optimizer itself sees minibatch gradients), or, with ``meta_loss =
"minibatch"``, the minibatch loss each step computes anyway (no extra
forward pass). Its gradient with respect to theta is truncated BPTT,
optionally without second derivatives (or PES, ``metatrain/pes.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from metatrain.optimizer import hrnn
from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.tasks import TaskConfig, buckets
from metatrain.tasks.buckets import TaskSpec

_EPS = 1e-6
# ``truncs_left`` of a task that has not started: the next truncation starts
# it (in jit, as a reset that is not counted as one).
START = -1


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
  """How inner problems are unrolled.

  The 2017 reference used truncations_mean=40, steps_mean=200, min_steps=50;
  the CPU default here is shorter so a laptop sees progress in minutes.
  """

  tasks_per_group: int = 8  # vmapped copies of one task config
  truncations_mean: float = 40.0  # task length: round(Exp(mean)) + 1 truncs
  # Truncation length: round(Exp(steps_mean)) + min_steps steps, capped at
  # max_steps. Each power-of-two length bucket is a compiled program per
  # task bucket, so the default is one fixed length (steps_mean 0, min =
  # max): one program per task bucket, and heavy-tailed task lengths (the
  # truncations a task lives) carry the heavy tail.
  steps_mean: float = 0.0
  min_steps: int = 40
  max_steps: int = 40  # truncations are capped here (also the max bucket)
  stop_second_derivatives: bool = False
  divergence_factor: float = 1e3  # f_t > factor * (f_0 + 1) counts as diverged
  # What f_t of the meta-objective is: "full", the full-batch loss after each
  # step (the paper's; one extra full-data forward pass per step), or
  # "minibatch", the minibatch loss the step's gradient came with, at the
  # step's starting params (free: unbiased for the full loss there, since
  # the batch is fresh; noisier, and one step behind).
  meta_loss: str = "full"
  # 0 (the paper's): every inner step's log-loss term weighs the same.
  # N > 0: the term of a task's inner step s (from its start) weighs
  # min(1, (s + 1) / N), so that how fast a task starts counts less than
  # where its training ends up (the evaluators score final losses). A
  # diverged step still pays the full cap, so diverging early is never
  # cheaper than any finite outcome.
  meta_loss_ramp_steps: int = 0
  # (lo, hi) with 0 < lo <= hi: each task instance's optimizer runs at a
  # nominal learning rate drawn log-uniform in [lo, hi] (the rate a user
  # passes, ``hrnn.update``'s ``learning_rate``), so that meta-training
  # sees the rates users pick and the optimizer learns to work across
  # them. () (the default): every task at the optimizer's ``init_lr``.
  lr_range: tuple[float, ...] = ()
  # (lo, hi) with 1 <= lo <= hi: a task lives for a number of inner steps
  # drawn log-uniform in [lo, hi] (rounded up to whole truncations of
  # max_steps), instead of round(Exp(truncations_mean)) + 1 truncations;
  # and a group's first tasks start at a random offset into their life
  # (their first life is a uniform fraction of one), so that the tasks
  # of a run are spread over every phase of training. () (the default):
  # truncations_mean.
  task_steps_range: tuple[float, ...] = ()
  # Truncated BPTT keeps every inner step's activations for the backward
  # pass: for 8 ConvNets on 8x8 images (a 512-image full-batch loss per
  # step, 40 steps) that is GBs per program, and glibc keeps the peak
  # (run bp was killed for memory at 24 GB, runs.md). True: each step is
  # recomputed in the backward pass from its carried params and optimizer
  # state (``jax.checkpoint``), so a truncation holds one step's
  # activations: 30x less memory, and faster overall despite one more
  # forward per step (benchmarks/README.md, "BPTT memory"). PES and
  # evaluation take no gradient through the unroll: no effect there.
  remat: bool = True

  def __post_init__(self):
    object.__setattr__(self, "lr_range", tuple(float(x) for x in
                                               self.lr_range))
    object.__setattr__(self, "task_steps_range", tuple(
        float(x) for x in self.task_steps_range))
    if self.lr_range and not (len(self.lr_range) == 2 and
                              0 < self.lr_range[0] <= self.lr_range[1]):
      raise ValueError(f"unroll.lr_range must be [] or [lo, hi] with 0 < lo "
                       f"<= hi, got {list(self.lr_range)}")
    if self.task_steps_range and not (
        len(self.task_steps_range) == 2 and
        1 <= self.task_steps_range[0] <= self.task_steps_range[1]):
      raise ValueError(f"unroll.task_steps_range must be [] or [lo, hi] with "
                       f"1 <= lo <= hi, got {list(self.task_steps_range)}")
    if self.meta_loss not in ("full", "minibatch"):
      raise ValueError(f"unroll.meta_loss must be 'full' or 'minibatch', got "
                       f"{self.meta_loss!r}")
    if self.meta_loss_ramp_steps < 0:
      raise ValueError("unroll.meta_loss_ramp_steps must be >= 0 (0: every "
                       "step weighs the same)")
    if self.tasks_per_group < 1:
      raise ValueError("unroll.tasks_per_group must be >= 1")
    if self.min_steps < 1 or self.max_steps < self.min_steps:
      raise ValueError("unroll needs 1 <= min_steps <= max_steps")
    if self.truncations_mean < 0 or self.steps_mean < 0:
      raise ValueError("unroll.truncations_mean/steps_mean must be >= 0")


@struct.dataclass
class TaskUnrollState:
  """The carried state of one task (leading axis N inside a group)."""

  params: Any
  data: Any
  opt_state: hrnn.HRNNState
  step: jax.Array  # inner steps taken since the last reset
  f0: jax.Array  # full-batch loss at the reset
  seed: jax.Array  # PRNG key of the current task instance
  truncs_left: jax.Array  # truncations left before the next reset
  lr: jax.Array  # the task's nominal learning rate (``UnrollConfig.lr_range``)


def sample_num_truncations(key, cfg: UnrollConfig, shape=()):
  """Truncations a task lives (see ``UnrollConfig.task_steps_range``)."""
  if cfg.task_steps_range:
    lo, hi = (math.log(x) for x in cfg.task_steps_range)
    steps = jnp.exp(jax.random.uniform(key, shape, minval=lo, maxval=hi))
    return jnp.maximum(jnp.ceil(steps / cfg.max_steps), 1).astype(jnp.int32)
  e = jax.random.exponential(key, shape) * cfg.truncations_mean
  return jnp.round(e).astype(jnp.int32) + 1


def sample_lr(key, cfg: UnrollConfig, default: float):
  """A task's nominal learning rate: log-uniform in ``cfg.lr_range``."""
  if not cfg.lr_range:
    return jnp.asarray(default, jnp.float32)
  lo, hi = (math.log(x) for x in cfg.lr_range)
  return jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi))


def sample_length(rng: np.random.Generator, cfg: UnrollConfig) -> int:
  """Steps of one truncation: round(Exp(steps_mean)) + min_steps, capped."""
  n = int(round(rng.exponential(cfg.steps_mean))) + cfg.min_steps
  return min(n, cfg.max_steps)


def bucket(length: int, cfg: UnrollConfig) -> int:
  """The compiled scan length used for a truncation of ``length`` steps."""
  b = cfg.min_steps * 2 ** max(0, math.ceil(math.log2(length / cfg.min_steps)))
  return int(min(b, cfg.max_steps))


def init_key(task_key):
  """The key a task instance's params and data are drawn from."""
  return jax.random.split(task_key, 3)[0]


def steps_key(run_key):
  """The key a truncation's per-step minibatch keys are folded from."""
  return jax.random.split(run_key)[1]


def problem_keys(key, num_tasks: int):
  """(task keys, run keys) of ``evaluate``: shared by every evaluator, so
  all optimizers see the same problem instances and minibatches."""
  k_init, k_run = jax.random.split(key)
  return (jax.random.split(k_init, num_tasks),
          jax.random.split(k_run, num_tasks))


def _fresh_task(task, hcfg, theta, key, ucfg):
  _, k_opt, k_len = jax.random.split(key, 3)
  k_lr = jax.random.fold_in(k_len, 1)
  k_init = init_key(key)
  params, data = task.init(k_init)
  return TaskUnrollState(
      params=params, data=data,
      opt_state=hrnn.init_state(hcfg, theta, params, k_opt),
      step=jnp.zeros((), jnp.int32),
      f0=task.full_loss(params, data),
      seed=key,
      truncs_left=sample_num_truncations(k_len, ucfg),
      lr=sample_lr(k_lr, ucfg, hcfg.init_lr))


def _tree_where(c, a, b):
  return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _truncation(theta, state: TaskUnrollState, key, length, *, task, hcfg,
                ucfg, scan_len):
  """Runs one truncation for one task; returns (meta_loss, aux)."""
  # Reset used-up or diverged tasks first, in jit, with the same shapes.
  k_steps = steps_key(key)
  cap = math.log(ucfg.divergence_factor)
  need_reset = state.truncs_left <= 0
  first_start = state.truncs_left == START
  fresh = _fresh_task(task, hcfg, theta, jax.random.fold_in(state.seed,
                                                            state.step + 1),
                      ucfg)
  if ucfg.task_steps_range:  # a group's first tasks start at random offsets
    offset = jax.random.randint(jax.random.fold_in(state.seed, 7), (), 1,
                                fresh.truncs_left + 1)
    fresh = fresh.replace(truncs_left=jnp.where(first_start, offset,
                                                fresh.truncs_left))
  state = jax.lax.stop_gradient(state)
  state = _tree_where(need_reset, fresh, state)

  def body(carry, t):
    params, opt_state, diverged = carry
    k = jax.random.fold_in(k_steps, t)
    loss, grads = task.loss_and_grad(params, state.data, k)
    if ucfg.stop_second_derivatives:
      grads = jax.lax.stop_gradient(grads)
    updates, new_opt = hrnn.update(hcfg, theta, opt_state, grads, params,
                                   learning_rate=(state.lr if ucfg.lr_range
                                                  else None))
    new_params = optax.apply_updates(params, updates)
    if ucfg.meta_loss == "full":
      f = task.full_loss(new_params, state.data)
      finite = jnp.isfinite(f) & jnp.isfinite(loss)
    else:  # the minibatch loss at params; new_params are checked directly
      f = loss
      finite = jnp.isfinite(loss)
      for leaf in jax.tree_util.tree_leaves(new_params):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    active = t < length
    bad = ~finite | (f > ucfg.divergence_factor * (state.f0 + 1.0))
    diverged = diverged | (active & bad)
    f_safe = jnp.where(jnp.isfinite(f), f, state.f0)
    term = jnp.minimum(jnp.log(f_safe / (state.f0 + _EPS) + _EPS), cap)
    if ucfg.meta_loss_ramp_steps > 0:
      term = term * jnp.minimum(
          1.0, (state.step + t + 1).astype(jnp.float32) /
          ucfg.meta_loss_ramp_steps)
    # A diverged task pays the cap for the rest of the truncation: diverging
    # is never cheaper than any finite outcome (a capped, constant penalty:
    # no gradient flows through the explosion).
    term = jnp.where(active, jnp.where(diverged, cap, term), 0.0)
    keep = active & ~diverged
    params = _tree_where(keep, new_params, params)
    opt_state = _tree_where(keep, new_opt, opt_state)
    # A diverged task's loss is reported as inf, never as a finite value.
    f_report = jnp.where(diverged, jnp.inf, f)
    return (params, opt_state, diverged), (term, f_report)

  init = (state.params, state.opt_state, jnp.zeros((), bool))
  (params, opt_state, diverged), (terms, fs) = jax.lax.scan(
      jax.checkpoint(body, prevent_cse=False) if ucfg.remat else body, init,
      jnp.arange(scan_len))
  n_active = jnp.minimum(length, scan_len).astype(jnp.float32)
  meta_loss = jnp.sum(terms) / n_active
  new_state = state.replace(
      params=params, opt_state=opt_state,
      step=state.step + jnp.minimum(length, scan_len),
      truncs_left=jnp.where(diverged, 0, state.truncs_left - 1))
  aux = {"state": new_state, "diverged": diverged,
         "reset": need_reset & ~first_start,
         "final_loss": jnp.where(diverged, jnp.inf,
                                 fs[jnp.minimum(length, scan_len) - 1])}
  return meta_loss, aux


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg", "ucfg",
                                             "scan_len"))
def group_meta_grad(theta, states, keys, length, hparams=None, *,
                    task_config: TaskSpec, hcfg: HRNNConfig,
                    ucfg: UnrollConfig, scan_len: int):
  """Meta-gradient of one truncation, averaged over a group's tasks.

  ``task_config`` is a ``TaskConfig`` (its exact task) or a bucket
  (``tasks.buckets``) with the group's ``hparams``: every sample of a
  bucket runs this one compiled program.

  A task that diverges pays ``log(divergence_factor)`` per step for the rest
  of the truncation: it counts in the meta-loss, and its gradient (from the
  steps before it diverged) in the mean, when finite. Non-finite per-task
  gradients are zeroed and counted; they never reach the returned gradient.
  Diverged tasks, and tasks with non-finite gradients, are reset on the next
  call.

  Returns:
    ``(grad, new_states, metrics)`` where metrics has ``meta_loss`` (mean
    over all tasks, diverged ones included), ``num_nonfinite``,
    ``num_diverged``, ``num_resets``, ``num_good`` (tasks whose gradient
    counts) and ``final_loss`` (mean over tasks that did not diverge).
  """
  task = buckets.make_task(task_config, hparams)
  fn = functools.partial(_truncation, task=task, hcfg=hcfg, ucfg=ucfg,
                         scan_len=scan_len)
  grad_fn = jax.vmap(jax.value_and_grad(fn, has_aux=True),
                     in_axes=(None, 0, 0, None))
  (losses, aux), grads = grad_fn(theta, states, keys, length)
  finite = jnp.isfinite(losses)
  for g in jax.tree_util.tree_leaves(grads):
    finite = finite & jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), 1)
  good = finite
  n_good = jnp.sum(good)
  denom = jnp.maximum(n_good, 1).astype(jnp.float32)
  mean_grad = jax.tree_util.tree_map(
      lambda g: jnp.sum(jnp.where(good.reshape((-1,) + (1,) * (g.ndim - 1)),
                                  g, 0.0), 0) / denom, grads)
  new_states = aux["state"]
  # A task with a non-finite gradient is reset next call, like a diverged one.
  new_states = new_states.replace(
      truncs_left=jnp.where(finite, new_states.truncs_left, 0))
  ok = ~aux["diverged"]
  metrics = {
      "meta_loss": jnp.mean(jnp.where(jnp.isfinite(losses), losses,
                                      math.log(ucfg.divergence_factor))),
      "num_good": n_good,
      "num_nonfinite": jnp.sum(~finite),
      "num_diverged": jnp.sum(aux["diverged"]),
      "num_resets": jnp.sum(aux["reset"]),
      "final_loss": jnp.sum(jnp.where(ok, aux["final_loss"], 0.0)) /
                    jnp.maximum(jnp.sum(ok), 1),
  }
  return mean_grad, new_states, metrics


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg", "ucfg",
                                             "num_tasks"))
def init_group_states(theta, key, hparams=None, *, task_config: TaskSpec,
                      hcfg: HRNNConfig, ucfg: UnrollConfig, num_tasks: int):
  """Fresh unroll states for ``num_tasks`` copies of one task config."""
  task = buckets.make_task(task_config, hparams)
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(lambda k: _fresh_task(task, hcfg, theta, k, ucfg))(keys)


def zeros(shapes):
  """numpy zeros shaped like a pytree of ``jax.ShapeDtypeStruct``."""
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def pending_states(shapes, seeds) -> TaskUnrollState:
  """Unroll states that compile nothing: zeros shaped like ``shapes`` (a
  ``TaskUnrollState`` of ``jax.ShapeDtypeStruct``, e.g. ``jax.eval_shape``
  of ``init_group_states``), every task at ``START`` with its own seed, so
  the first truncation starts every task inside its compiled program."""
  return zeros(shapes).replace(seed=seeds, truncs_left=np.full(
      shapes.truncs_left.shape, START, np.int32))


def pending_group_states(theta, key, hparams=None, *, task_config: TaskSpec,
                         hcfg: HRNNConfig, ucfg: UnrollConfig,
                         num_tasks: int) -> TaskUnrollState:
  """``init_group_states``'s tasks, pending their start: no compile."""
  shapes = jax.eval_shape(functools.partial(
      init_group_states, task_config=task_config, hcfg=hcfg, ucfg=ucfg,
      num_tasks=num_tasks), theta, key, hparams)
  return pending_states(shapes, jax.random.split(key, num_tasks))


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg",
                                             "num_tasks", "steps"))
def evaluate(theta, key, *, task_config: TaskConfig, hcfg: HRNNConfig,
             num_tasks: int, steps: int):
  """Fresh tasks trained ``steps`` steps from scratch with theta.

  Returns ``(meta_objective, final_full_loss, diverged)``, each of shape
  (num_tasks,): the meta-objective of one ``steps``-long truncation, with no
  resets. A diverged task's meta-objective and final loss are ``inf``: it
  loses every comparison.
  """
  ucfg = UnrollConfig(tasks_per_group=num_tasks, truncations_mean=0.0,
                      min_steps=1, max_steps=max(steps, 1))
  task = buckets.make_task(task_config)
  task_keys, run_keys = problem_keys(key, num_tasks)
  states = jax.vmap(lambda k: _fresh_task(task, hcfg, theta, k, ucfg))(
      task_keys)
  fn = functools.partial(_truncation, task=task, hcfg=hcfg, ucfg=ucfg,
                         scan_len=steps)
  losses, aux = jax.vmap(fn, in_axes=(None, 0, 0, None))(
      theta, states, run_keys, steps)
  diverged = aux["diverged"] | ~jnp.isfinite(losses)
  return (jnp.where(diverged, jnp.inf, losses),
          jnp.where(diverged, jnp.inf, aux["final_loss"]), diverged)
