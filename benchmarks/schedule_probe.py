"""Is a learned optimizer's edge its step-size schedule? Adam with it, tuned.

Usage:
  python benchmarks/schedule_probe.py --profile 1:2.72,10:3.11,100:6.71
      [--suite validation] [--steps 1000] [--seeds 2] [--tasks a,b]
      [--rates 1e-4,...,1]

``--profile`` is a step-size multiplier over a run, as
``step_profile.py`` measures it (the learned update's RMS over Adam's, at
the given steps; linear in log-step in between, constant past the ends).
This trains every task of the suite with Adam at each rate of the suite's
Adam grid, once with a constant rate and once with the rate times the
profile, on the same problem instances and minibatches, and prints per
task each one's best final loss (mean over seeds) and its rate (``*``
marks a best rate at an end of the grid: not bracketed, so not tuned), then
two
comparisons, geometric mean of the per-task ratio and wins (by more than
``records.TIE``): tuned vs tuned (each at its best rate per task) and
default vs default (both at 1e-3). If Adam with the profile does as well
against tuned Adam as the learned optimizer does, the learned optimizer's
edge is its schedule. A diverged run is inf.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from evaluators import baselines, problems, records, runner, suites  # noqa: E402
from evaluators.runner import Optimizer  # noqa: E402


def parse_profile(text: str) -> tuple[tuple[int, float], ...]:
  """``"1:2.7,100:6.7"`` as ((step, multiplier), ...), sorted by step."""
  try:
    pts = sorted((int(a), float(b)) for a, b in
                 (p.split(":") for p in text.split(",") if p.strip()))
  except ValueError:
    raise SystemExit(f"--profile must be step:multiplier,... got {text!r}") \
        from None
  if not pts or any(s < 1 or not m > 0 for s, m in pts) or len(
      {s for s, _ in pts}) < len(pts):
    raise SystemExit(f"--profile needs distinct steps >= 1 and multipliers "
                     f"> 0, got {text!r}")
  return tuple(pts)


def multiplier(profile, step):
  """The profile at ``step`` (1-based; traced): linear in log-step."""
  xs = jnp.log(jnp.asarray([float(s) for s, _ in profile]))
  ys = jnp.asarray([m for _, m in profile])
  return jnp.interp(jnp.log(jnp.maximum(step, 1).astype(jnp.float32)), xs, ys)


def adam_profiled(profile, learning_rate: float) -> Optimizer:
  """Adam whose rate at step t is ``learning_rate * profile(t)``."""
  def build(a):
    return optax.adam(lambda count: a["learning_rate"] * multiplier(
        profile, count + 1))
  return Optimizer(name="adam_profile", family=("adam_profile", profile),
                   build=build, args={"learning_rate": float(learning_rate)},
                   hparams={"learning_rate": float(learning_rate)})


def compare(a: dict[str, float], b: dict[str, float]) -> tuple[float, int]:
  """Geometric mean over tasks of a/b, and a's wins. A divergence of a's
  alone makes the mean inf and loses; b's alone is a win for a, left out
  of the mean; both is a tie."""
  logs, wins, lost = [], 0, False
  for t in b:
    if math.isinf(a[t]) or math.isinf(b[t]):
      lost |= math.isinf(a[t]) and not math.isinf(b[t])
      wins += math.isinf(b[t]) and not math.isinf(a[t])
      continue
    logs.append(math.log(a[t] / b[t]))
    wins += a[t] < b[t] * (1 - records.TIE)
  if lost:
    return math.inf, wins
  return (float(np.exp(np.mean(logs))) if logs else 1.0), wins


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--profile", required=True)
  ap.add_argument("--suite", default="validation")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--tasks", default="", help="default: the suite's")
  ap.add_argument("--rates", default="",
                  help="the rate grid (default: the suite's Adam grid)")
  args = ap.parse_args(argv)
  profile = parse_profile(args.profile)
  suite = suites.load(args.suite, [f"steps={args.steps}",
                                   f"seeds={args.seeds}",
                                   f"chunk={min(args.steps, 500)}"])
  tasks = [t for t in args.tasks.split(",") if t.strip()] or list(
      suite.tasks)
  try:
    rates = sorted(float(x) for x in args.rates.split(",") if x.strip()) \
        or list(suite.adam_lrs)
  except ValueError:
    raise SystemExit(f"--rates must be comma-separated numbers, got "
                     f"{args.rates!r}") from None
  if 1e-3 not in rates:
    raise SystemExit(f"the suite's Adam grid {rates} has no 1e-3 for the "
                     "default comparison")
  print(f"Adam, constant vs times the profile {list(profile)}; suite "
        f"{args.suite}, {args.steps} steps, {args.seeds} seed(s), rates "
        f"{rates}")
  print(f"{'task':<44} {'adam*':>10} {'(rate)':>7} {'profiled*':>10} "
        f"{'(rate)':>7} {'ratio':>7}")
  best = {"adam": {}, "prof": {}}
  best_rate = {"adam": {}, "prof": {}}
  default = {"adam": {}, "prof": {}}
  for name in tasks:
    prob = problems.build(name)
    losses = {}
    for kind, make in (("adam", lambda r: baselines.baseline("adam", r)),
                       ("prof", lambda r: adam_profiled(profile, r))):
      for r in rates:
        losses[kind, r] = records.mean_loss(
            runner.run(prob, make(r), steps=args.steps, seed=s,
                       chunk=suite.chunk).to_json()
            for s in range(args.seeds))
    row = []
    for kind in ("adam", "prof"):
      r = min(rates, key=lambda r, k=kind: losses[k, r])
      best[kind][name] = losses[kind, r]
      best_rate[kind][name] = r
      default[kind][name] = losses[kind, 1e-3]
      row.append((losses[kind, r], r))
    ratio = (row[1][0] / row[0][0] if math.isfinite(row[0][0])
             and row[0][0] > 0 else math.nan)
    edge = lambda r: f"{r:g}" + ("*" if r in (rates[0], rates[-1]) else "")
    print(f"{prob.name[:44]:<44} {row[0][0]:>10.4g} {edge(row[0][1]):>7} "
          f"{row[1][0]:>10.4g} {edge(row[1][1]):>7} {ratio:>7.3f}",
          flush=True)
  for kind, label in (("adam", "Adam"), ("prof", "Adam x profile")):
    n_edge = sum(best_rate[kind][t] in (rates[0], rates[-1]) for t in tasks)
    print(f"{label}: best rate at an end of the grid on {n_edge}/"
          f"{len(tasks)} tasks")
  n = len(tasks)
  g, w = compare(best["prof"], best["adam"])
  print(f"tuned vs tuned: Adam x profile over Adam, geomean {g:.4g} "
        f"({w}/{n} wins)")
  g, w = compare(default["prof"], default["adam"])
  print(f"default vs default (1e-3): geomean {g:.4g} ({w}/{n} wins)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
