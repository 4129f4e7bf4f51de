"""How much memory does a truncated-BPTT program hold, with and without remat?

Usage:
  python benchmarks/bptt_memory.py [--config v2] [--set a.b=c ...]
      [--samples 60] [--seed 0] [--families image_conv,image_mlp]
      [--run N]

Samples ``--samples`` task configs from the config's training ensemble (as
meta-training does), keeps the first of each program bucket, and compiles
each bucket's BPTT group program (``unroll.group_meta_grad``: the config's
group size and longest truncation) twice, with ``unroll.remat`` off and on.
It prints XLA's memory analysis of both side by side (the temporaries are
what the heap must hold at the program's peak, on top of its arguments),
and the seconds each took to compile (no compile cache is used).

With ``--run N`` it also runs each program N + 1 times on the same inputs
(the first call warms up), printing the mean seconds of the last N, and
the largest difference between the two gradients relative to the largest
gradient entry: remat must not change the meta-gradient.
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

from metatrain.optimizer import hrnn  # noqa: E402
from metatrain.training import config as config_lib  # noqa: E402
from metatrain.training import meta_step, unroll  # noqa: E402


def _mib(n: float) -> str:
  return f"{n / 2**20:,.0f}"


def buckets(cfg, samples: int, seed: int, families: set[str]):
  """``([(bucket name, its first sampled TaskGroup)], theta)``, in order
  of sampling."""
  rng = np.random.default_rng(seed)
  ensemble = cfg.tasks.ensemble()
  theta = hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn)
  seen, out = set(), []
  for _ in range(samples):
    g = meta_step.TaskGroup.sample(rng, ensemble, cfg, theta)
    name = getattr(g.bucket, "name", str(g.bucket))
    if name in seen or (families and g.config.family not in families):
      continue
    seen.add(name)
    out.append((name, g))
  return out, theta


def measure(cfg, group, theta, remat: bool, run: int):
  """``({"temp", "args": bytes, "compile": seconds}, mean seconds of a
  call or None, gradient or None)``."""
  ucfg = dataclasses.replace(cfg.unroll, remat=remat)
  scan_len = unroll.bucket(ucfg.max_steps, ucfg)
  keys = jax.random.split(jax.random.PRNGKey(1), ucfg.tasks_per_group)
  kw = dict(task_config=group.bucket, hcfg=cfg.hrnn, ucfg=ucfg,
            scan_len=scan_len)
  args = (theta, group.states, keys, ucfg.max_steps, group.hparams)
  t0 = time.perf_counter()
  compiled = unroll.group_meta_grad.lower(*args, **kw).compile()
  seconds = time.perf_counter() - t0
  stats = compiled.memory_analysis()
  mem = {"temp": stats.temp_size_in_bytes,
         "args": stats.argument_size_in_bytes, "compile": seconds}
  if not run:
    return mem, None, None
  grad = jax.block_until_ready(compiled(*args)[0])
  t0 = time.perf_counter()
  for _ in range(run):
    jax.block_until_ready(compiled(*args)[0])
  return mem, (time.perf_counter() - t0) / run, grad


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="v2")
  ap.add_argument("--set", action="append", default=[], dest="sets")
  ap.add_argument("--samples", type=int, default=60)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--families", default="",
                  help="comma-separated families to keep (default: all)")
  ap.add_argument("--run", type=int, default=0)
  args = ap.parse_args(argv)
  cfg = config_lib.load(args.config, ["meta_grad.estimator=bptt", *args.sets])
  fams = {f for f in args.families.split(",") if f}
  groups, theta = buckets(cfg, args.samples, args.seed, fams)
  print(f"config {args.config} {' '.join(args.sets)}: "
        f"{cfg.unroll.tasks_per_group} tasks x {cfg.unroll.max_steps} steps "
        f"per truncation; {len(groups)} buckets from {args.samples} samples")
  head = ("| bucket | arguments MiB | temporaries MiB, remat off | remat on "
          "| off / on | compile s off | compile s on |")
  if args.run:
    head += " seconds off | seconds on | on / off | max grad difference |"
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  peak, secs = [0, 0], [0.0, 0.0]
  for name, g in groups:
    m0, t0, g0 = measure(cfg, g, theta, False, args.run)
    m1, t1, g1 = measure(cfg, g, theta, True, args.run)
    peak = [max(peak[0], m0["temp"]), max(peak[1], m1["temp"])]
    row = (f"| {name} | {_mib(m0['args'])} | {_mib(m0['temp'])} | "
           f"{_mib(m1['temp'])} | {m0['temp'] / max(m1['temp'], 1):.1f} | "
           f"{m0['compile']:.1f} | {m1['compile']:.1f} |")
    if args.run:
      a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g0)])
      b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g1)])
      rel = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
      row += f" {t0:.2f} | {t1:.2f} | {t1 / t0:.2f} | {rel:.1e} |"
      secs = [secs[0] + t0, secs[1] + t1]
    print(row, flush=True)
  line = (f"\nall {len(groups)} buckets: the largest temporaries "
          f"{_mib(peak[0])} MiB with remat off, {_mib(peak[1])} MiB on")
  if args.run:
    line += (f"; seconds summed over buckets {secs[0]:.2f} off, "
             f"{secs[1]:.2f} on ({secs[1] / secs[0]:.2f}x)")
  print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
