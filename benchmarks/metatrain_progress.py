"""Meta-train for a wall-clock budget; compare on held-out tasks.

Usage:
  python benchmarks/metatrain_progress.py [--minutes 20] [--config default]
      [--set k=v ...] [--holdout 12] [--seeds 4] [--inner-steps 200]

Prints the meta-objective (mean log(f_t/f_0) over a 200-step run, lower is
better) on the held-out validation tasks (``tasks.holdout_configs``, fixed
seeds never used for meta-training) before and after single-process
meta-training for the budget, then the final full-batch loss after 200 inner
steps on each held-out task for: the trained HRNN, the untrained HRNN, and
Adam at the best learning rate of {1e-4, ..., 1e-1} chosen per task. All
three see the same problem instances and minibatches.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from metatrain import config as config_lib  # noqa: E402
from metatrain import evaluation, local_train, programs, tasks  # noqa: E402


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


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=20.0)
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--holdout", type=int, default=12)
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--inner-steps", type=int, default=200)
  ap.add_argument("--stall-seconds", type=float, default=600.0,
                  help="abort, naming the running group, when one meta-step "
                       "takes longer than this")
  args = ap.parse_args()
  cfg = config_lib.load(args.config, args.set)
  programs.configure_xla(cfg.xla_multi_thread_eigen)  # before any compute
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  holdout = tasks.holdout_configs(
      args.holdout, tasks.ensemble_for(cfg.tasks.include_mlps,
                                       cfg.tasks.families))
  trainer = local_train.MetaTrainer(cfg)
  theta0 = trainer.theta
  t0 = time.time()
  obj0, fin0 = holdout_table(theta0, cfg, holdout, args.seeds,
                             args.inner_steps)
  print(f"held-out meta-objective at init: {obj0.mean():+.4f} "
        f"({time.time() - t0:.0f}s to evaluate {len(holdout)} tasks)",
        flush=True)
  budget = args.minutes * 60
  t0 = time.time()
  last = [time.time()]

  def stall_watchdog():
    while True:
      time.sleep(5)
      if time.time() - last[0] > args.stall_seconds:
        print(f"STALLED: meta-step {trainer.step + 1} has run "
              f"{time.time() - last[0]:.0f}s on group (index, config, age) "
              f"{trainer.running}; compiled programs {programs.stats()}",
              flush=True)
        os._exit(3)

  threading.Thread(target=stall_watchdog, daemon=True).start()
  ema = None
  while time.time() - t0 < budget:
    m = trainer.meta_step()
    last[0] = time.time()
    if np.isfinite(m["meta_loss"]):
      ema = m["meta_loss"] if ema is None else 0.95 * ema + 0.05 * m[
          "meta_loss"]
    if trainer.step % 20 == 0:
      print(local_train.format_progress(dict(m, meta_loss=ema or 0.0),
                                        trainer.counters, 0) +
            f"  elapsed {time.time() - t0:.0f}s", flush=True)
  last[0] = float("inf")  # training is over: stop the stall watchdog
  steps, dt = trainer.step, time.time() - t0
  obj1, fin1 = holdout_table(trainer.theta, cfg, holdout, args.seeds,
                             args.inner_steps)
  print(f"\nmeta-trained {steps} meta-steps in {dt / 60:.1f} min "
        f"({trainer.counters['task_steps']:,} inner task-steps, nonfinite "
        f"{trainer.counters['num_nonfinite']}, diverged "
        f"{trainer.counters['num_diverged']}; compiled-program stats "
        f"{programs.stats()})")
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
