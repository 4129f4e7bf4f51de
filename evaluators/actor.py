"""Evaluators as Ray actors beside meta-training (``lopt train --evaluators N``).

Each ``EvaluatorActor`` runs ``Evaluator.follow`` on its shard of the suite
(evaluator i of n takes every n-th run). The ``EvaluatorPool`` in the
launcher keeps one ``run`` call in flight per actor and polls them without
blocking the learner: an exception inside ``run`` (a ``RayTaskError``) or a
lost actor is counted, logged with the traceback's last line, and the call
is resubmitted; it never ends the training run. At the end of training the
pool asks every actor to finish the final checkpoint and waits for it, up to
a timeout.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from metatrain.distributed.learner import error_summary


class EvaluatorActor:
  """Wrap with ``ray.remote(max_concurrency=2)``: ``finish``/``stop`` must
  run while ``run`` is busy."""

  def __init__(self, workdir: str, suite: str, overrides: list[str],
               index: int, count: int, nice: int = 0):
    if nice > 0:  # below training's priority: CPU only when it leaves some
      os.nice(nice)
    self.args = (workdir, suite, list(overrides), index, count)
    self.final_step: int | None = None
    self.stop_event = threading.Event()

  def run(self, poll_s: float) -> dict[str, int]:
    """Follows the checkpoints until ``finish``'s step is evaluated or
    ``stop`` is called; returns the evaluator's counters."""
    from evaluators import suites, watch  # pylint: disable=import-outside-toplevel
    workdir, suite, overrides, index, count = self.args
    ev = watch.Evaluator(
        workdir, suites.load(suite, overrides), shard=(index, count),
        log=lambda m: print(f"evaluator {index}: {m}", flush=True),
        should_stop=self.stop_event.is_set)
    try:
      return ev.follow(poll_s=poll_s, until_step=lambda: self.final_step)
    finally:
      ev.close()

  def finish(self, step: int) -> None:
    self.final_step = step

  def stop(self) -> None:
    self.stop_event.set()

  def pid(self) -> int:
    return os.getpid()


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class EvaluatorPool:
  """Starts and supervises evaluator actors from the training driver."""

  def __init__(self, workdir: str, suite: str, overrides: list[str],
               count: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0,
               poll_s: float = 30.0, nice: int = 10,
               actor_cls: type = EvaluatorActor):
    import ray  # pylint: disable=import-outside-toplevel
    self.poll_s = poll_s
    self.counters = {"evaluator_errors": 0, "evaluator_failures": 0}
    opts: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": -1,
                            "max_task_retries": 0, "max_concurrency": 2}
    if num_gpus:
      opts["num_gpus"] = num_gpus
    cls = ray.remote(actor_cls).options(**opts)
    workdir = os.path.abspath(workdir)
    self.actors = [cls.remote(workdir, suite, overrides, i, count, nice)
                   for i in range(count)]
    self.pending: dict[Any, int] = {}
    self.retry_at: dict[int, float] = {}
    self.finished: set[int] = set()
    self.final_step: int | None = None
    for i in range(count):
      self._submit(i)

  def _submit(self, i: int) -> None:
    if self.final_step is not None:
      self.actors[i].finish.remote(self.final_step)
    self.pending[self.actors[i].run.remote(self.poll_s)] = i

  def poll(self, timeout: float = 0.0) -> None:
    """Collects finished calls; resubmits failed ones (never raises)."""
    import ray  # pylint: disable=import-outside-toplevel
    now = time.monotonic()
    for i, t in list(self.retry_at.items()):
      if t <= now:
        del self.retry_at[i]
        self._submit(i)
    if not self.pending:
      return
    ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending),
                        timeout=timeout)
    for ref in ready:
      i = self.pending.pop(ref)
      try:
        counters = ray.get(ref)
      except (ray.exceptions.RayActorError,
              ray.exceptions.ActorUnavailableError) as e:
        self.counters["evaluator_failures"] += 1
        _log(f"evaluators: evaluator {i} was lost ({type(e).__name__}); "
             "Ray restarts it and it resumes from the records")
        self.retry_at[i] = time.monotonic() + 5.0
        continue
      except ray.exceptions.RayTaskError as e:
        self.counters["evaluator_errors"] += 1
        _log(f"evaluators: evaluator {i} raised {error_summary(e)}; "
             "restarting its loop (training goes on)")
        self.retry_at[i] = time.monotonic() + 5.0
        continue
      if self.final_step is None:  # returned early: keep it following
        self._submit(i)
      else:
        self.finished.add(i)
        _log(f"evaluators: evaluator {i} done ({counters})")

  def finish(self, step: int, timeout_s: float,
             should_stop=lambda: False) -> bool:
    """Has every evaluator finish checkpoint ``step``; True if all did
    within ``timeout_s`` (False also when ``should_stop()`` turns True)."""
    self.final_step = step
    for a in self.actors:
      a.finish.remote(step)
    t_end = time.monotonic() + timeout_s
    _log(f"evaluators: finishing the evaluation of step {step} (up to "
         f"{timeout_s:.0f}s; records in eval/records.jsonl)")
    while len(self.finished) < len(self.actors):
      if time.monotonic() > t_end or should_stop():
        _log("evaluators: stopped before the end; `lopt evaluate --once "
             "--workdir W` finishes the final checkpoint")
        return False
      self.poll(timeout=1.0)
    return True

  def shutdown(self) -> None:
    import ray  # pylint: disable=import-outside-toplevel
    for a in self.actors:
      try:
        a.stop.remote()
      except Exception:  # pylint: disable=broad-except
        pass
    for a in self.actors:
      ray.kill(a, no_restart=True)
