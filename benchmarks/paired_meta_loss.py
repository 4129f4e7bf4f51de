"""Compares meta-training runs step by step on their training meta-loss.

Usage:
  python benchmarks/paired_meta_loss.py BASE_WORKDIR OTHER_WORKDIR [...]
      [--bands 0,100,250,500,1000] [--block 25]

Runs made with the same seed and the same task settings sample the same task
groups, unroll lengths and seeds at every meta-step (the sampling does not
read theta), so their meta-losses (``train/meta_loss`` in ``WORKDIR/tb``, the
mean log(loss / initial loss) of the step's truncations, lower is better)
are paired: the difference at a step is the effect of the two thetas on the
same truncations, without the task-to-task variance that hides it in either
curve. Prints, for each band of meta-steps, each run's mean meta-loss and
each other run's mean paired difference from the first, with a standard
error over blocks of ``--block`` steps (consecutive steps share tasks, so
they are not independent; 25 is the default group-resampling period).

The runs' ``config.json`` files are compared first: the fields that differ
are printed, and the seed and the task and unroll settings must agree
(except the unroll fields that change only how the gradient is taken:
``stop_second_derivatives`` and ``remat``). A PES run's
meta-loss is its perturbed particles' mean, which a larger
``meta_grad.pes_std`` (or perturbing more of theta: ``meta_grad.train_only``)
raises by itself (the noise costs loss): runs that perturb differently are
compared with a warning, and only their trends mean
something.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from evaluators import tb_events  # noqa: E402

# Config fields that decide which truncations a meta-step samples.
_PAIRED_KEYS = ("seed", "tasks", "unroll")
# Unroll fields that change only how the gradient is taken, not which
# truncations are sampled nor their forward meta-loss.
_GRADIENT_ONLY = ("unroll.stop_second_derivatives", "unroll.remat")


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def load_run(workdir: str) -> tuple[dict, dict[int, float]]:
  """The run's config (as a dict) and its meta-loss by meta-step."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise SystemExit(f"{workdir}: no config.json (not a `lopt train` workdir)")
  with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
  scalars = tb_events.read_scalars(os.path.join(workdir, "tb"))
  series = scalars.get("train/meta_loss", [])
  if not series:
    raise SystemExit(f"{workdir}: no train/meta_loss in tb/ (has it made a "
                     "meta-step?)")
  # A resumed run may log a step twice: the later value is the one kept.
  return cfg, {int(s): float(v) for s, v in series}


def _differences(base: dict, other: dict) -> list[tuple[str, str]]:
  """``(flat key, "key: old -> new")`` for each field that differs."""
  a, b = _flat(base), _flat(other)
  return [(k, f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
          for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not k.startswith(("learner.", "steps"))]


def config_differences(base: dict, other: dict) -> list[str]:
  return [line for _, line in _differences(base, other)]


def check_paired(base: dict, other: dict, name: str) -> None:
  bad = [line for key, line in _differences(base, other)
         if key.split(".")[0] in _PAIRED_KEYS and key not in _GRADIENT_ONLY]
  if bad:
    raise SystemExit(f"{name} does not sample the same truncations as the "
                     f"first run ({'; '.join(bad)}): its meta-losses are not "
                     "paired with the first run's")


def perturbation_differs(base: dict, other: dict) -> bool:
  """Whether the two runs' logged meta-losses average particles perturbed
  differently: by another PES std, on other entries of theta
  (``meta_grad.train_only``; absent in older configs: all of theta), or
  with PES in one run only."""
  def perturbation(cfg):
    mg = cfg.get("meta_grad", {})
    if mg.get("estimator") not in ("pes", "mix"):
      return None
    return mg.get("pes_std"), tuple(mg.get("train_only", ()))
  return perturbation(base) != perturbation(other)


def band_rows(runs: list[dict[int, float]], bands: list[int], block: int):
  """Per band: (lo, hi, n, means per run, (mean diff, stderr) per other)."""
  common = sorted(set.intersection(*(set(r) for r in runs)))
  rows = []
  for lo, hi in zip(bands[:-1], bands[1:]):
    steps = [s for s in common if lo < s <= hi]
    if not steps:
      continue
    means = [float(np.mean([r[s] for s in steps])) for r in runs]
    diffs = []
    for r in runs[1:]:
      d = np.array([r[s] - runs[0][s] for s in steps])
      blocks = [d[i:i + block].mean() for i in range(0, len(d), block)]
      se = (float(np.std(blocks, ddof=1) / math.sqrt(len(blocks)))
            if len(blocks) > 1 else float("nan"))
      diffs.append((float(d.mean()), se))
    rows.append((lo, hi, len(steps), means, diffs))
  return rows


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("workdirs", nargs="+", help="the first is the base")
  ap.add_argument("--bands", default="0,100,250,500,1000,2000,5000")
  ap.add_argument("--block", type=int, default=25)
  args = ap.parse_args(argv)
  if len(args.workdirs) < 2:
    raise SystemExit("give at least two workdirs (the first is the base)")
  bands = [int(x) for x in args.bands.split(",")]
  if bands != sorted(bands) or len(bands) < 2:
    raise SystemExit("--bands must be increasing meta-steps, e.g. 0,100,500")
  loaded = [load_run(w) for w in args.workdirs]
  names = [os.path.basename(os.path.normpath(w)) for w in args.workdirs]
  for (cfg, _), name in zip(loaded[1:], names[1:]):
    check_paired(loaded[0][0], cfg, name)
    print(f"{name} vs {names[0]}: " + ("; ".join(
        config_differences(loaded[0][0], cfg)) or "same config"))
    if perturbation_differs(loaded[0][0], cfg):
      print(f"  warning: {name} perturbs theta by another std or on other "
            "entries: its meta-losses (the particles' mean) carry another "
            "noise cost")
  header = ["steps", "n"] + [f"{n} meta_loss" for n in names] + [
      f"{n} - {names[0]} (se)" for n in names[1:]]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for lo, hi, n, means, diffs in band_rows([r for _, r in loaded], bands,
                                           args.block):
    cells = [f"{lo + 1}-{hi}", str(n)] + [f"{m:.4f}" for m in means] + [
        f"{d:+.4f} ({se:.4f})" for d, se in diffs]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
