"""Per-step time of the HRNN update against optax.adam, side by side.

Usage:
  python benchmarks/optimizer_overhead.py [--sizes 1e4,1e6,2.5e7] [--iters N]
      [--layouts resnet,flat] [--opts adam,hrnn-jax,hrnn-kernel]

For each size and params layout it builds a params pytree of that many fp32
scalars, jits one optimizer step for each optimizer and times it. The
layouts: ``resnet``, a few big matrices and up to 64 small vectors (biases,
norms); ``flat``, one tensor. The optimizers: ``adam`` (optax), ``hrnn-jax``
(the pure-JAX HRNN update, ``kernel=False``) and ``hrnn-kernel`` (its
per-parameter pass as the compiled CPU kernel,
``metatrain.optimizer.hrnn_kernel``; "n/a" where it is not built or not
supported; ``LOPT_HRNN_ISA=avx2`` or ``base`` times a lower instruction
set's copy). Every (optimizer, size)
pair runs in a fresh subprocess so the peak memory figure is its own. It
prints each HRNN/Adam time ratio, the optimizer state bytes per parameter
and the peak memory (host RSS on CPU, device peak on accelerators), also
per parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params(n: int, layout: str = "resnet"):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if layout == "flat":
    return {"w": jnp.zeros((n,))}
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


def measure(opt: str, n: int, iters: int, layout: str = "resnet") -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from metatrain import hrnn_optax
  from metatrain.optimizer import hrnn
  params = _params(n, layout)
  if opt == "adam":
    tx = optax.adam(1e-3)
  else:
    from metatrain.optimizer import hrnn_kernel
    cfg = hrnn.HRNNConfig()
    kernel = opt == "hrnn-kernel"
    if kernel and not hrnn_kernel.available():
      return {"opt": opt, "n": n, "unavailable":
              hrnn_kernel.unavailable_reason()}
    tx = hrnn_optax(cfg, hrnn.init_theta(jax.random.PRNGKey(0), cfg),
                    kernel=kernel)
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
  isa = None
  if opt == "hrnn-kernel":
    from metatrain.optimizer import hrnn_kernel
    isa = hrnn_kernel.isa()
  return {"opt": opt, "n": n, "median_s": times[len(times) // 2], "isa": isa,
          "state_bytes_per_param": _tree_bytes(state) / n,
          "peak_bytes": peak, "backend": dev.platform,
          "device": dev.device_kind}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="1e4,1e6,2.5e7")
  ap.add_argument("--iters", type=int, default=0,
                  help="timed steps per point (default: by size)")
  ap.add_argument("--layouts", default="resnet,flat")
  ap.add_argument("--opts", default="adam,hrnn-jax,hrnn-kernel")
  ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args._child:  # pylint: disable=protected-access
    opt, n, layout = args._child  # pylint: disable=protected-access
    n = int(float(n))
    iters = args.iters or (50 if n <= 1e6 else 5)
    print(json.dumps(measure(opt, n, iters, layout)))
    return
  opts = args.opts.split(",")
  if opts[0] != "adam":
    raise SystemExit("--opts must start with adam (the ratios' baseline)")
  hrnns = opts[1:]
  print(f"{'layout':>7} {'params':>9} {'adam ms':>9} " +
        "".join(f"{o + ' ms':>16} {'/adam':>6} " for o in hrnns) +
        f"{'adam B/p':>9} {'hrnn B/p':>9} {'adam peak':>10} " +
        "".join(f"{o + ' peak':>18} " for o in hrnns))
  backend, isa = None, None
  for layout in args.layouts.split(","):
    for s in args.sizes.split(","):
      res = {}
      for opt in opts:
        cmd = [sys.executable, __file__, "--_child", opt, s, layout]
        if args.iters:
          cmd += ["--iters", str(args.iters)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res[opt] = json.loads(out.stdout.strip().splitlines()[-1])
      a = res["adam"]
      backend = f"{a['backend']} ({a['device']})"
      n = a["n"]
      row = f"{layout:>7} {n:>9.2e} {a['median_s']*1e3:>9.3f} "
      peaks, bpp = "", "n/a"
      for o in hrnns:
        h = res[o]
        if "unavailable" in h:
          row += f"{'n/a':>16} {'':>6} "
          peaks += f"{'n/a':>18} "
          continue
        bpp = f"{h['state_bytes_per_param']:.1f}"
        isa = h.get("isa") or isa
        row += (f"{h['median_s']*1e3:>16.3f} "
                f"{h['median_s']/a['median_s']:>6.1f} ")
        peaks += (f"{h['peak_bytes']/2**20:>7.0f}Mi {h['peak_bytes']/n:>6.0f}"
                  "B/p ")
      row += (f"{a['state_bytes_per_param']:>9.1f} {bpp:>9} "
              f"{a['peak_bytes']/2**20:>8.0f}Mi " + peaks)
      print(row, flush=True)
  if isa:
    kernel = (f"; kernel instruction set: {isa} ($LOPT_HRNN_ISA picks "
              "another)")
  else:
    from metatrain.optimizer import hrnn_kernel
    kernel = f"; kernel unavailable: {hrnn_kernel.unavailable_reason()}"
  print(f"backend: {backend}{kernel}")


if __name__ == "__main__":
  main()
