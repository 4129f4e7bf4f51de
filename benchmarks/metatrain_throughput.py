"""Inner task-steps per second with the meta-gradient vs a plain Adam unroll.

Usage:
  python benchmarks/metatrain_throughput.py [--config default] [--set k=v]
      [--groups 4] [--length 40] [--repeats 5]

Samples the same task groups (N vmapped copies of one config each) for both
measurements, in one run:
- HRNN: ``unroll.group_meta_grad``, i.e. one truncation of ``--length``
  inner steps with the HRNN and truncated BPTT back to theta (what meta-
  training does);
- Adam: a jitted ``optax.adam`` unroll of the same tasks, same length, no
  meta-gradient (what plain training of the same tasks costs).
Compilation is excluded (one warm-up call each). Prints task-steps/s for
both and their ratio.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from metatrain import config as config_lib  # noqa: E402
from metatrain import hrnn, tasks, unroll  # noqa: E402


@functools.partial(jax.jit, static_argnames=("task_config", "length"))
def adam_unroll(params, data, keys, *, task_config, length):
  """Plain Adam on a group of tasks (leading axis N), no meta-gradient."""
  task = tasks.build_task(task_config)
  tx = optax.adam(1e-3)

  def one(p, d, k):
    def body(carry, t):
      p, s = carry
      loss, g = task.loss_and_grad(p, d, jax.random.fold_in(k, t))
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), jnp.arange(length))
    return p, losses

  return jax.vmap(one)(params, data, keys)


def _time(fn, repeats):
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t0) / repeats


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--groups", type=int, default=6)
  ap.add_argument("--length", type=int, default=40)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  cfg = config_lib.load(args.config, args.set)
  ucfg = cfg.unroll
  n = ucfg.tasks_per_group
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn)
  ens = tasks.ensemble_for(cfg.tasks.include_mlps, cfg.tasks.families)
  rng = np.random.default_rng(args.seed)
  print(f"{'task group':<52} {'hrnn+metagrad':>14} {'adam':>10} {'ratio':>7}")
  tot_h = tot_a = 0.0
  for _ in range(args.groups):
    tc = ens.sample(rng)
    states = unroll.init_group_states(theta, jax.random.PRNGKey(1),
                                      task_config=tc, hcfg=cfg.hrnn,
                                      ucfg=ucfg, num_tasks=n)
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    t_h = _time(lambda: unroll.group_meta_grad(
        theta, states, keys, args.length, task_config=tc, hcfg=cfg.hrnn,
        ucfg=ucfg, scan_len=args.length)[0], args.repeats)
    t_a = _time(lambda: adam_unroll(states.params, states.data, keys,
                                    task_config=tc, length=args.length),
                args.repeats)
    steps = n * args.length
    tot_h += t_h
    tot_a += t_a
    print(f"{tc.name[:52]:<52} {steps / t_h:>14,.0f} {steps / t_a:>10,.0f} "
          f"{t_h / t_a:>7.1f}", flush=True)
  steps = args.groups * n * args.length
  print(f"{'total':<52} {steps / tot_h:>14,.0f} {steps / tot_a:>10,.0f} "
        f"{tot_h / tot_a:>7.1f}")
  print(f"task-steps/s: HRNN with meta-gradient {steps / tot_h:,.0f}, plain "
        f"Adam {steps / tot_a:,.0f}; Adam is {tot_h / tot_a:.1f}x faster "
        f"({n} tasks per group, {args.length} steps, backend "
        f"{jax.default_backend()})")


if __name__ == "__main__":
  main()
