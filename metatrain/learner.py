"""The central learner: asynchronous aggregation of worker meta-gradients.

Ray's parameter-server pattern: the learner keeps one ``compute`` call in
flight per worker, ``ray.wait``s for any to finish, offers the result to a
``GradientAggregator`` (which drops stale, duplicate and non-finite
gradients), resubmits to that worker with the newest theta ref, and applies
the meta-optimizer once a batch is full, publishing the new theta with
``ray.put``.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from metatrain.local_train import make_apply
from metatrain.worker import MetaGrad

_DEDUP_WINDOW = 4096  # per-worker seqs remembered for duplicate detection


@dataclasses.dataclass
class AggregatorCounters:
  accepted: int = 0
  stale: int = 0
  duplicate: int = 0
  nonfinite: int = 0
  worker_failures: int = 0


class GradientAggregator:
  """Accepts MetaGrads into a batch; pure bookkeeping, no Ray.

  Args:
    max_staleness: a grad computed on theta from step ``s`` is dropped when
      the learner is at step ``> s + max_staleness``.
    batch_size: number of accepted grads averaged per update.
  """

  def __init__(self, max_staleness: int, batch_size: int):
    self.max_staleness = max_staleness
    self.batch_size = max(1, batch_size)
    self.counters = AggregatorCounters()
    self._buffer: list[tuple[MetaGrad, int]] = []
    self._seen: dict[int, collections.OrderedDict] = collections.defaultdict(
        collections.OrderedDict)

  def offer(self, mg: MetaGrad, current_step: int) -> str:
    """Returns 'accepted', 'duplicate', 'stale' or 'nonfinite'."""
    seen = self._seen[mg.worker_id]
    if mg.seq in seen:
      self.counters.duplicate += 1
      return "duplicate"
    seen[mg.seq] = None
    while len(seen) > _DEDUP_WINDOW:
      seen.popitem(last=False)
    staleness = current_step - mg.theta_step
    if staleness > self.max_staleness or staleness < 0:
      self.counters.stale += 1
      return "stale"
    if not all(np.all(np.isfinite(g)) for g in
               jax.tree_util.tree_leaves(mg.grads)):
      self.counters.nonfinite += 1
      return "nonfinite"
    self._buffer.append((mg, staleness))
    self.counters.accepted += 1
    return "accepted"

  def ready(self) -> bool:
    return len(self._buffer) >= self.batch_size

  def pop_batch(self) -> tuple[Any, dict[str, float]]:
    """Averages and removes one batch; returns (grad, batch metrics)."""
    batch, self._buffer = (self._buffer[:self.batch_size],
                           self._buffer[self.batch_size:])
    grads = [mg.grads for mg, _ in batch]
    mean = jax.tree_util.tree_map(lambda *g: np.mean(np.stack(g), 0), *grads)
    losses = [mg.metrics.get("meta_loss", np.nan) for mg, _ in batch]
    finite_losses = [x for x in losses if np.isfinite(x)]
    metrics = {
        "meta_loss": float(np.mean(finite_losses)) if finite_losses
                     else float("nan"),
        "staleness": float(np.mean([s for _, s in batch])),
        "task_steps": float(sum(mg.metrics.get("task_steps", 0.0)
                                for mg, _ in batch)),
        "task_nonfinite": float(sum(mg.metrics.get("num_nonfinite", 0.0)
                                    for mg, _ in batch)),
        "task_diverged": float(sum(mg.metrics.get("num_diverged", 0.0)
                                   for mg, _ in batch)),
        "workers": sorted({mg.worker_id for mg, _ in batch}),
        "per_worker_steps_per_s": {mg.worker_id: mg.metrics.get(
            "task_steps_per_s", 0.0) for mg, _ in batch},
    }
    return mean, metrics


@dataclasses.dataclass
class LearnerState:
  theta: Any
  opt_state: Any
  step: int
  counters: dict[str, int]


def run(state: LearnerState, workers: list, opt: optax.GradientTransformation,
        *, steps: int, max_staleness: int, batch_size: int,
        on_step: Callable[[LearnerState, dict], None],
        should_stop: Callable[[], bool] = lambda: False,
        wait_timeout_s: float = 1.0) -> LearnerState:
  """Runs the asynchronous learner loop until ``state.step == steps``.

  Args:
    state: theta, meta-optimizer state, step and counters (updated in place).
    workers: Ray actor handles of ``UnrollWorker``.
    opt: the meta-optimizer.
    steps: the target learner step (absolute, so resumed runs continue).
    max_staleness: see ``GradientAggregator``.
    batch_size: grads per update.
    on_step: called after each update with (state, metrics), for logging
      and checkpointing.
    should_stop: polled between waits; True ends the loop early.
    wait_timeout_s: ``ray.wait`` timeout, bounds the stop latency.
  """
  import ray  # pylint: disable=import-outside-toplevel
  agg = GradientAggregator(max_staleness, batch_size)
  base = dict(state.counters)  # counters restored from a checkpoint
  apply = make_apply(opt)

  def sync_counters():
    for k, v in dataclasses.asdict(agg.counters).items():
      state.counters[k] = base.get(k, 0) + v

  theta_ref = ray.put(state.theta)
  pending = {w.compute.remote(theta_ref, state.step): i
             for i, w in enumerate(workers)}
  t_last = time.perf_counter()
  while state.step < steps and not should_stop():
    ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_timeout_s)
    for ref in ready:
      wid = pending.pop(ref)
      try:
        mg = ray.get(ref)
      except (ray.exceptions.RayActorError,
              ray.exceptions.ActorUnavailableError) as e:
        agg.counters.worker_failures += 1
        print(f"learner: worker {wid} failed ({type(e).__name__}); it will "
              "restart and pull theta again", flush=True)
      else:
        agg.offer(mg, state.step)
      pending[workers[wid].compute.remote(theta_ref, state.step)] = wid
    while agg.ready() and state.step < steps:
      grad, metrics = agg.pop_batch()
      new_theta, new_opt, finite, gnorm = apply(state.theta, state.opt_state,
                                                grad)
      if bool(finite):
        state.theta, state.opt_state = new_theta, new_opt
      else:
        state.counters["skipped_updates"] = state.counters.get(
            "skipped_updates", 0) + 1
      state.step += 1
      theta_ref = ray.put(state.theta)
      now = time.perf_counter()
      metrics.update(grad_norm=float(gnorm),
                     task_steps_per_s=metrics["task_steps"] / max(
                         now - t_last, 1e-9))
      t_last = now
      sync_counters()
      on_step(state, metrics)
  sync_counters()
  for ref in pending:
    ray.cancel(ref, force=False)
  return state
