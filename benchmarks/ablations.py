"""The paper's ablation study: switch off one feature, meta-train, compare.

Usage:
  python benchmarks/ablations.py [--minutes 4] [--variants a,b,...]
      [--set k=v ...] [--seeds 4] [--holdout 12] [--workdir DIR]

Each variant of the HRNN (the full optimizer, then each feature switched off
in turn: the tensor and global RNNs (the hierarchy), the global RNN alone,
the multiple timescales, dynamic input scaling, the gradient shortcut; and
attention switched on, since it is off by default) is meta-trained in this
process for the same wall-clock budget, from the same seed and the same
training config, then evaluated on the held-out ensemble tasks through the
evaluators, against Adam tuned per task (the baselines' cache is shared, so
Adam runs once). A diverged run is a loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from evaluators import records, suites, watch  # noqa: E402
from metatrain.training import config as config_lib
from metatrain.training import local_train

VARIANTS = {
    "full": {},
    "no_hierarchy": {"use_tensor_rnn": False, "use_global_rnn": False},
    "no_global_rnn": {"use_global_rnn": False},
    "one_timescale": {"num_timescales": 1},
    "no_input_scaling": {"dynamic_input_scaling": False},
    "no_shortcut": {"use_gradient_shortcut": False},
    "attention_on": {"use_attention": True},
    "paper_start": {"nominal_adam": False},
}


def evaluate(workdir, suite, hcfg, theta, name):
  """Held-out rows of ``theta`` (saved as a .lopt, the evaluators' path)."""
  src, recs = watch.evaluate_theta(workdir, suite, hcfg, theta, name,
                                   {"benchmark": "ablations", "variant": name},
                                   log=lambda m: None)
  return records.summarize(recs, src.id)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=4.0,
                  help="meta-training budget per variant")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--holdout", type=int, default=12)
  ap.add_argument("--inner-steps", type=int, default=200)
  ap.add_argument("--workdir", default="/tmp/lopt-ablations")
  args = ap.parse_args(argv)
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    print(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}",
          file=sys.stderr)
    return 2
  base = config_lib.load(args.config, args.set)
  tasks_ = [f"heldout:{i}" for i in range(args.holdout)]
  suite = suites.load("heldout", [f"tasks={json.dumps(tasks_)}",
                                  f"seeds={args.seeds}",
                                  f"steps={args.inner_steps}",
                                  'baselines=["adam"]'])
  os.makedirs(args.workdir, exist_ok=True)
  results = []
  for name in names:
    hcfg = dataclasses.replace(base.hrnn, **VARIANTS[name])
    cfg = dataclasses.replace(base, hrnn=hcfg)
    t0 = time.time()
    trainer = local_train.train(cfg, steps=10**9,
                                time_budget_s=args.minutes * 60,
                                log=lambda m: None)
    train_s = time.time() - t0
    rows = evaluate(args.workdir, suite, hcfg, trainer.theta, name)
    s = records.score(rows)
    objective = np.mean([np.inf if r["learned_metric"] is None
                         else r["learned_metric"] for r in rows])
    res = {"variant": name, "meta_steps": trainer.step,
           "train_min": train_s / 60, "objective": float(objective),
           "geomean": s["geomean_ratio"], "wins": s["wins"],
           "tasks": s["tasks"], "diverged": s["diverged"]}
    results.append(res)
    print(json.dumps(res), flush=True)
  print(f"\n| variant | meta-steps in {args.minutes:g} min | held-out "
        "meta-objective | final loss / Adam* (geomean) | wins vs Adam* | "
        "diverged |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in results:
    geo = "inf" if r["geomean"] is None or not np.isfinite(r["geomean"]) \
        else f"{r['geomean']:.3g}"
    print(f"| {r['variant']} | {r['meta_steps']} | {r['objective']:+.4f} | "
          f"{geo} | {r['wins']}/{r['tasks']} | {r['diverged']} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
