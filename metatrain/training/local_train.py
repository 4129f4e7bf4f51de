"""Single-process meta-training: ``lopt train --workers 0``.

Samples task groups from the ensemble, computes their meta-gradients
(truncated BPTT, PES, or a mix: ``meta_grad.estimator``), averages them, and
applies the meta-optimizer. The pieces (``meta_step``: ``TaskGroup``,
``make_apply``, ``StallWatchdog``) are the ones the Ray workers and the
learner use when distributed.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Callable

import jax
import numpy as np

from metatrain.optimizer import hrnn
from metatrain.training import programs
from metatrain.training.config import TrainConfig
from metatrain.training.meta_step import (
    StallWatchdog, TaskGroup, average_grads, make_apply, meta_optimizer)


class MetaTrainer:
  """Holds theta, the meta-optimizer state and the task groups."""

  def __init__(self, cfg: TrainConfig, theta=None):
    self.cfg = cfg
    programs.enable_persistent_cache(cfg.compile_cache_dir)
    self.rng = np.random.default_rng(cfg.seed)
    self.ensemble = cfg.tasks.ensemble()
    self.theta = (theta if theta is not None else
                  hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn))
    self.opt = meta_optimizer(cfg.meta_opt)
    self.opt_state = self.opt.init(self.theta)
    self.step = 0
    self.counters = {"num_nonfinite": 0, "num_diverged": 0, "num_resets": 0,
                     "skipped_updates": 0, "task_steps": 0}
    self.groups = [TaskGroup.sample(self.rng, self.ensemble, cfg, self.theta)
                   for _ in range(cfg.tasks.num_groups)]
    self._apply = make_apply(self.opt)
    self.running: tuple | None = None

  def meta_step(self) -> dict[str, float]:
    """Computes every group's meta-gradient and applies one update."""
    t0 = time.perf_counter()
    results, task_steps = [], 0
    for i, g in enumerate(self.groups):
      if g.age >= self.cfg.tasks.resample_every:
        self.groups[i] = g = TaskGroup.sample(self.rng, self.ensemble,
                                              self.cfg, self.theta)
      self.running = (i, g.label, g.age)  # for stall diagnostics
      grad, metrics, n = g.meta_grad(self.theta, self.rng, self.cfg)
      results.append((grad, metrics))
      task_steps += n
    grad, m = average_grads(results)
    new_theta, new_opt, finite, gnorm = self._apply(self.theta,
                                                    self.opt_state, grad)
    if bool(finite):
      self.theta, self.opt_state = new_theta, new_opt
    else:  # never let a bad update poison theta
      self.counters["skipped_updates"] += 1
    self.step += 1
    for k in ("num_nonfinite", "num_diverged", "num_resets"):
      self.counters[k] += int(m[k])
    self.counters["task_steps"] += task_steps
    dt = time.perf_counter() - t0
    return {"step": self.step, "meta_loss": m["meta_loss"],
            "grad_norm": float(gnorm), "num_good": m["num_good"],
            "nonfinite": m["num_nonfinite"], "diverged": m["num_diverged"],
            "task_steps_per_s": task_steps / dt, "seconds": dt}


def format_progress(m: dict[str, float], counters: dict[str, int],
                    suffix: str) -> str:
  """One progress line; ``suffix`` follows the step number as is ("/5",
  " (4.1 of 20 min)")."""
  return (f"step {m['step']:>5}{suffix}  meta_loss {m['meta_loss']:+.4f}  "
          f"|g| {m['grad_norm']:.3g}  task-steps/s {m['task_steps_per_s']:,.0f}"
          f"  nonfinite {counters['num_nonfinite']}  diverged "
          f"{counters['num_diverged']}  resets {counters['num_resets']}")


def _total(steps: int | None, budget_s: float | None, elapsed_s: float) -> str:
  """What a progress line puts after "step N": "/" and the step limit,
  then the minutes used of a time budget."""
  out = "" if steps is None else f"/{steps}"
  if budget_s is not None:
    out += f" ({elapsed_s / 60:.1f} of {budget_s / 60:g} min)"
  return out


def trainer_watchdog(trainer: "MetaTrainer", seconds: float,
                     log: Callable[[str], None], **kwargs) -> StallWatchdog:
  """A StallWatchdog over a MetaTrainer's meta-steps (``kwargs``: its
  ``clock``, ``exit`` and ``thread``)."""
  return StallWatchdog(
      seconds, lambda: (f"meta-step {trainer.step + 1} on group (index, "
                        f"config, age) {trainer.running}"), log, **kwargs)


def train(cfg: TrainConfig, steps: int | None = None,
          log: Callable[[str], None] | None = None,
          time_budget_s: float | None = None,
          on_step: Callable[[MetaTrainer, float], None] | None = None
          ) -> MetaTrainer:
  """Runs single-process meta-training and prints a progress line.

  Args:
    cfg: the training config.
    steps: meta-steps to run. ``None`` means ``cfg.steps``, or no step
      limit when ``time_budget_s`` is given.
    log: where progress lines go (stderr by default).
    time_budget_s: stop after the first meta-step that ends past this many
      seconds. Progress lines then show the minutes used of the budget.
    on_step: ``on_step(trainer, seconds)`` runs after every meta-step with
      the seconds since training started (its own time counts in the
      budget).

  Returns:
    The trainer, holding theta, its optimizer state and the counters.
  """
  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  if steps is None and time_budget_s is None:
    steps = cfg.steps
  if steps is not None and steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  trainer = MetaTrainer(cfg)
  if (advice := programs.map_limit_advice()) is not None:
    log(advice)
  log(f"meta-training {hrnn.num_meta_params(trainer.theta)} meta-params on "
      f"{cfg.tasks.num_groups} groups x {cfg.unroll.tasks_per_group} tasks "
      f"({', '.join(g.label for g in trainer.groups)}); meta-gradients: "
      f"{cfg.meta_grad.estimator}")
  t_start = time.time()
  ema = None
  watchdog = trainer_watchdog(trainer, cfg.stall_timeout_s, log)
  for _ in (range(steps) if steps is not None else itertools.count()):
    m = trainer.meta_step()
    watchdog.beat()
    if on_step is not None:
      on_step(trainer, time.time() - t_start)
    if np.isfinite(m["meta_loss"]):
      ema = m["meta_loss"] if ema is None else 0.9 * ema + 0.1 * m["meta_loss"]
    if m["step"] % cfg.log_every == 0 or m["step"] == steps:
      log(format_progress(
          dict(m, meta_loss=ema if ema is not None else float("nan")),
          trainer.counters, _total(steps, time_budget_s, time.time() - t_start)))
    if time_budget_s is not None and time.time() - t_start > time_budget_s:
      log(f"time budget of {time_budget_s:.0f}s reached at step {m['step']}")
      break
  watchdog.stop()
  return trainer
