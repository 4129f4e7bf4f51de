"""What bf16 optimizer-state storage does to the learned optimizer's results.

Usage:
  python benchmarks/bf16_state.py [--lopt FILE] [--suite small]
      [--set k=v ...]

Runs one optimizer file (default: the shipped ``metatrain.pretrained()``)
on every task and seed of a suite twice through the evaluators' runner:
once as saved (fp32 state) and once with ``state_dtype="bfloat16"`` (same
meta-parameters, same problem instances and minibatches), and prints the
final losses side by side with their ratio, and the state bytes per
parameter of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from evaluators import baselines, problems, records, runner, suites  # noqa: E402
from metatrain.optimizer import export, hrnn, zoo


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--lopt", default=None)
  ap.add_argument("--suite", default="small")
  ap.add_argument("--set", action="append", default=[])
  args = ap.parse_args(argv)
  config, theta, _ = export.read_optimizer(args.lopt or zoo.pretrained_path())
  suite = suites.load(args.suite, args.set)
  cfgs = {"fp32": dataclasses.replace(config, state_dtype="float32"),
          "bf16": dataclasses.replace(config, state_dtype="bfloat16")}
  print("| task | seed | fp32 final loss | bf16 final loss | bf16/fp32 |")
  print("|---|---:|---:|---:|---:|")
  ratios = []
  for task in suite.tasks:
    p = problems.build(task, **suite.problem_settings())
    for seed in range(suite.seeds):
      out = {}
      for name, cfg in cfgs.items():
        r = runner.run(p, baselines.learned(cfg, theta), steps=suite.steps,
                       seed=seed, chunk=suite.chunk,
                       eval_every=suite.eval_every,
                       divergence_factor=suite.divergence_factor)
        out[name] = r.final_loss
      ratio = out["bf16"] / out["fp32"] if out["fp32"] > 0 else math.nan
      ratios.append(ratio)
      print(f"| {task} | {seed} | {out['fp32']:.4g} | {out['bf16']:.4g} | "
            f"{ratio:.3f} |", flush=True)
  geo = records.geomean(ratios)
  params = {"w": jax.numpy.zeros((1000, 1000))}
  sizes = {n: hrnn.state_bytes_per_param(hrnn.init_state(c, theta, params))
           for n, c in cfgs.items()}
  print(f"\ngeometric-mean final-loss ratio bf16/fp32: {geo:.4f} over "
        f"{len(ratios)} runs; state bytes per parameter: fp32 "
        f"{sizes['fp32']:.1f}, bf16 {sizes['bf16']:.1f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
