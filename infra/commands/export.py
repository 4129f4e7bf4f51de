"""``lopt export``: a checkpoint as a single ``.lopt`` file, with provenance.

``--step N`` exports that checkpoint, ``--best`` the one with the best
evaluator score (the lowest geometric mean over tasks of the learned
optimizer's final loss over the best tuned baseline's; a diverged task
makes it infinite) among the fully evaluated checkpoints on disk: the one
the trainer keeps as the best whatever the retention
(``workdir/best_checkpoint.json``), unless a better one was evaluated after
its last save. Neither: the newest. The file's metadata records the
training config, the step, the meta-training time, command and hardware
(``run_info.json``) and the evaluation summary of that step.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from evaluators import best as best_lib
from evaluators import records
from metatrain.distributed import checkpoints
from metatrain.distributed.workdir import Workdir
from metatrain.optimizer import export
from metatrain.optimizer.hrnn_config import HRNNConfig


class ExportError(ValueError):
  """Bad input; the message names the fix."""


def _records(workdir: str) -> list[dict[str, Any]]:
  return records.read(Workdir(workdir).records)


def evaluation_summary(recs: list[dict[str, Any]], step: int
                       ) -> dict[str, Any] | None:
  """JSON-safe evaluator summary of checkpoint ``step`` (None: none)."""
  rows = records.summarize(recs, f"step:{step}")
  if not rows:
    return None

  def num(x):
    return None if x is None or not math.isfinite(x) else float(x)

  suite = next((r.get("suite") for r in recs
                if r["source"] == f"step:{step}"), None)
  s = records.score(rows)
  return {
      "suite": suite, "geomean_ratio_to_best_baseline": num(
          s["geomean_ratio"]), "tasks_won": s["wins"], "tasks": s["tasks"],
      "geomean_tuned_to_best_baseline": num(s["geomean_tuned"]),
      "tasks_won_tuned": s["wins_tuned"],
      "geomean_default_to_adam_1e-3": num(s["geomean_default"]),
      "tasks_won_default": s["wins_default"],
      "geomean_tuned_to_tuned_adam": num(s["geomean_tuned_adam"]),
      "tasks_won_tuned_adam": s["wins_tuned_adam"],
      "selection": num(s["selection"]),
      "tasks_diverged": s["diverged"], "complete": s["complete"],
      "per_task": [{"task": r["task"], "learned_final_loss": num(r["learned"]),
                    "learned_tuned_final_loss": num(r["learned_tuned"]),
                    "learned_tuned_lr": r["learned_lr"],
                    "adam_1e-3_final_loss": num(r["adam_default"]),
                    "best_baseline": r["best"],
                    "best_baseline_lr": (r["baselines"][r["best"]][1]
                                         if r["best"] else None),
                    "best_baseline_final_loss": num(r["best_loss"]),
                    "ratio": num(r["ratio"]), "winner": r["winner"],
                    "ratio_tuned": num(r["ratio_tuned"]),
                    "ratio_default": num(r["ratio_default"])}
                   for r in rows]}


def best_step(workdir: str, steps: list[int],
              pin: dict[str, Any] | None = None) -> tuple[int, dict]:
  """The evaluated checkpoint (still on disk) with the best score.

  The rule is the trainer's (``evaluators.best``, with the suite named in
  its ``pin``), so this is the step retention keeps as the best, or a
  better one evaluated since its last save. If the records show no fully
  evaluated step, the pinned step (if on disk) is the answer.
  """
  found = best_lib.BestCheckpoint.from_pin(workdir, pin)(steps)
  if found is not None:
    step = found[0]
  elif pin is not None and pin["step"] in steps:
    step = pin["step"]
  else:
    raise ExportError(
        f"--best: no checkpoint on disk in {workdir}/checkpoints has a "
        "complete evaluation; run `lopt evaluate --workdir "
        f"{workdir} --once` first, or export with --step N")
  return step, records.score(records.summarize(_records(workdir),
                                               f"step:{step}"))


def export_checkpoint(workdir: str, out: str, step: int | None = None,
                      best: bool = False) -> dict[str, Any]:
  """Writes checkpoint ``step`` (or the best/newest) to ``out``; returns
  the metadata written."""
  if not os.path.isdir(workdir):
    raise ExportError(f"workdir {workdir} does not exist")
  export.check_destination(out)  # before reading any checkpoint
  ck = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    steps = ck.all_steps()
    if not steps:
      raise ExportError(f"no complete checkpoint in {workdir}/checkpoints "
                        f"yet: train with `lopt train --workdir {workdir}`")
    pin = ck.protected()
    if best:
      step, _ = best_step(workdir, steps, pin)
    elif step is None:
      step = steps[-1]
    elif step not in steps:
      raise ExportError(f"no checkpoint at step {step} in {workdir}/"
                        f"checkpoints (complete steps: {steps})")
    train_cfg, theta = ck.restore_lopt(step)
    counters = ck.restore_meta(step)["counters"]
  finally:
    ck.close()
  info = _run_info(workdir)
  meta = {
      "source": {"workdir": os.path.abspath(workdir), "step": step,
                 "selected_by": "best evaluator score" if best else (
                     "newest" if step == steps[-1] else "--step"),
                 "kept_as_best": pin is not None and pin["step"] == step},
      "train_config": train_cfg,
      "meta_training": {
          "steps": step, "seconds": counters.get("train_seconds"),
          "cpu_seconds": counters.get("train_cpu_seconds"),
          "task_steps": counters.get("task_steps"),
          "sessions": info.get("sessions", [])},
      "evaluation": evaluation_summary(_records(workdir), step),
      "lopt_version": _version(),
  }
  export.save_optimizer(out, HRNNConfig.from_dict(train_cfg["hrnn"]), theta,
                        meta)
  return meta


def _run_info(workdir: str) -> dict[str, Any]:
  try:
    with open(Workdir(workdir).run_info) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _version() -> str:
  import metatrain  # pylint: disable=import-outside-toplevel
  return metatrain.__version__


def inspect(path: str) -> str:
  """A readable description of an optimizer file (ValueError if bad)."""
  config, theta, meta = export.read_optimizer(path)
  from metatrain.optimizer import hrnn
  lines = [f"{path}: lopt optimizer file, format version {export.VERSION}",
           f"meta-parameters: {hrnn.num_meta_params(theta):,}",
           "config: " + json.dumps(config.to_dict(), sort_keys=True),
           "metadata:", json.dumps(meta, indent=2, sort_keys=True)]
  return "\n".join(lines)
