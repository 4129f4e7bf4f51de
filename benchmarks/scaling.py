"""Meta-gradients per second with 1 and with 2 unroll workers, side by side.

Usage:
  python benchmarks/scaling.py [--config default] [--set k=v ...]
                               [--seconds 60] [--workers 1,2]

Starts one local Ray instance, then for each worker count creates that many
UnrollWorker actors, warms them up (the first calls compile), and counts the
meta-gradients (MetaGrad results) completed in a fixed wall-clock window with
one call always in flight per worker, as the learner does. Workers use the
same config and seeds in every round, so rounds do the same work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ray  # noqa: E402

from metatrain.distributed import launcher
from metatrain.optimizer import hrnn
from metatrain.training import config as config_lib
from metatrain.distributed.worker import UnrollWorker, actor_options  # noqa: E402


def measure(cfg, n: int, seconds: float, warmup_calls: int) -> dict:
  actor = ray.remote(UnrollWorker).options(**actor_options(cfg.worker))
  cfg_dict = config_lib.to_dict(cfg)
  workers = [actor.remote(i, cfg_dict, 0) for i in range(n)]
  theta_ref = ray.put(hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn))
  for _ in range(warmup_calls):  # compile every bucket the groups hit
    ray.get([w.compute.remote(theta_ref, 0) for w in workers])
  pending = {w.compute.remote(theta_ref, 0): i for i, w in enumerate(workers)}
  done, task_steps = 0, 0.0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
    for ref in ready:
      i = pending.pop(ref)
      mg = ray.get(ref)
      done += 1
      task_steps += mg.metrics["task_steps"]
      pending[workers[i].compute.remote(theta_ref, 0)] = i
  dt = time.perf_counter() - t0
  for w in workers:
    ray.kill(w, no_restart=True)
  return {"workers": n, "metagrads": done, "seconds": dt,
          "metagrads_per_s": done / dt, "task_steps_per_s": task_steps / dt}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--seconds", type=float, default=60.0)
  ap.add_argument("--workers", default="1,2")
  ap.add_argument("--warmup-calls", type=int, default=3)
  args = ap.parse_args()
  cfg = config_lib.load(args.config, args.set)
  launcher.init_ray(None)
  try:
    res = [measure(cfg, int(n), args.seconds, args.warmup_calls)
           for n in args.workers.split(",")]
  finally:
    ray.shutdown()
  print(f"{'workers':>8} {'metagrads':>10} {'metagrads/s':>12} "
        f"{'task-steps/s':>13}")
  for r in res:
    print(f"{r['workers']:>8} {r['metagrads']:>10} "
          f"{r['metagrads_per_s']:>12.3f} {r['task_steps_per_s']:>13,.0f}")
  base = res[0]["metagrads_per_s"]
  for r in res[1:]:
    print(f"ratio {r['workers']} vs {res[0]['workers']} workers: "
          f"{r['metagrads_per_s'] / base:.2f}x  (cpus: {os.cpu_count()})")


if __name__ == "__main__":
  main()
