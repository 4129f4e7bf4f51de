"""Chooses the optimizer to ship, on validation tasks, and writes it.

Usage:
  python benchmarks/ship_pretrained.py --workdir W [--workdir W2 ...]
      [--name hrnn-v1] [--steps 1000] [--seeds 4] [--note TEXT]
      [--select-dir DIR] [--only-steps 50,150] [--dry-run]

Candidates: every complete checkpoint of every ``--workdir`` and the
untrained start of the default config (the nominal-Adam start: Adam at
1e-3). Each is evaluated through the evaluators on the ``validation`` suite
(12 validation configurations of the task ensemble: neither trained on nor
test tasks) for ``--steps`` inner steps, a longer horizon than meta-training's
truncations and than the suite's default 200, since a learned optimizer that
wins early and grows its steps late must not be picked. The one with the
lowest geometric mean over tasks of (mean final loss / the best tuned
baseline's), at the candidate's default rate and at its rate tuned per
task over the suite's grid (``records.selection_score``: the geometric mean
of the two), wins; a diverged task makes a candidate's score infinite. The
winner is written to ``metatrain/pretrained/NAME.lopt``; its metadata is
``lopt export``'s (training config, command, hardware, meta-training time)
plus the selection (rule, every candidate's score) and ``--note``. If the
untrained start wins, it is shipped, and the metadata says so.

Each candidate's line also gives two figures that do not enter the
selection: its tuned rate against Adam alone tuned per task (issue 23's
target), and its tuned loss against the untrained start's, paired per task
with a standard error: the start is Adam, so a gain within two standard
errors is the evaluation's noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from evaluators import records, suites, watch  # noqa: E402
from infra.commands import export as export_cmd  # noqa: E402
from metatrain.distributed import checkpoints
from metatrain.optimizer import export, hrnn


def _g(v) -> str:
  return "diverged" if v is None or not math.isfinite(v) else f"{v:.4g}"


def _score(select_dir, suite, source):
  recs = [r for r in watch.evaluate_once(select_dir, suite, source)
          if r["steps"] == suite.steps]
  rows = records.summarize(recs, source.id)
  return records.score(rows), rows


def paired_vs_start(tuned: dict, start: dict) -> dict:
  """A candidate's tuned final loss over the untrained start's, per task.

  The start is Adam: this is the candidate's gain over Adam with the same
  rate search, and its spread over tasks is the evaluation's noise (the
  start against tuned Adam itself differs by up to ~10% on a task,
  benchmarks/README.md). ``z`` is the mean log-ratio over its standard
  error (negative: better than the start); |z| < 2 is noise.
  """
  if any(math.isinf(tuned.get(t, 0.0)) for t in start):  # diverged: loses
    return {"geomean": math.inf, "wins": 0, "z": math.nan}
  logs = [math.log(tuned[t] / start[t]) for t in start
          if t in tuned and 0 < tuned[t] and 0 < start[t] < math.inf]
  n = len(logs)
  if n < 2 or n < len(start):  # incomplete (no sweep) or solved to 0
    return {"geomean": None, "wins": 0, "z": math.nan}
  mean = sum(logs) / n
  sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
  return {"geomean": math.exp(mean),
          "wins": sum(x < math.log(1 - records.TIE) for x in logs),
          "z": 0.0 if sd == 0 else mean / (sd / math.sqrt(n))}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", action="append", default=[])
  ap.add_argument("--name", default="hrnn-v1")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--note", default="")
  ap.add_argument("--select-dir", default="/tmp/lopt-ship-select")
  ap.add_argument("--only-steps", default="",
                  help="comma-separated meta-steps: score only these "
                       "checkpoints of each workdir (default: all)")
  ap.add_argument("--candidate-file", action="append", default=[],
                  help="also score this exported .lopt file (e.g. the "
                  "shipped optimizer, as the bar to beat)")
  ap.add_argument("--choose-default-rate", action="store_true",
                  help="ship each candidate with the rate of its validation "
                  "sweep that is best as one rate for every task as its "
                  "default (config.init_lr), and score its untuned "
                  "comparison at that rate")
  ap.add_argument("--dry-run", action="store_true",
                  help="score the candidates, write nothing")
  args = ap.parse_args(argv)
  try:
    only = {int(x) for x in args.only_steps.split(",") if x.strip()}
  except ValueError:
    ap.error(f"--only-steps must be comma-separated integers, got "
             f"{args.only_steps!r}")
  suite = suites.load("validation", [f"steps={args.steps}",
                                     f"seeds={args.seeds}",
                                     f"chunk={min(args.steps, 500)}"])
  os.makedirs(args.select_dir, exist_ok=True)
  start_cfg = hrnn.HRNNConfig()
  start_path = os.path.join(args.select_dir, "untrained-start.lopt")
  export.save_optimizer(start_path, start_cfg,
                        hrnn.init_theta(jax.random.PRNGKey(0), start_cfg),
                        {"name": "untrained nominal-Adam start"})
  cands = [("start", None, None, watch.file_source(start_path))]
  for path in args.candidate_file:
    cands.append((os.path.basename(path), None, None,
                  watch.file_source(path)))
  for wd in args.workdir:
    with checkpoints.Checkpointer(wd, read_only=True) as ck:
      steps = ck.all_steps()
    if only:
      steps = [s for s in steps if s in only]
    for step in steps:
      src = watch.checkpoint_source(wd, step)
      # Ids must be unique across workdirs in one records file.
      run = os.path.basename(os.path.normpath(wd))
      src = dataclasses.replace(src, id=f"{run}:{step}")
      cands.append((f"{run}@{step}", wd, step, src))
  scored = []

  def num(v):
    return v if v is not None and math.isfinite(v) else None

  start_tuned = None
  for label, wd, step, src in cands:
    s, rows = _score(args.select_dir, suite, src)
    tuned = {r["task"]: r["learned_tuned"] for r in rows}
    if start_tuned is None:
      start_tuned = tuned
    paired = paired_vs_start(tuned, start_tuned)
    if args.choose_default_rate:
      # The default rate is chosen on these validation runs, as Adam's
      # 1e-3 was by its authors: the grid rate that is best as one rate for
      # every task. The untuned comparison and the score then use it.
      prof = records.rate_profile(
          records.read(os.path.join(args.select_dir, "eval",
                                    "records.jsonl")), src.id)
      geo = {lr: records.geomean(v) for lr, v in prof.items()}
      if geo:
        rate = min(geo, key=geo.get)
        wins = sum(x < 1 - records.TIE for x in prof[rate])
        s = dict(s, default_rate=rate, geomean_ratio=geo[rate], wins=wins,
                 selection=records.selection_score(
                     dict(s, geomean_ratio=geo[rate])))
        print(f"{label}: default rate {rate:g} (validation geomean ratio "
              "by rate: " + ", ".join(f"{k:g} {_g(v)}"
                                      for k, v in geo.items()) + ")")
    scored.append({"candidate": label, "selection": num(s["selection"]),
                   "default_rate": s.get("default_rate"),
                   "geomean_ratio": num(s["geomean_ratio"]),
                   "geomean_tuned": num(s["geomean_tuned"]),
                   "geomean_default": num(s["geomean_default"]),
                   "wins": s["wins"], "wins_tuned": s["wins_tuned"],
                   "wins_default": s["wins_default"], "tasks": s["tasks"],
                   "geomean_tuned_adam": num(s["geomean_tuned_adam"]),
                   "wins_tuned_adam": s["wins_tuned_adam"],
                   "unbracketed": s.get("unbracketed", {}),
                   "tuned_vs_start": {k: num(v) if isinstance(v, float) else v
                                      for k, v in paired.items()},
                   "diverged": s["diverged"]})
    n = s["tasks"]
    print(f"{label}: selection {_g(s['selection'])}; untuned vs tuned "
          f"{_g(s['geomean_ratio'])} ({s['wins']}/{n} wins), tuned vs tuned "
          f"{_g(s['geomean_tuned'])} ({s['wins_tuned']}/{n}), default vs "
          f"default {_g(s['geomean_default'])} ({s['wins_default']}/{n}); "
          f"diverged {s['diverged']}", flush=True)
    print(f"{label}: tuned vs tuned Adam {_g(s['geomean_tuned_adam'])} "
          f"({s['wins_tuned_adam']}/{n}); tuned vs the start's tuned, "
          f"paired {_g(paired['geomean'])} ({paired['wins']}/{n} wins, "
          f"{paired['z']:+.1f} standard errors)", flush=True)
    note = records.unbracketed_note(s)
    if note:
      print(f"{label}: {note}", flush=True)
  best = min(range(len(cands)), key=lambda i: (
      math.inf if scored[i]["selection"] is None
      else scored[i]["selection"]))
  label, wd, step, src = cands[best]
  print(f"chosen: {label}")
  if args.dry_run:
    return 0
  out = os.path.join(ROOT, "metatrain", "pretrained", f"{args.name}.lopt")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = out + ".tmp"
  if wd is None:
    meta = {"source": {"untrained": True},
            "train_config": None, "meta_training": None, "evaluation": None}
    config, theta = start_cfg, export.read_optimizer(start_path)[1]
  else:
    meta = export_cmd.export_checkpoint(wd, tmp, step=step)
    config, theta, _ = export.read_optimizer(tmp)
  rate = scored[best].get("default_rate")
  if rate is not None:  # its default: the rate chosen on validation
    config = dataclasses.replace(config, init_lr=rate)
  meta.update(name=args.name, note=args.note, selection={
      "split": "validation", "suite": "validation", "inner_steps": args.steps,
      "seeds": args.seeds,
      "rule": ("lowest selection score (evaluators.records."
               "selection_score): the geometric mean of two geometric "
               "means over the validation tasks of the mean final loss "
               "over the best tuned baseline's (Adam, RMSProp, SGD-M over "
               "7 learning rates each), the learned optimizer at its "
               "default rate and at its rate tuned over the same grid as "
               "Adam's; diverged = inf"),
      "chosen": label, "candidates": scored,
      "default_rate": ("chosen on these validation runs: the rate of the "
                       "learned-rate grid with the lowest geometric-mean "
                       f"ratio as one rate for every task, {rate:g}"
                       if rate is not None else "as meta-trained")})
  export.save_optimizer(tmp, config, theta, json.loads(json.dumps(meta)))
  os.replace(tmp, out)
  print(f"shipped {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
