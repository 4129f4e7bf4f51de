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
- and, to split the ratio into its factors: ``adam+f`` (Adam plus the
  full-data loss after each step, which the meta-objective needs) and
  ``hrnn fwd`` (the truncation without the meta-gradient);
- the cheaper ways to get a meta-gradient: ``bptt mb`` (BPTT with
  ``unroll.meta_loss="minibatch"``: no extra full-data pass), ``pes`` and
  ``pes mb`` (``pes.pes_meta_grad`` with N/2 antithetic pairs, so as many
  particles as the group has tasks, forward only);
- ``hrnn mb``: the truncation forward with the minibatch meta-loss, under
  one theta: the HRNN's own unroll, the floor of any meta-gradient
  estimator that runs the HRNN on these tasks.
Compilation is excluded (one warm-up call each). Prints task-steps/s for
each (a PES particle's step is a task-step) and each meta-gradient's
time over Adam's.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from metatrain import hrnn, pes, tasks, unroll  # noqa: E402


@functools.partial(jax.jit, static_argnames=("task_config", "length",
                                             "full_loss"))
def adam_unroll(params, data, keys, *, task_config, length, full_loss=False):
  """Plain Adam on a group of tasks (leading axis N), no meta-gradient;
  ``full_loss``: also the full-data loss after each step, as the
  meta-objective needs."""
  task = tasks.build_task(task_config)
  tx = optax.adam(1e-3)

  def one(p, d, k):
    def body(carry, t):
      p, s = carry
      loss, g = task.loss_and_grad(p, d, jax.random.fold_in(k, t))
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
      return (p, s), task.full_loss(p, d) if full_loss else loss
    (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), jnp.arange(length))
    return p, losses

  return jax.vmap(one)(params, data, keys)


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg", "ucfg",
                                             "length"))
def hrnn_forward(theta, states, keys, *, task_config, hcfg, ucfg, length):
  """The meta-training truncation (HRNN steps and meta-loss terms) without
  the meta-gradient."""
  fn = functools.partial(unroll._truncation, task=tasks.build_task(task_config),  # pylint: disable=protected-access
                         hcfg=hcfg, ucfg=ucfg, scan_len=length)
  return jax.vmap(fn, in_axes=(None, 0, 0, None))(theta, states, keys,
                                                   length)[0]


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
  ens = cfg.tasks.ensemble()
  rng = np.random.default_rng(args.seed)
  ucfg_mb = dataclasses.replace(ucfg, meta_loss="minibatch")
  pairs = max(1, n // 2)
  grads = ["hrnn+metagrad", "bptt mb", "pes", "pes mb"]
  cols = grads + ["hrnn fwd", "hrnn mb", "adam+f", "adam"]
  ratios = grads + ["hrnn mb"]
  count = {c: n for c in cols}
  count["pes"] = count["pes mb"] = 2 * pairs
  short = {"hrnn+metagrad": "bptt", "bptt mb": "bpttmb", "pes": "pes",
           "pes mb": "pesmb", "hrnn mb": "floor"}
  print(f"{'task group':<40} " + " ".join(f"{c:>13}" for c in cols) +
        " " + " ".join(f"{short[c] + '/A':>9}" for c in ratios))
  tot = dict.fromkeys(cols, 0.0)
  for _ in range(args.groups):
    tc = ens.sample(rng)
    states = unroll.init_group_states(theta, jax.random.PRNGKey(1),
                                      task_config=tc, hcfg=cfg.hrnn,
                                      ucfg=ucfg, num_tasks=n)
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    kw = dict(task_config=tc, length=args.length)
    pstate = {u: pes.init_pes_states(theta, jax.random.PRNGKey(1),
                                     task_config=tc, hcfg=cfg.hrnn, ucfg=u,
                                     num_pairs=pairs) for u in (ucfg, ucfg_mb)}
    pkeys = jax.random.split(jax.random.PRNGKey(2), pairs)

    def bptt_grad(u):
      return unroll.group_meta_grad(
          theta, states, keys, args.length, task_config=tc, hcfg=cfg.hrnn,
          ucfg=u, scan_len=args.length)[0]

    def pes_grad(u):
      return pes.pes_meta_grad(
          theta, pstate[u], pkeys, jax.random.PRNGKey(3), args.length,
          cfg.meta_grad.pes_std, task_config=tc, hcfg=cfg.hrnn, ucfg=u,
          scan_len=args.length)[0]

    fns = {
        "hrnn+metagrad": lambda: bptt_grad(ucfg),
        "bptt mb": lambda: bptt_grad(ucfg_mb),
        "pes": lambda: pes_grad(ucfg),
        "pes mb": lambda: pes_grad(ucfg_mb),
        "hrnn fwd": lambda: hrnn_forward(theta, states, keys, hcfg=cfg.hrnn,
                                         ucfg=ucfg, **kw),
        "hrnn mb": lambda: hrnn_forward(theta, states, keys, hcfg=cfg.hrnn,
                                        ucfg=ucfg_mb, **kw),
        "adam+f": lambda: adam_unroll(states.params, states.data, keys,
                                      full_loss=True, **kw),
        "adam": lambda: adam_unroll(states.params, states.data, keys, **kw),
    }
    # Seconds per task-step, so that columns of other widths compare.
    t = {c: _time(fns[c], args.repeats) / (count[c] * args.length)
         for c in cols}
    for c in cols:
      tot[c] += t[c] / args.groups
    print(f"{tc.name[:40]:<40} " + " ".join(f"{1 / t[c]:>13,.0f}"
                                            for c in cols) + " " +
          " ".join(f"{t[c] / t['adam']:>9.1f}" for c in ratios), flush=True)
  print(f"{'total':<40} " + " ".join(f"{1 / tot[c]:>13,.0f}" for c in cols)
        + " " + " ".join(f"{tot[c] / tot['adam']:>9.1f}" for c in ratios))
  h, a = tot["hrnn+metagrad"], tot["adam"]
  print(f"task-steps/s: HRNN with meta-gradient {1 / h:,.0f}, plain "
        f"Adam {1 / a:,.0f}; Adam is {h / a:.1f}x faster "
        f"({n} tasks per group, {args.length} steps, backend "
        f"{jax.default_backend()}). Where the factor comes from: the "
        f"meta-objective's full-data loss per step x{tot['adam+f'] / a:.2f}, "
        f"the HRNN step in place of Adam's x{tot['hrnn fwd'] / tot['adam+f']:.2f}"
        f", the meta-gradient (BPTT) x{h / tot['hrnn fwd']:.2f}. Cheaper "
        f"meta-gradients, time per task-step over Adam's: " +
        ", ".join(f"{c} {tot[c] / a:.1f}x" for c in grads[1:]) +
        f" (PES: {pairs} antithetic pairs, std {cfg.meta_grad.pes_std}). "
        f"Floor: the HRNN's forward unroll with the minibatch meta-loss "
        f"alone takes {tot['hrnn mb'] / a:.1f}x Adam's time per task-step.")

if __name__ == "__main__":
  main()
