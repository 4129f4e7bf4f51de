"""Learner stress test: many concurrent gradient sources, one learner.

Usage:
  python benchmarks/learner_stress.py [--sources 64] [--actors 8]
                                      [--batch 16] [--seconds 30]

``--sources`` virtual gradient sources are spread over ``--actors`` async
Ray actors (each serving its sources concurrently), so 64 sources fit a
2-core machine. Each source answers ``compute(theta_ref, step)`` at once
with a precomputed MetaGrad of the real theta size (all ones), through the
real ``learner.run`` loop with plain SGD (lr 1), so after U updates every
theta entry must have moved by exactly -U. The script reports learner
updates per second and checks that every gradient sent was received exactly
once: sent == accepted + stale + duplicate + nonfinite + still in flight.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import ray  # noqa: E402

from metatrain.distributed import launcher, learner
from metatrain.distributed.worker import MetaGrad  # noqa: E402
from metatrain.optimizer import hrnn


@ray.remote(num_cpus=0)
class GradServer:
  """Serves precomputed MetaGrads for several virtual sources."""

  def __init__(self, grads):
    self.grads = grads
    self.sent: dict[int, int] = {}

  async def compute(self, source_id: int, theta, theta_step: int):
    del theta
    seq = self.sent.get(source_id, 0)
    self.sent[source_id] = seq + 1
    return MetaGrad(source_id, seq, theta_step, self.grads,
                    {"meta_loss": 0.0, "task_steps": 1.0})

  async def total_sent(self) -> int:
    return sum(self.sent.values())


class _Method:
  def __init__(self, server, source_id):
    self.server, self.source_id = server, source_id

  def remote(self, theta_ref, step):
    return self.server.compute.remote(self.source_id, theta_ref, step)


class Source:
  """Looks like an UnrollWorker handle to ``learner.run``."""

  def __init__(self, server, source_id):
    self.compute = _Method(server, source_id)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sources", type=int, default=64)
  ap.add_argument("--actors", type=int, default=8)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--max-staleness", type=int, default=8)
  ap.add_argument("--seconds", type=float, default=30.0)
  args = ap.parse_args()
  theta = hrnn.init_theta(jax.random.PRNGKey(0), hrnn.HRNNConfig())
  ones = jax.tree_util.tree_map(lambda x: np.ones(x.shape, np.float32), theta)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(theta))
  launcher.init_ray(None)
  try:
    servers = [GradServer.options(max_concurrency=args.sources).remote(ones)
               for _ in range(args.actors)]
    sources = [Source(servers[i % args.actors], i)
               for i in range(args.sources)]
    opt = optax.sgd(1.0)
    state = learner.LearnerState(theta, opt.init(theta), 0, {})
    t0 = time.perf_counter()
    deadline = t0 + args.seconds
    state = learner.run(state, sources, opt, steps=10**9,
                        max_staleness=args.max_staleness,
                        batch_size=args.batch, on_step=lambda s, m: None,
                        should_stop=lambda: time.perf_counter() > deadline,
                        wait_timeout_s=0.1)
    dt = time.perf_counter() - t0
    time.sleep(0.5)
    sent = sum(ray.get([s.total_sent.remote() for s in servers]))
  finally:
    ray.shutdown()
  c = state.counters
  received = (c.get("accepted", 0) + c.get("stale", 0) +
              c.get("duplicate", 0) + c.get("nonfinite", 0))
  in_flight = sent - received
  moved = float(np.mean(theta["w_update"] - state.theta["w_update"]))
  applied = state.step * args.batch
  print(f"sources {args.sources} on {args.actors} async actors, theta "
        f"{n_params} floats, batch {args.batch}, {dt:.1f}s")
  print(f"learner updates/s {state.step / dt:.1f}   grads/s "
        f"{received / dt:.1f}")
  print(f"sent {sent} = accepted {c.get('accepted', 0)} + stale "
        f"{c.get('stale', 0)} + duplicate {c.get('duplicate', 0)} + "
        f"nonfinite {c.get('nonfinite', 0)} + in flight/cancelled "
        f"{in_flight}")
  ok_moved = abs(moved - state.step) < 1e-3 * max(1, state.step)
  ok_count = (0 <= in_flight <= args.sources and c.get("duplicate", 0) == 0
              and c.get("accepted", 0) >= applied)
  print(f"theta moved {moved:.1f} for {state.step} updates (expected "
        f"{state.step}): {'OK' if ok_moved else 'MISMATCH'}; accounting "
        f"{'OK' if ok_count else 'MISMATCH'} (applied {applied} grads, "
        f"{c.get('accepted', 0) - applied} accepted left in the last batch)")
  sys.exit(0 if ok_moved and ok_count else 1)


if __name__ == "__main__":
  main()
