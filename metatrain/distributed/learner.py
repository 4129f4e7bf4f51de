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

from metatrain.distributed.worker import GroupError, MetaGrad
from metatrain.training.meta_step import make_apply

_DEDUP_WINDOW = 4096  # per-worker seqs remembered for duplicate detection


@dataclasses.dataclass
class AggregatorCounters:
  accepted: int = 0
  stale: int = 0
  duplicate: int = 0
  nonfinite: int = 0
  worker_failures: int = 0
  worker_timeouts: int = 0
  worker_errors: int = 0  # exceptions raised inside compute()
  # Work the workers report with every result, used or not:
  task_steps: int = 0  # inner steps unrolled
  compiles: int = 0  # XLA compiles (a steady run adds none)
  cache_hits: int = 0  # programs loaded from the persistent compile cache
  # The group calls that neither compiled nor loaded a program: their task
  # steps and milliseconds, whose ratio is the run's compile-free rate.
  warm_task_steps: int = 0
  warm_ms: int = 0


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
    for k in ("task_steps", "compiles", "cache_hits", "warm_task_steps",
              "warm_ms"):  # work done, used or not
      setattr(self.counters, k, getattr(self.counters, k) +
              int(mg.metrics.get(k, 0)))
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


class RayCalls:
  """The Ray calls a ``WorkerPool`` makes; tests pass a fake with the same
  methods (and the same exception types) to drive it with a fake clock."""

  def __init__(self):
    import ray  # pylint: disable=import-outside-toplevel
    self.ray = ray
    self.lost = (ray.exceptions.RayActorError,
                 ray.exceptions.ActorUnavailableError)  # actor down
    self.raised = ray.exceptions.RayTaskError  # compute() raised

  def submit(self, actor, theta_ref, step: int):
    return actor.compute.remote(theta_ref, step)

  def wait(self, refs: list, timeout: float) -> list:
    ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
    return ready

  def get(self, ref):
    return self.ray.get(ref)

  def kill(self, actor) -> None:
    self.ray.kill(actor, no_restart=False)

  def cancel(self, ref) -> None:
    self.ray.cancel(ref, force=False)

  def put(self, theta):
    return self.ray.put(theta)


class _Done:
  """A finished in-process call: its result or the exception it raised."""

  def __init__(self, value=None, error: Exception | None = None):
    self.value, self.error = value, error


class LocalCalls:
  """``RayCalls`` for in-process workers (``lopt train --workers 0``).

  ``submit`` runs the worker's ``compute`` at once; ``wait`` returns every
  call, all finished. A ``GroupError`` (a task group raised) is counted and
  the worker carries on, as with Ray; a worker cannot be lost.
  """

  lost = ()  # catches nothing
  raised = GroupError

  def submit(self, worker, theta, step: int) -> _Done:
    try:
      return _Done(worker.compute(theta, step))
    except GroupError as e:
      return _Done(error=e)

  def wait(self, refs: list, timeout: float) -> list:
    del timeout
    return list(refs)

  def get(self, ref: _Done):
    if ref.error is not None:
      raise ref.error
    return ref.value

  def kill(self, actor) -> None:
    del actor  # the StallWatchdog ends a stalled process itself

  def cancel(self, ref) -> None:
    del ref

  def put(self, theta):
    return theta


class WorkerPool:
  """Keeps one ``compute`` call in flight per worker; detects lost workers.

  A worker is *down* from its first failed call until a call succeeds again;
  while down, calls are retried with a growing backoff (Ray is restarting
  the actor). Each up-to-down change counts one ``worker_failures``. A call
  pending longer than ``call_timeout_s`` is a stalled worker: the actor is
  killed so that Ray restarts it, and ``worker_timeouts`` counts it. A worker
  that went down more than ``max_failures`` times, or stayed down for
  ``down_limit_s``, is dropped. ``clock``, ``sleep`` and ``calls`` (the
  Ray calls, ``RayCalls``) are injectable.
  """

  def __init__(self, workers: list, counters: AggregatorCounters, *,
               call_timeout_s: float = 0.0, max_failures: int = 0,
               down_limit_s: float = 300.0, max_errors_in_row: int = 20,
               clock=time.monotonic, sleep=time.sleep, calls=None):
    self.workers, self.counters, self.clock = workers, counters, clock
    self.sleep = sleep
    self.calls = calls if calls is not None else RayCalls()
    self.call_timeout_s, self.max_failures = call_timeout_s, max_failures
    self.down_limit_s = down_limit_s
    self.max_errors_in_row = max_errors_in_row
    self.errors_in_row = collections.Counter()
    self.errored: list[int] = []  # raised in compute(): resubmit at once
    self.pending: dict[Any, tuple[int, float]] = {}  # ref -> (wid, since)
    self.retry_at: dict[int, float] = {}  # down workers awaiting a retry
    self.down_since: dict[int, float] = {}
    self.downs = collections.Counter()
    self.retries = collections.Counter()  # failed calls in this down spell

  def submit(self, wid: int, theta_ref, step: int) -> None:
    ref = self.calls.submit(self.workers[wid], theta_ref, step)
    self.pending[ref] = (wid, self.clock())

  def wait(self, timeout: float) -> list[tuple[int, Any]]:
    """Returns [(worker id, MetaGrad)] of the calls that finished."""
    if not self.pending and not self.retry_at and not self.errored:
      raise RuntimeError(
          f"learner: all {len(self.workers)} workers are gone (each went "
          f"down more than {self.max_failures} times or stayed down "
          f"{self.down_limit_s:g}s); see the worker logs above")
    if not self.pending:
      self.sleep(min(timeout, 0.5))
      return []
    ready = self.calls.wait(list(self.pending), timeout)
    out = []
    for ref in ready:
      wid, _ = self.pending.pop(ref)
      try:
        out.append((wid, self.calls.get(ref)))
        if wid in self.down_since:
          print(f"learner: worker {wid} is back after "
                f"{self.clock() - self.down_since.pop(wid):.0f}s", flush=True)
        self.retries.pop(wid, None)
        self.errors_in_row.pop(wid, None)
      except self.calls.lost as e:
        self._failed(wid, e)
      except self.calls.raised as e:
        self._raised(wid, e)
    self._check_timeouts()
    return out

  def resubmit_due(self, theta_ref, step: int, done: list[int]) -> None:
    """Resubmits finished workers and down workers whose backoff is over."""
    now = self.clock()
    for wid in done + self.errored:
      self.submit(wid, theta_ref, step)
    self.errored = []
    for wid, t in list(self.retry_at.items()):
      if t <= now:
        del self.retry_at[wid]
        self.submit(wid, theta_ref, step)

  def cancel(self) -> None:
    for ref in self.pending:
      self.calls.cancel(ref)

  def _failed(self, wid: int, err: Exception) -> None:
    now = self.clock()
    if wid not in self.down_since:
      self.down_since[wid] = now
      self.downs[wid] += 1
      self.counters.worker_failures += 1
      print(f"learner: worker {wid} failed ({type(err).__name__}); Ray "
            "restarts it and it pulls theta again", flush=True)
    down_for = now - self.down_since[wid]
    if ((self.max_failures and self.downs[wid] > self.max_failures) or
        down_for > self.down_limit_s):
      print(f"learner: dropping worker {wid} (down {self.downs[wid]} times, "
            f"this time for {down_for:.0f}s)", flush=True)
      return
    self.retries[wid] += 1
    self.retry_at[wid] = now + min(10.0, 0.25 * 2 ** self.retries[wid])

  def _raised(self, wid: int, err: Exception) -> None:
    """A Python/XLA exception inside compute(): count it and go on."""
    self.counters.worker_errors += 1
    self.errors_in_row[wid] += 1
    print(f"learner: worker {wid} raised {error_summary(err)}; its task "
          "group is resampled and it carries on", flush=True)
    if self.errors_in_row[wid] > self.max_errors_in_row:
      print(f"learner: dropping worker {wid}: {self.errors_in_row[wid]} "
            "calls in a row raised", flush=True)
      return
    self.errored.append(wid)

  def _check_timeouts(self) -> None:
    if not self.call_timeout_s:
      return
    now = self.clock()
    for ref, (wid, t_sub) in list(self.pending.items()):
      if now - t_sub > self.call_timeout_s:
        self.counters.worker_timeouts += 1
        print(f"learner: worker {wid} has not answered in {now - t_sub:.0f}s "
              f"(worker.call_timeout_s={self.call_timeout_s:g}); killing it "
              "so that Ray restarts it", flush=True)
        self.calls.kill(self.workers[wid])
        self.pending[ref] = (wid, float("inf"))


def error_summary(err: Exception) -> str:
  """The remote exception's type and message: its traceback's last line."""
  cause = getattr(err, "cause", None)
  if cause is not None:
    return f"{type(cause).__name__}: {cause}"
  lines = [l for l in str(err).strip().splitlines() if l.strip()]
  return lines[-1].strip() if lines else type(err).__name__


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
        wait_timeout_s: float = 1.0, call_timeout_s: float = 0.0,
        max_failures: int = 0, calls=None) -> LearnerState:
  """Runs the asynchronous learner loop until ``state.step == steps``.

  Args:
    state: theta, meta-optimizer state, step and counters (updated in place).
    workers: Ray actor handles of ``UnrollWorker`` (or the workers
      themselves, with ``calls=LocalCalls()``).
    opt: the meta-optimizer.
    steps: the target learner step (absolute, so resumed runs continue).
    max_staleness: see ``GradientAggregator``.
    batch_size: grads per update.
    on_step: called after each update with (state, metrics), for logging
      and checkpointing.
    should_stop: polled between waits; True ends the loop early.
    wait_timeout_s: ``ray.wait`` timeout, bounds the stop latency.
    call_timeout_s: a ``compute`` call pending longer than this is taken as
      a stalled worker: the actor is killed so that Ray restarts it (0: wait
      forever). Set it well above the first call's compile time.
    max_failures: a worker that went down more than this many times is
      dropped for good (0: never); with no workers left, RuntimeError.
    calls: how workers are called: ``RayCalls()`` (the default) or
      ``LocalCalls()``.
  """
  calls = calls if calls is not None else RayCalls()
  agg = GradientAggregator(max_staleness, batch_size)
  base = dict(state.counters)  # counters restored from a checkpoint
  apply = make_apply(opt)

  def sync_counters():
    for k, v in dataclasses.asdict(agg.counters).items():
      state.counters[k] = base.get(k, 0) + v

  theta_ref = calls.put(state.theta)
  pool = WorkerPool(workers, agg.counters, call_timeout_s=call_timeout_s,
                    max_failures=max_failures, calls=calls)
  pool.resubmit_due(theta_ref, state.step, list(range(len(workers))))
  t_last = time.perf_counter()
  while state.step < steps and not should_stop():
    done = []
    for wid, mg in pool.wait(wait_timeout_s):
      agg.offer(mg, state.step)
      done.append(wid)
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
      theta_ref = calls.put(state.theta)
      now = time.perf_counter()
      metrics.update(grad_norm=float(gnorm),
                     task_steps_per_s=metrics["task_steps"] / max(
                         now - t_last, 1e-9))
      t_last = now
      sync_counters()
      on_step(state, metrics)
    pool.resubmit_due(theta_ref, state.step, done)
  sync_counters()
  pool.cancel()
  return state
