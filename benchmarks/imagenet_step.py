"""ImageNet-model training steps with Adam vs the HRNN (a GPU check).

Usage (one prepared run on an accelerator host):
  python benchmarks/imagenet_step.py [--steps 100] [--batch 256]
      [--dtype bfloat16] [--models resnet50_v2,inception_v3]

Trains ResNet-50 V2 (224) and Inception V3 (299, auxiliary head on) on
synthetic ImageNet-shaped batches (``evaluators.imagenet.synthetic_batches``:
speed only, not evaluation) once with ``optax.adam`` and once with the
untrained HRNN (the update users run), with the evaluators' own problems and
runner. Prints, per model and optimizer, the median seconds per step
(compile excluded), the HRNN/Adam step-time ratio and the device's peak
memory. Each (model, optimizer) runs in its own subprocess so the peak
memory is its own. ``--batch 2 --steps 2 --size 75`` is a CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _child(model: str, opt_name: str, args) -> dict:
  import resource  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from evaluators import baselines, imagenet, problems, runner  # pylint: disable=import-outside-toplevel
  from metatrain.optimizer import hrnn

  net, size = problems.imagenet_model(model, args.dtype)
  size = args.size or size
  problem = problems.classifier(
      model, (model, args.batch, size, args.dtype, "synthetic"), net,
      (size, size, 3), batches=lambda seed: imagenet.synthetic_batches(
          args.batch, size, seed=seed))
  if opt_name == "adam":
    opt = baselines.baseline("adam", 1e-3)
  else:
    cfg = hrnn.HRNNConfig()
    opt = baselines.learned(cfg, hrnn.init_theta(jax.random.PRNGKey(0), cfg))
  r = runner.run(problem, opt, steps=args.steps, seed=0, chunk=1,
                 divergence_factor=float("inf"))
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  if peak is None:  # CPU: the host's peak RSS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"model": model, "optimizer": opt_name, "size": size,
          "sec_per_step": r.sec_per_step, "compile_s": r.compile_s,
          "peak_bytes": int(peak), "device": str(dev.device_kind),
          "final_loss": r.final_loss}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--size", type=int, default=0,
                  help="resolution (0: 224 ResNet, 299 Inception)")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--models", default="resnet50_v2,inception_v3")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    model, opt_name = args.child.split(":")
    print("RESULT " + json.dumps(_child(model, opt_name, args)), flush=True)
    return
  rows = []
  for model in args.models.split(","):
    for opt_name in ("adam", "hrnn"):
      cmd = [sys.executable, __file__, "--child", f"{model}:{opt_name}",
             "--steps", str(args.steps), "--batch", str(args.batch),
             "--size", str(args.size), "--dtype", args.dtype]
      out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
      line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
      if out.returncode or not line:
        print(f"{model} {opt_name}: FAILED\n{out.stderr[-3000:]}")
        continue
      rows.append(json.loads(line[0][7:]))
      r = rows[-1]
      print(f"{model:<14} {opt_name:<5} {r['size']}px batch {args.batch} "
            f"{args.dtype}: {r['sec_per_step'] * 1e3:8.1f} ms/step, compile "
            f"{r['compile_s']:.0f}s, peak {r['peak_bytes'] / 2**30:.2f} GiB "
            f"({r['device']})", flush=True)
  by = {(r["model"], r["optimizer"]): r for r in rows}
  for model in args.models.split(","):
    if (model, "adam") in by and (model, "hrnn") in by:
      a, h = by[(model, "adam")], by[(model, "hrnn")]
      print(f"{model}: HRNN/Adam step time {h['sec_per_step'] / a['sec_per_step']:.2f}x, "
            f"peak memory {h['peak_bytes'] / a['peak_bytes']:.2f}x")


if __name__ == "__main__":
  main()
