"""Continuous evaluation: ``lopt evaluate``.

An ``Evaluator`` trains every task of a suite with the learned optimizer of
a *source* (a checkpoint step, read-only through Orbax, or a ``.lopt``
file) and with each baseline over its learning-rate grid, and appends one
record per (source, task, optimizer, hyperparameters, seed) to
``workdir/eval/records.jsonl``. Baseline results come from the on-disk
cache after their first run. Recorded units are skipped, so a restarted
evaluator finishes what is missing and never duplicates a record.

``follow`` polls ``workdir/checkpoints`` and evaluates the newest complete
step whenever it changes: each new checkpoint, or only the newest when the
evaluator is behind. With ``shard=(i, n)`` it takes every n-th unit, so n
evaluators split a suite between them.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import os
import socket
import sys
import time
import traceback
import warnings
from typing import Any, Callable

import numpy as np

from evaluators import baselines, problems, records, report
from evaluators.runner import Problem, run
from evaluators.suites import SuiteConfig
from metatrain.distributed import checkpoints
from metatrain.distributed.workdir import Workdir
from metatrain.optimizer import export
from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.training import programs


class NoCheckpointError(FileNotFoundError):
  """The workdir has no complete checkpoint to evaluate."""


@dataclasses.dataclass
class Source:
  """A learned optimizer to evaluate: a checkpoint step or a file."""

  id: str  # "step:<n>" or "file:<name>@<sha256 prefix>"
  step: int | None
  config: HRNNConfig
  theta: Any


def checkpoint_source(workdir: str, step: int | None = None) -> Source:
  """The ``lopt`` item of checkpoint ``step`` (default: newest), read-only."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # in-progress saves of the trainer
    ck = checkpoints.Checkpointer(workdir, read_only=True)
    try:
      step = ck.latest_step() if step is None else step
      if step is None:
        raise NoCheckpointError(
            f"no complete checkpoint in {ck.directory} yet: start `lopt "
            f"train --workdir {workdir}` or wait for its first save")
      cfg, theta = ck.restore_lopt(step)
    finally:
      ck.close()
  return Source(f"step:{step}", step, HRNNConfig.from_dict(cfg["hrnn"]),
                theta)


def file_source(path: str) -> Source:
  """An exported optimizer file (``.lopt``)."""
  config, theta, _ = export.read_optimizer(path)
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:12]
  return Source(f"file:{os.path.basename(path)}@{digest}", None, config,
                theta)


@dataclasses.dataclass(frozen=True)
class Unit:
  task: str
  optimizer: str  # "learned" or a baseline name
  lr: float | None
  seed: int


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


def _fmt(v: float | None) -> str:
  return "diverged" if v is None or not math.isfinite(v) else f"{v:.4g}"


class Evaluator:
  """Evaluates sources on a suite and appends records."""

  def __init__(self, workdir: str, suite: SuiteConfig, *,
               shard: tuple[int, int] = (0, 1),
               log: Callable[[str], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False,
               write_tensorboard: bool = True):
    if not 0 <= shard[0] < shard[1]:
      raise ValueError(f"bad shard {shard}: need 0 <= index < count")
    self.workdir, self.suite, self.shard = workdir, suite, shard
    programs.enable_persistent_cache("auto")  # shared with the trainers
    self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    self.should_stop = should_stop
    self.writer = records.RecordWriter(
        Workdir(workdir).records)
    self.cache = baselines.BaselineCache(workdir)
    self.counters = {"runs": 0, "cached": 0, "skipped": 0, "errors": 0}
    self.evaluated: str | None = None  # the source follow() evaluated last
    # Build every problem now: a missing dataset fails here, loudly.
    self.problems: dict[str, Problem] = {
        t: problems.build(t, **suite.problem_settings()) for t in suite.tasks}
    self._tb = None
    self._tb_done: set[str] = set()
    self.write_tensorboard = write_tensorboard and shard[0] == 0

  def units(self) -> list[Unit]:
    """This shard's units: per task, the baselines' grids, then learned."""
    out = [Unit(*r) for r in self.suite.runs()]
    return out[self.shard[0]::self.shard[1]]

  def _key(self, source: Source, u: Unit) -> str:
    p = self.problems[u.task]
    hp = {} if u.lr is None else {"learning_rate": u.lr}
    return records.record_key(source.id, problems.task_key(p), u.optimizer,
                              hp, u.seed, self.suite.steps)

  def pending(self, source: Source) -> list[Unit]:
    self.writer.refresh()
    return [u for u in self.units() if not self.writer.has(
        self._key(source, u))]

  def _run(self, u: Unit, source: Source) -> tuple[dict[str, Any], bool]:
    """(result JSON, cached) of one unit."""
    p, s = self.problems[u.task], self.suite
    kwargs = dict(steps=s.steps, seed=u.seed, chunk=s.chunk,
                  eval_every=s.eval_every,
                  divergence_factor=s.divergence_factor,
                  fast_compile=s.fast_compile)
    if u.optimizer == "learned":
      return run(p, baselines.learned(source.config, source.theta, u.lr),
                 **kwargs).to_json(), False
    ckey = self.cache.key(problems.task_key(p), u.optimizer, u.lr, u.seed,
                          s.steps)
    hit = self.cache.get(ckey)
    if hit is not None:
      return hit, True
    result = run(p, baselines.baseline(u.optimizer, u.lr), **kwargs).to_json()
    self.cache.put(ckey, result)
    return result, False

  def evaluate(self, source: Source) -> dict[str, int]:
    """Runs this shard's missing units for ``source``; returns counters."""
    todo = self.pending(source)
    total = len(self.units())
    self.log(f"evaluate {source.id}: suite {self.suite.name}, "
             f"{len(todo)} of {total} runs to do"
             + (f" (shard {self.shard[0] + 1}/{self.shard[1]})"
                if self.shard[1] > 1 else ""))
    self.counters["skipped"] += total - len(todo)
    for i, u in enumerate(todo):
      if self.should_stop():
        self.log("evaluator: stopping early; rerun to finish")
        break
      key = self._key(source, u)
      started = _now()
      t0 = time.perf_counter()
      try:
        result, cached = self._run(u, source)
      except Exception as e:  # pylint: disable=broad-except
        self.counters["errors"] += 1
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        self.log(f"  [{i + 1}/{len(todo)}] {u.task} {u.optimizer} seed "
                 f"{u.seed}: ERROR {last} (not recorded; retried next run)")
        continue
      p = self.problems[u.task]
      self.writer.append({
          "key": key, "source": source.id, "checkpoint_step": source.step,
          "suite": self.suite.name, "task": u.task,
          "task_key": problems.task_key(p), "metric": p.metric,
          "higher_is_better": p.higher_is_better,
          "optimizer": u.optimizer,
          "hparams": {} if u.lr is None else {"learning_rate": u.lr},
          "seed": u.seed, "cached": cached, "host": socket.gethostname(),
          "started": started, "finished": _now(), **result})
      self.counters["cached" if cached else "runs"] += 1
      metric = (result["metrics"] or {}).get(p.metric) if p.metric else None
      self.log(f"  [{i + 1}/{len(todo)}] {u.task} {u.optimizer}"
               + (f" lr {u.lr:g}" if u.lr is not None else "")
               + f" seed {u.seed}: final loss {_fmt(result['final_loss'])}"
               + (f" {p.metric} {_fmt(metric)}" if p.metric else "")
               + (" (cached)" if cached else
                  f" ({time.perf_counter() - t0:.1f}s)"))
    self.write_summaries()
    return dict(self.counters)

  def write_summaries(self) -> None:
    """TensorBoard scalars for every fully evaluated source (shard 0)."""
    if not self.write_tensorboard:
      return
    recs = records.read(self.writer.path)
    for src in records.sources(recs):
      if src in self._tb_done:
        continue
      want = set(self.suite.runs())
      mine = [r for r in recs if r["source"] == src and
              records.run_of(r) in want]
      if {records.run_of(r) for r in mine} != want:
        continue  # not fully evaluated on this suite (yet)
      rows = records.summarize(mine, src)
      step = next((r.get("checkpoint_step") for r in mine), None) or 0
      if self._tb is None:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self._tb = SummaryWriter(Workdir(self.workdir).tb_eval)
      for r in rows:
        t = r["task"].replace(":", "_")
        for name, v in (("learned_final_loss", r["learned"]),
                        ("learned_tuned_final_loss", r["learned_tuned"]),
                        ("best_baseline_final_loss", r["best_loss"]),
                        ("ratio_learned_to_best", r["ratio"]),
                        ("ratio_tuned_to_best", r["ratio_tuned"]),
                        ("ratio_default_to_adam", r["ratio_default"])):
          if math.isfinite(v):
            self._tb.add_scalar(f"eval/{t}/{name}", v, step)
        if r["learned_metric"] is not None:
          self._tb.add_scalar(f"eval/{t}/learned_{r['metric']}",
                              r["learned_metric"], step)
      sc = records.score(rows)
      ratios = np.array([r["ratio"] for r in rows], float)
      self._tb.add_scalar("eval/tasks_won", float(sc["wins"]), step)
      self._tb.add_scalar("eval/tasks_diverged",
                          float(np.sum(np.isinf(ratios))), step)
      for key in ("geomean_ratio", "geomean_tuned", "geomean_default",
                  "geomean_tuned_adam"):
        if sc[key] is not None and math.isfinite(sc[key]):
          self._tb.add_scalar(f"eval/{key}", sc[key], step)
      for key in ("wins_tuned", "wins_default", "wins_tuned_adam"):
        self._tb.add_scalar(f"eval/tasks_{key}", float(sc[key]), step)
      self._tb.flush()
      self._tb_done.add(src)

  def follow(self, *, once: bool = False, poll_s: float = 30.0,
             until_step: Callable[[], int | None] = lambda: None
             ) -> dict[str, int]:
    """Evaluates the newest checkpoint whenever it changes.

    Args:
      once: evaluate the newest complete checkpoint and return
        (NoCheckpointError if there is none; the ValueError of
        ``checkpoints`` if it cannot be read, e.g. corrupt). The source
        evaluated last is ``self.evaluated``.
      poll_s: seconds between polls.
      until_step: polled; once it returns a step, ``follow`` returns as soon
        as a checkpoint at or past that step is fully evaluated.
    """
    last, waiting_said = None, False
    while not self.should_stop():
      try:
        src = checkpoint_source(self.workdir)
      except NoCheckpointError:
        if once:
          raise
        if not waiting_said:
          self.log(f"evaluator: waiting for checkpoints in "
                   f"{self.workdir}/checkpoints")
          waiting_said = True
        src = None
      except ValueError as e:  # deleted by retention mid-read, or corrupt
        if once:
          raise
        self.log(f"evaluator: cannot read the newest checkpoint ({e}); "
                 "retrying at the next poll")
        src = None
      if src is not None and src.id != last:
        self.evaluated = src.id
        self.evaluate(src)
        if not self.pending(src):
          last = src.id
      if once:
        break
      target = until_step()
      if (target is not None and last is not None and
          int(last.split(":")[1]) >= target):
        break
      t_end = time.monotonic() + poll_s
      while time.monotonic() < t_end and not self.should_stop():
        time.sleep(min(1.0, poll_s))
    return dict(self.counters)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def evaluate_once(workdir: str, suite: SuiteConfig, source: Source, *,
                  log: Callable[[str], None] | None = None,
                  write_tensorboard: bool = False) -> list[dict[str, Any]]:
  """Evaluates ``source`` on ``suite`` once (what is recorded or cached is
  reused) and returns every record of ``workdir``; the benchmarks' path."""
  kw = {} if log is None else {"log": log}
  ev = Evaluator(workdir, suite, write_tensorboard=write_tensorboard, **kw)
  try:
    ev.evaluate(source)
  finally:
    ev.close()
  return records.read(Workdir(workdir).records)


def evaluate_theta(workdir: str, suite: SuiteConfig, config: HRNNConfig,
                   theta: Any, name: str, metadata: dict[str, Any], *,
                   log: Callable[[str], None] | None = None
                   ) -> tuple[Source, list[dict[str, Any]]]:
  """Saves ``theta`` as ``workdir/<name>.lopt`` and evaluates that file (the
  evaluators' own path); returns its source and every record."""
  path = os.path.join(workdir, f"{name}.lopt")
  export.save_optimizer(path, config, theta, metadata)
  source = file_source(path)
  return source, evaluate_once(workdir, suite, source, log=log)


def table(recs: list[dict[str, Any]], source: str) -> list[str]:
  """Plain-text comparison lines for one source: per task the learned
  optimizer at its default and tuned rates, Adam 1e-3, the best tuned
  baseline and the three comparisons' ratios; then their summaries."""
  rows = records.summarize(recs, source)
  lines = [f"{source}: learned vs tuned baselines (final loss; lower is "
           "better; diverged counts as a loss; a ratio below 0.999: the "
           "learned optimizer wins)",
           f"{'task':<24} {'learned':>10} {'learned* (lr)':>20} "
           f"{'adam 1e-3':>10} {'best baseline':>22} {'default':>8} "
           f"{'tuned':>8} {'untuned':>8}"]
  for r in rows:
    best = (f"{_fmt(r['best_loss'])} {r['best']} "
            f"{r['baselines'][r['best']][1]:g}" if r["best"] else "-")
    tuned = (f"{_fmt(r['learned_tuned'])} ({r['learned_lr']:g})"
             if r["learned_lr"] is not None else "-")
    lines.append(f"{r['task'][:24]:<24} {_fmt(r['learned']):>10} "
                 f"{tuned:>20} {_fmt(r['adam_default']):>10} {best:>22} "
                 f"{_fmt(r['ratio_default']):>8} {_fmt(r['ratio_tuned']):>8} "
                 f"{_fmt(r['ratio']):>8}")
  return lines + report.summary_lines(records.score(rows))
