"""Meta-gradient estimators (BPTT, PES, mix) at equal wall-clock compute.

Usage:
  python benchmarks/estimators.py [--minutes 5] [--config default]
      [--set k=v ...] [--estimators bptt,pes,mix] [--holdout 8] [--seeds 4]
      [--inner-steps 100] [--checkpoints 4]
  # smoke test:
  python benchmarks/estimators.py --minutes 0.3 --holdout 2

Each estimator (``meta_grad.estimator``) meta-trains in this process from
the same config and seed (the same initial theta and, for bptt and pes, the
same sampled task configs) for the same budget through
``local_train.train(..., time_budget_s=...)``. Compiled programs are
dropped before each run, so every estimator pays its own compiles (PES and
BPTT compile different programs; mix compiles both). Theta is kept at
``--checkpoints`` evenly spaced times; after training, each kept theta is
evaluated (outside the budget) with ``unroll.evaluate`` on fixed held-out
configs (``tasks.holdout_configs``) with fixed seeds: the meta-objective,
mean log(f_t / f_0) of an ``--inner-steps`` run from scratch, lower is
better. A task's value is the mean over its seeds, inf if one diverged; the
summary is the mean and median over tasks (inf when any task diverged).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from metatrain import tasks
from metatrain.optimizer import hrnn
from metatrain.training import config as config_lib
from metatrain.training import local_train, programs, unroll

EVAL_KEY = 20170417  # the evaluation problems' key, shared by every theta


def train_with_snapshots(cfg, budget: float, checkpoints: int, label: str):
  """Meta-trains for ``budget`` seconds; returns [(seconds, step, task
  steps, theta)] at ``checkpoints`` evenly spaced times (the last: the end).
  """
  times = [budget * (k + 1) / checkpoints for k in range(checkpoints - 1)]
  snaps, last = [], [0.0]

  def on_step(trainer, seconds):
    last[0] = seconds
    if times and seconds >= times[0]:  # one snapshot per step at most
      while times and seconds >= times[0]:
        times.pop(0)
      snaps.append((seconds, trainer.step,
                    trainer.counters["task_steps"], trainer.theta))

  programs.clear()  # each estimator compiles its own programs
  trainer = local_train.train(
      cfg, time_budget_s=budget, on_step=on_step,
      log=lambda m: print(f"[{label}] {m}", flush=True))
  if not snaps or snaps[-1][1] != trainer.step:
    snaps.append((last[0], trainer.step, trainer.counters["task_steps"],
                  trainer.theta))
  c = trainer.counters
  print(f"[{label}] {trainer.step} meta-steps, {c['task_steps']:,} task-steps"
        f" in {last[0]:.0f}s; nonfinite {c['num_nonfinite']}, diverged "
        f"{c['num_diverged']}, skipped updates {c['skipped_updates']}",
        flush=True)
  return snaps


def evaluate_theta(theta, configs, hcfg, seeds: int, steps: int):
  """Per held-out config: the mean meta-objective over seeds (inf if any
  seed diverged)."""
  out = []
  for tc in configs:
    obj, _, diverged = unroll.evaluate(
        theta, jax.random.PRNGKey(EVAL_KEY), task_config=tc, hcfg=hcfg,
        num_tasks=seeds, steps=steps)
    obj = np.asarray(obj)
    out.append(np.inf if np.any(np.asarray(diverged)) else float(obj.mean()))
  return np.array(out)


def summary(vals: np.ndarray) -> str:
  mean = float(np.mean(vals)) if np.all(np.isfinite(vals)) else np.inf
  return (f"{mean:>+10.4f} {float(np.median(vals)):>+10.4f} "
          f"{int(np.sum(~np.isfinite(vals))):>8}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=5.0,
                  help="wall-clock training budget of each estimator")
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--estimators", default="bptt,pes,mix")
  ap.add_argument("--holdout", type=int, default=8)
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--inner-steps", type=int, default=100)
  ap.add_argument("--checkpoints", type=int, default=4)
  args = ap.parse_args()
  base = config_lib.load(args.config, args.set)
  names = [e.strip() for e in args.estimators.split(",") if e.strip()]
  for e in names:
    if e not in config_lib.ESTIMATORS:
      raise SystemExit(f"unknown estimator {e!r} "
                       f"(known: {', '.join(config_lib.ESTIMATORS)})")
  ensemble = base.tasks.ensemble()
  configs = tasks.holdout_configs(args.holdout, ensemble)
  budget = args.minutes * 60
  mg = base.meta_grad
  print(f"config {args.config} {args.set}; {budget:.0f}s per estimator; "
        f"PES: {mg.pes_pairs} pairs, std {mg.pes_std}; mix: PES fraction "
        f"{mg.mix_pes_fraction}; held-out: "
        f"{', '.join(c.name for c in configs)}", flush=True)

  runs = {}
  for e in names:
    cfg = dataclasses.replace(
        base, meta_grad=dataclasses.replace(base.meta_grad, estimator=e))
    runs[e] = train_with_snapshots(cfg, budget, max(1, args.checkpoints), e)

  t0 = time.time()
  theta0 = hrnn.init_theta(jax.random.PRNGKey(base.seed), base.hrnn)
  init_vals = evaluate_theta(theta0, configs, base.hrnn, args.seeds,
                             args.inner_steps)
  print(f"\nheld-out meta-objective (mean log(f_t/f_0) over "
        f"{args.inner_steps} steps, {args.seeds} seeds x {len(configs)} "
        f"tasks; lower is better, inf = diverged)")
  print(f"{'estimator':<10} {'train s':>8} {'meta-steps':>10} "
        f"{'task-steps':>12} {'mean':>10} {'median':>10} {'diverged':>8}")
  print(f"{'init':<10} {0:>8.0f} {0:>10} {0:>12} {summary(init_vals)}")
  finals = {}
  for e, snaps in runs.items():
    for seconds, step, task_steps, theta in snaps:
      vals = evaluate_theta(theta, configs, base.hrnn, args.seeds,
                            args.inner_steps)
      print(f"{e:<10} {seconds:>8.0f} {step:>10} {task_steps:>12,} "
            f"{summary(vals)}", flush=True)
    finals[e] = vals
  print(f"\nper task at the end of training (init, then {', '.join(finals)}):")
  for i, tc in enumerate(configs):
    row = " ".join(f"{v[i]:>+9.4f}" for v in [init_vals, *finals.values()])
    print(f"  {tc.name[:60]:<60} {row}")
  print(f"({time.time() - t0:.0f}s to evaluate)")


if __name__ == "__main__":
  main()
