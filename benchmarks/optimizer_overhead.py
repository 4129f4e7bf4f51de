"""Per-step time of the HRNN update against optax.adam, side by side.

Usage:
  python benchmarks/optimizer_overhead.py [--sizes 1e4,1e6,2.5e7] [--iters N]

For each size it builds a params pytree of that many fp32 scalars (split into
tensors like a real network), jits one optimizer step for each optimizer and
times it. Every (optimizer, size) pair runs in a fresh subprocess so the peak
memory figure is its own. It prints the HRNN/Adam time ratio, the optimizer
state bytes per parameter and the peak memory (host RSS on CPU, device peak
on accelerators).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _params(n: int):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  # ResNet-like: a few big matrices, many small vectors (biases, norms).
  n_small = min(64, max(1, n // 1000))
  small = [jnp.zeros((64,)) for _ in range(n_small)]
  rest = n - 64 * n_small
  n_big = 16 if rest > 16 * 1024 else 1
  big = [jnp.zeros((rest // n_big,)) for _ in range(n_big)]
  big[-1] = jnp.zeros((rest - (n_big - 1) * (rest // n_big),))
  return {"big": big, "small": small}


def _tree_bytes(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def measure(opt: str, n: int, iters: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from metatrain import hrnn, hrnn_optax  # pylint: disable=import-outside-toplevel
  params = _params(n)
  if opt == "adam":
    tx = optax.adam(1e-3)
  else:
    cfg = hrnn.HRNNConfig()
    tx = hrnn_optax(cfg, hrnn.init_theta(jax.random.PRNGKey(0), cfg))
  state = tx.init(params)
  grads = jax.tree_util.tree_map(lambda p: p + 0.01, params)
  step = jax.jit(lambda g, s: tx.update(g, s)[1], donate_argnums=(1,))
  state = jax.block_until_ready(step(grads, state))  # compile + warm up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state = jax.block_until_ready(step(grads, state))
    times.append(time.perf_counter() - t0)
  times.sort()
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  peak = (stats.get("peak_bytes_in_use", 0) if stats else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return {"opt": opt, "n": n, "median_s": times[len(times) // 2],
          "state_bytes_per_param": _tree_bytes(state) / n,
          "peak_bytes": peak, "backend": dev.platform,
          "device": dev.device_kind}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="1e4,1e6,2.5e7")
  ap.add_argument("--iters", type=int, default=0,
                  help="timed steps per point (default: by size)")
  ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args._child:  # pylint: disable=protected-access
    opt, n = args._child  # pylint: disable=protected-access
    n = int(float(n))
    iters = args.iters or (50 if n <= 1e6 else 5)
    print(json.dumps(measure(opt, n, iters)))
    return
  print(f"{'params':>10} {'adam ms':>10} {'hrnn ms':>10} {'ratio':>7} "
        f"{'adam B/p':>9} {'hrnn B/p':>9} {'adam peak':>10} {'hrnn peak':>10}")
  for s in args.sizes.split(","):
    res = {}
    for opt in ("adam", "hrnn"):
      cmd = [sys.executable, __file__, "--_child", opt, s]
      if args.iters:
        cmd += ["--iters", str(args.iters)]
      out = subprocess.run(cmd, check=True, capture_output=True, text=True)
      res[opt] = json.loads(out.stdout.strip().splitlines()[-1])
    a, h = res["adam"], res["hrnn"]
    print(f"{a['n']:>10.2e} {a['median_s']*1e3:>10.3f} "
          f"{h['median_s']*1e3:>10.3f} {h['median_s']/a['median_s']:>7.1f} "
          f"{a['state_bytes_per_param']:>9.1f} "
          f"{h['state_bytes_per_param']:>9.1f} "
          f"{a['peak_bytes']/2**20:>8.0f}Mi {h['peak_bytes']/2**20:>8.0f}Mi",
          flush=True)
  print(f"backend: {a['backend']} ({a['device']})")


if __name__ == "__main__":
  main()
