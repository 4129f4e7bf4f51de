"""The best fully evaluated checkpoint of a run, from its evaluator records.

``BestCheckpoint`` is the ``pick`` the trainer gives
``checkpoint_pin.keep_best`` at each save, so retention keeps the best step
(``workdir/best_checkpoint.json``), and the rule ``lopt export --best``
applies: the lowest selection score (``records.selection_score``: the
geometric-mean ratio to the best tuned baseline, untuned and, where the
suite sweeps the learned rate, tuned; ``records.best_step``). With the suite of the evaluators that run beside
training, a step counts only once every run of that suite is recorded for
it (all shards done); without one, once every task it has records of is.
"""

from __future__ import annotations

import math
import os
from typing import Any

from evaluators import records, suites
from metatrain.distributed.workdir import Workdir


class BestCheckpoint:
  """Chooses a run's best checkpoint; re-reads the records only when they
  change."""

  def __init__(self, workdir: str, suite: str | None = None,
               overrides: list[str] | tuple[str, ...] = ()):
    """Reads ``workdir``'s records; ``suite`` (a preset name, with
    ``overrides``) is the one every step must be fully evaluated on."""
    self.path = Workdir(workdir).records
    self.suite, self.overrides = suite, list(overrides)
    self.runs = (suites.load(suite, self.overrides).runs()
                 if suite is not None else None)
    self._seen: tuple | None = None
    self._found: tuple[int, dict[str, Any]] | None = None

  @classmethod
  def from_pin(cls, workdir: str, pin: dict[str, Any] | None
               ) -> BestCheckpoint:
    """The rule the trainer used for its pin (``Checkpointer.protected``);
    the plain one without a pin, or if its suite no longer loads."""
    info = (pin or {}).get("info") or {}
    if info.get("suite") is not None:
      try:
        return cls(workdir, info["suite"], info.get("overrides") or ())
      except ValueError:  # a preset renamed or removed since
        pass
    return cls(workdir)

  def __call__(self, steps: list[int]) -> tuple[int, dict[str, Any]] | None:
    """``(step, info)`` of the best fully evaluated one of ``steps`` (info
    is JSON-safe: score, suite), or None."""
    try:
      st = os.stat(self.path)
    except FileNotFoundError:
      return None
    seen = (st.st_mtime_ns, st.st_size, tuple(steps))
    if seen != self._seen:
      found = records.best_step(records.read(self.path), steps, self.runs)
      self._found = None if found is None else (found[0], self._info(*found))
      self._seen = seen
    return self._found

  def _info(self, step: int, s: dict[str, Any]) -> dict[str, Any]:
    def num(v):
      return v if v is not None and math.isfinite(v) else None
    return {"source": f"step:{step}", "suite": self.suite,
            "overrides": self.overrides,
            "selection": num(s["selection"]),
            "geomean_ratio": num(s["geomean_ratio"]),
            "geomean_tuned": num(s["geomean_tuned"]),
            "geomean_default": num(s["geomean_default"]),
            "tasks": s["tasks"], "tasks_won": s["wins"],
            "tasks_won_tuned": s["wins_tuned"],
            "geomean_tuned_adam": num(s["geomean_tuned_adam"]),
            "tasks_won_tuned_adam": s["wins_tuned_adam"],
            "tasks_diverged": s["diverged"]}
