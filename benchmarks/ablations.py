"""The paper's ablation study: switch off one feature, meta-train, compare.

Usage:
  python benchmarks/ablations.py [--minutes 20] [--variants a,b,...]
      [--config NAME] [--set k=v ...] [--meta-seeds 2] [--seeds 4]
      [--holdout 12] [--workdir DIR]

Each variant of the HRNN (the full optimizer, then each feature switched off
in turn: the tensor and global RNNs (the hierarchy), the global RNN alone,
the multiple timescales, dynamic input scaling, the gradient shortcut; and
attention switched on, since it is off by default) is meta-trained in this
process for the same wall-clock budget, once per meta-training seed, from
the same training config, then evaluated on the held-out ensemble tasks
through the evaluators against Adam, RMSProp and SGD-M tuned per task, in
the three comparisons (tuned vs tuned: its rate swept over the same grid;
untuned vs tuned; default vs Adam 1e-3). The baselines' cache is shared, so
they run once. A diverged run is a loss.
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


def _g(v) -> str:
  return "inf" if v is None or not np.isfinite(v) else f"{v:.3g}"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=20.0,
                  help="meta-training budget per variant and seed")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--meta-seeds", type=int, default=2,
                  help="meta-training runs per variant (config seeds 0..N-1)")
  ap.add_argument("--seeds", type=int, default=4,
                  help="inner seeds per held-out evaluation run")
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
                                  f"steps={args.inner_steps}"])
  os.makedirs(args.workdir, exist_ok=True)
  results = []
  for name in names:
    hcfg = dataclasses.replace(base.hrnn, **VARIANTS[name])
    for seed in range(args.meta_seeds):
      cfg = dataclasses.replace(base, hrnn=hcfg, seed=seed)
      t0 = time.time()
      trainer = local_train.train(cfg, steps=10**9,
                                  time_budget_s=args.minutes * 60,
                                  log=lambda m: None)
      train_s = time.time() - t0
      rows = evaluate(args.workdir, suite, hcfg, trainer.theta,
                      f"{name}-seed{seed}")
      s = records.score(rows)
      objective = np.mean([np.inf if r["learned_metric"] is None
                           else r["learned_metric"] for r in rows])
      res = {"variant": name, "seed": seed, "meta_steps": trainer.step,
             "train_min": train_s / 60, "objective": float(objective),
             "geomean": s["geomean_ratio"], "wins": s["wins"],
             "geomean_tuned": s["geomean_tuned"],
             "wins_tuned": s["wins_tuned"],
             "geomean_default": s["geomean_default"],
             "wins_default": s["wins_default"], "tasks": s["tasks"],
             "diverged": s["diverged"]}
      results.append(res)
      print(json.dumps(res), flush=True)
  print(f"\n| variant | meta-seed | meta-steps in {args.minutes:g} min | "
        "held-out meta-objective | tuned vs tuned: geomean (wins) | "
        "untuned vs tuned: geomean (wins) | default vs Adam 1e-3: geomean "
        "(wins) | diverged |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for r in results:
    n = r["tasks"]
    print(f"| {r['variant']} | {r['seed']} | {r['meta_steps']} | "
          f"{r['objective']:+.4f} | {_g(r['geomean_tuned'])} "
          f"({r['wins_tuned']}/{n}) | {_g(r['geomean'])} ({r['wins']}/{n}) "
          f"| {_g(r['geomean_default'])} ({r['wins_default']}/{n}) | "
          f"{r['diverged']} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
