"""``Workdir``: the names of a run directory's files, in one place.

``lopt train`` writes ``config.json``, ``run_info.json`` (one entry per
session), ``workers.json``, ``counters.json`` (at the end of a session),
``checkpoints/``, ``best_checkpoint.json`` (the step retention keeps as the
best), ``tb/`` (TensorBoard; the evaluators' under ``tb/eval``),
``lopt.log`` and the ``train.lock``; the evaluators write ``eval/``
(``records.jsonl``, ``baselines/``).
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A run directory; each property is the path of one of its files."""

  path: str

  def _join(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  @property
  def config(self) -> str:
    return self._join("config.json")

  @property
  def run_info(self) -> str:
    return self._join("run_info.json")

  @property
  def workers(self) -> str:
    return self._join("workers.json")

  @property
  def counters(self) -> str:
    return self._join("counters.json")

  @property
  def checkpoints(self) -> str:
    return self._join("checkpoints")

  @property
  def best_checkpoint(self) -> str:
    return self._join("best_checkpoint.json")

  @property
  def tb(self) -> str:
    return self._join("tb")

  @property
  def tb_eval(self) -> str:
    return self._join("tb", "eval")

  @property
  def log(self) -> str:
    return self._join("lopt.log")

  @property
  def lock(self) -> str:
    return self._join("train.lock")

  @property
  def eval_dir(self) -> str:
    return self._join("eval")

  @property
  def records(self) -> str:
    return self._join("eval", "records.jsonl")

  @property
  def baselines(self) -> str:
    return self._join("eval", "baselines")
