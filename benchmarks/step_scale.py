"""How the learned optimizer fares with its step size scaled, beside Adam.

Usage:
  python benchmarks/step_scale.py [--lopt FILE] [--tasks fmnist_mlp]
      [--scales 0.1,0.3,1] [--adam-lrs 3e-4,1e-3] [--steps 1000]
      [--seeds 1] [--batch-size 64]

A learned optimizer has no learning rate to tune, but its global step size
(``exp(stepsize_offset)``) can be scaled like one. This prints, per task, the
mean final training loss over seeds of the learned optimizer at each scale
and of Adam at each rate, all on the same problem instances and minibatches,
and each one's ratio to the best Adam. It answers "is this task losing
because the learned steps are too large or too small, or for another
reason?". A diverged run is inf.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from evaluators import baselines, problems, records, runner  # noqa: E402
from metatrain.optimizer import export, zoo


def scaled(theta, scale: float):
  """``theta`` with its global step size multiplied by ``scale``."""
  if not scale > 0:
    raise ValueError(f"step scales must be > 0, got {scale}")
  out = dict(theta)
  out["stepsize_offset"] = theta["stepsize_offset"] + math.log(scale)
  return out


def _floats(text: str) -> list[float]:
  try:
    return [float(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise SystemExit(f"not a comma-separated list of numbers: {text!r}") \
        from None


def _mean_final(problem, opt, steps, seeds, chunk) -> float:
  """Mean final loss over seeds, by the evaluators' rule (diverged: inf)."""
  return records.mean_loss(
      runner.run(problem, opt, steps=steps, seed=seed, chunk=chunk).to_json()
      for seed in range(seeds))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--lopt", default="",
                  help="optimizer file (default: the shipped hrnn-v1)")
  ap.add_argument("--tasks", default="fmnist_mlp")
  ap.add_argument("--scales", default="0.1,0.3,1")
  ap.add_argument("--adam-lrs", default="3e-4,1e-3")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--seeds", type=int, default=1)
  ap.add_argument("--batch-size", type=int, default=64)
  ap.add_argument("--chunk", type=int, default=100,
                  help="steps per compiled call (1 for ConvNets on a CPU)")
  args = ap.parse_args(argv)
  scales, lrs = _floats(args.scales), _floats(args.adam_lrs)
  if not scales or not lrs or args.seeds < 1 or args.steps < 1:
    raise SystemExit("need at least one scale, one Adam rate, one seed and "
                     "one step")
  path = args.lopt or zoo.pretrained_path()
  config, theta, _ = export.read_optimizer(path)
  if not config.dynamic_output_scale:
    raise SystemExit(f"{path}: its config has no global step size "
                     "(dynamic_output_scale is off)")
  print(f"optimizer {os.path.basename(path)}; {args.steps} steps, "
        f"{args.seeds} seed(s), batch {args.batch_size}")
  for task in args.tasks.split(","):
    problem = problems.build(task, batch_size=args.batch_size)
    rows = []
    for s in scales:
      opt = baselines.learned(config, scaled(theta, s))
      rows.append((f"learned x{s:g}",
                   _mean_final(problem, opt, args.steps, args.seeds,
                               args.chunk)))
    for lr in lrs:
      rows.append((f"adam {lr:g}",
                   _mean_final(problem, baselines.baseline("adam", lr),
                               args.steps, args.seeds, args.chunk)))
    best = min(v for name, v in rows if name.startswith("adam"))
    print(f"\n{task}")
    print(f"{'optimizer':<16} {'final loss':>11} {'/ best adam':>11}")
    for name, v in rows:
      print(f"{name:<16} {v:>11.4g} {v / best:>11.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
