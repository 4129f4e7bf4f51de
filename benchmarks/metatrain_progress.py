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
meta-training (or ``lopt train``) for the budget, then the final full-batch
loss after 200 inner steps on each held-out task for: the trained HRNN, the
untrained HRNN, and Adam at the best learning rate of {1e-4, ..., 1e-1}
chosen per task. All of it runs through the evaluators (the ``heldout``
suite, records in a temporary workdir), so all three see the same problem
instances and minibatches, and a diverged run counts as a loss.
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

from evaluators import records, suites, watch  # noqa: E402
from metatrain.distributed import checkpoints
from metatrain.optimizer import hrnn
from metatrain.training import config as config_lib
from metatrain.training import local_train
from metatrain.training import programs


def heldout_suite(args):
  """The evaluators' ``heldout`` suite, sized by the flags, tuned Adam."""
  tasks_ = [f"heldout:{i}" for i in range(args.holdout)]
  return suites.load("heldout", [f"tasks={json.dumps(tasks_)}",
                                 f"seeds={args.seeds}",
                                 f"steps={args.inner_steps}",
                                 'baselines=["adam"]'])


def evaluate_theta(workdir, suite, hcfg, theta, name):
  """Evaluates theta as a .lopt file (the evaluators' path); its source id."""
  src, _ = watch.evaluate_theta(workdir, suite, hcfg, theta, name,
                                {"benchmark": "metatrain_progress"},
                                log=lambda m: None)
  return src.id


def heldout_rows(workdir, source):
  """Per task: (task, meta-objective, final loss, tuned Adam loss, lr,
  ratio); a diverged run has an inf loss and ratio."""
  recs = records.read(os.path.join(workdir, "eval", "records.jsonl"))
  out = []
  for r in records.summarize(recs, source):
    obj = r["learned_metric"]
    out.append((r["task"], np.inf if obj is None else obj, r["learned"],
                r["best_loss"], r["baselines"]["adam"][1], r["ratio"]))
  return out


def train_here(cfg, args, budget):
  """Single-process meta-training (``lopt train --workers 0``) for ``budget``."""
  cfg = dataclasses.replace(cfg, stall_timeout_s=args.stall_seconds)
  t0 = time.time()
  trainer = local_train.train(cfg, time_budget_s=budget,
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
  suite = heldout_suite(args)
  evaldir = tempfile.mkdtemp(prefix="lopt-progress-eval-")
  # Both trainers start from this theta.
  theta0 = hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn)
  t0 = time.time()
  rows0 = heldout_rows(evaldir, evaluate_theta(evaldir, suite, cfg.hrnn,
                                               theta0, "untrained"))
  obj0 = np.array([r[1] for r in rows0])
  print(f"held-out meta-objective at init: {obj0.mean():+.4f} "
        f"({time.time() - t0:.0f}s to evaluate {len(rows0)} tasks with tuned "
        f"Adam; records in {evaldir})", flush=True)
  budget = args.minutes * 60
  if args.workers > 0:
    theta1, summary = train_with_ray(args, budget)
  else:
    theta1, summary = train_here(cfg, args, budget)
  rows1 = heldout_rows(evaldir, evaluate_theta(evaldir, suite, cfg.hrnn,
                                               theta1, "trained"))
  obj1 = np.array([r[1] for r in rows1])
  fin0 = np.array([r[2] for r in rows0])
  fin1 = np.array([r[2] for r in rows1])
  print(summary)
  print(f"held-out meta-objective: init {obj0.mean():+.4f} -> trained "
        f"{obj1.mean():+.4f} (lower is better; inf = diverged; improved on "
        f"{int(np.sum(obj1 < obj0))}/{len(rows1)} tasks)")
  print(f"\nfinal full loss after {args.inner_steps} steps, mean of "
        f"{args.seeds} seeds (inf: a seed diverged):")
  print(f"{'task':<58} {'trained':>10} {'untrained':>10} {'adam*':>10} "
        f"{'adam lr':>8}")
  for (task, _, f1, fa, lr, _), f0 in zip(rows1, fin0):
    print(f"{task[:58]:<58} {f1:>10.4g} {f0:>10.4g} {fa:>10.4g} "
          f"{lr:>8.0e}")
  ratios = np.array([r[5] for r in rows1])
  # A diverged task is a loss, never dropped: the geometric mean is then inf.
  geo = records.geomean(ratios)
  print(f"\ntrained HRNN beats per-task-tuned Adam on "
        f"{int(np.sum(ratios < 1))}/{len(ratios)} held-out tasks "
        f"({int(np.sum(np.isinf(ratios)))} diverged); geometric-mean "
        f"final-loss ratio HRNN/Adam* {geo:.3g}")
  print(f"trained vs untrained HRNN: better on "
        f"{int(np.sum(fin1 < fin0))}/{len(rows1)} tasks")


if __name__ == "__main__":
  main()
