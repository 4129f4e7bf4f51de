"""Meta-train for a wall-clock budget; compare on held-out tasks.

Usage:
  python benchmarks/metatrain_progress.py [--minutes 20] [--config default]
      [--set k=v ...] [--holdout 12] [--seeds 4] [--inner-steps 200]
      [--workers 0]

With ``--workers N`` (N > 0) the training runs as ``lopt train --workers N``
(Ray: learner, workers, checkpoints, stalled-worker restarts), is stopped with
SIGTERM when the budget is spent, and the final checkpoint is evaluated.

Prints the meta-objective (mean log(f_t/f_0) over a 200-step run, lower is
better) on the held-out validation tasks (``tasks.holdout_configs``, fixed
seeds never used for meta-training) before and after single-process
meta-training (or ``lopt train``) for the budget, then the final full-batch loss after 200 inner
steps on each held-out task for: the trained HRNN, the untrained HRNN, and
Adam at the best learning rate of {1e-4, ..., 1e-1} chosen per task. All
three see the same problem instances and minibatches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from metatrain import config as config_lib  # noqa: E402
from metatrain import checkpoints, evaluation, hrnn, local_train  # noqa: E402
from metatrain import programs  # noqa: E402
from metatrain import tasks  # noqa: E402


def holdout_table(theta, cfg, holdout, seeds, steps):
  key = jax.random.PRNGKey(2017)
  objs, finals = [], []
  for tc in holdout:
    o, f = evaluation.hrnn_final_loss(theta, key, task_config=tc,
                                      hcfg=cfg.hrnn, num_tasks=seeds,
                                      steps=steps)
    objs.append(float(np.mean(np.asarray(o))))
    f = np.asarray(f)
    finals.append(float(np.mean(np.where(np.isfinite(f), f, np.inf))))
  return np.array(objs), np.array(finals)


def train_here(cfg, args, budget):
  """Single-process meta-training (``lopt train --workers 0``) for ``budget``."""
  cfg = dataclasses.replace(cfg, stall_timeout_s=args.stall_seconds)
  t0 = time.time()
  trainer = local_train.train(cfg, steps=10**9, time_budget_s=budget,
                              log=lambda m: print(m, flush=True))
  dt = time.time() - t0
  summary = (f"\nmeta-trained {trainer.step} meta-steps in {dt / 60:.1f} min "
             f"({trainer.counters['task_steps']:,} inner task-steps, "
             f"nonfinite {trainer.counters['num_nonfinite']}, diverged "
             f"{trainer.counters['num_diverged']}; compiled-program stats "
             f"{programs.stats()})")
  return trainer.theta, summary


def train_with_ray(args, budget):
  """Runs `lopt train --workers N` for ``budget`` seconds; returns its theta."""
  workdir = args.workdir or tempfile.mkdtemp(prefix="lopt-progress-")
  cmd = [sys.executable, "-m", "infra.cli", "train", "--workdir", workdir,
         "--config", args.config, "--workers", str(args.workers),
         "--steps", str(10**9)]
  for kv in args.set:
    cmd += ["--set", kv]
  print(f"running: {' '.join(cmd)}", flush=True)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ,
                                                  PYTHONUNBUFFERED="1"))
  t0 = time.time()
  try:
    proc.wait(timeout=budget)
    raise SystemExit(f"lopt train exited early with code {proc.returncode}")
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)  # saves a final checkpoint
    proc.wait(timeout=300)
  dt = time.time() - t0
  ck = checkpoints.Checkpointer(workdir, read_only=True)
  step = ck.latest_step()
  _, theta = ck.restore_lopt(step)
  with open(os.path.join(workdir, "counters.json")) as f:
    counters = json.load(f)
  summary = (f"\nlopt train --workers {args.workers}: {step} meta-steps in "
             f"{dt / 60:.1f} min; counters {counters}; workdir {workdir}")
  return jax.tree_util.tree_map(jax.numpy.asarray, theta), summary


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=20.0)
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--holdout", type=int, default=12)
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--inner-steps", type=int, default=200)
  ap.add_argument("--workers", type=int, default=0,
                  help="0: train in this process; N: run `lopt train "
                       "--workers N` (Ray) and evaluate its last checkpoint")
  ap.add_argument("--workdir", default="",
                  help="lopt train workdir (default: a fresh temp dir)")
  ap.add_argument("--stall-seconds", type=float, default=600.0,
                  help="single process: abort, naming the running group, "
                       "when one meta-step takes longer than this")
  args = ap.parse_args()
  cfg = config_lib.load(args.config, args.set)
  holdout = tasks.holdout_configs(
      args.holdout, tasks.ensemble_for(cfg.tasks.include_mlps,
                                       cfg.tasks.families))
  # Both trainers start from this theta.
  theta0 = hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn)
  t0 = time.time()
  obj0, fin0 = holdout_table(theta0, cfg, holdout, args.seeds,
                             args.inner_steps)
  print(f"held-out meta-objective at init: {obj0.mean():+.4f} "
        f"({time.time() - t0:.0f}s to evaluate {len(holdout)} tasks)",
        flush=True)
  budget = args.minutes * 60
  if args.workers > 0:
    theta1, summary = train_with_ray(args, budget)
  else:
    theta1, summary = train_here(cfg, args, budget)
  obj1, fin1 = holdout_table(theta1, cfg, holdout, args.seeds,
                             args.inner_steps)
  print(summary)
  print(f"held-out meta-objective: init {obj0.mean():+.4f} -> trained "
        f"{obj1.mean():+.4f} (lower is better; improved on "
        f"{int(np.sum(obj1 < obj0))}/{len(holdout)} tasks)")
  print(f"\nfinal full loss after {args.inner_steps} steps, mean of "
        f"{args.seeds} seeds:")
  print(f"{'task':<58} {'trained':>10} {'untrained':>10} {'adam*':>10} "
        f"{'adam lr':>8}")
  ratios = []
  key = jax.random.PRNGKey(2017)
  for tc, f1, f0 in zip(holdout, fin1, fin0):
    fa, lr = evaluation.tuned_adam(key, tc, args.seeds, args.inner_steps)
    ratios.append((f1 + 1e-8) / (fa + 1e-8))
    print(f"{tc.name[:58]:<58} {f1:>10.4g} {f0:>10.4g} {fa:>10.4g} "
          f"{lr:>8.0e}")
  ratios = np.array(ratios)
  finite = np.isfinite(ratios)
  print(f"\ntrained HRNN beats per-task-tuned Adam on "
        f"{int(np.sum(ratios[finite] < 1))}/{len(ratios)} held-out tasks; "
        f"geometric-mean final-loss ratio HRNN/Adam* "
        f"{np.exp(np.mean(np.log(ratios[finite]))):.3g}")
  print(f"trained vs untrained HRNN: better on "
        f"{int(np.sum(fin1 < fin0))}/{len(holdout)} tasks")


if __name__ == "__main__":
  main()
