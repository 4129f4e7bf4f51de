"""Candidates on the line from an optimizer's meta-training start to it.

Usage:
  python benchmarks/interpolate.py --out DIR [--from hrnn-v1 | FILE]
      [--alpha 0.5 --alpha 1.5 ...] [--global-step learned|capped|fixed]

Each candidate's meta-parameters are ``start + alpha * (trained - start)``,
where ``start`` is the untrained optimizer its run began from, rebuilt
from the file's own provenance (its config and the run's seed). alpha 0 is
the start (Adam exactly, for the nominal-Adam start), alpha 1 the file
itself; alpha between 0 and 1 shrinks what meta-training learned towards
the hand-designed optimizer, as weight-space ensembling does for
fine-tuned models; alpha above 1 extrapolates. ``--global-step`` re-exports
each candidate with another step-size rule (e.g. ``capped``: the user's
rate becomes a ceiling). The files are written to ``--out`` as
``NAME-a{alpha}[-STEP].lopt``; score them on validation with
``ship_pretrained.py --dry-run --candidate-file ...``.

The rebuilt start is checked against the file: Adam moves each
meta-parameter by about the meta-learning rate per meta-step, so a
trained file further than ``steps x rate x 2`` from it was not trained
from that start, and is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from metatrain.optimizer import export, hrnn, zoo  # noqa: E402


def start_of(config: hrnn.HRNNConfig, meta: dict) -> hrnn.Theta:
  """The untrained meta-parameters the file's meta-training began from."""
  train = meta.get("train_config") or {}
  if "seed" not in train:
    raise ValueError("the file records no meta-training seed "
                     "(metadata train_config.seed): its start cannot be "
                     "rebuilt; export it with `lopt export`")
  return hrnn.init_theta(jax.random.PRNGKey(int(train["seed"])), config)


def check_start(theta: hrnn.Theta, start: hrnn.Theta, meta: dict) -> float:
  """The largest |theta - start|; ValueError if meta-training cannot explain it."""
  steps = (meta.get("meta_training") or {}).get("steps")
  rate = ((meta.get("train_config") or {}).get("meta_opt") or {}).get(
      "learning_rate")
  far = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(start)))
  if steps is None or rate is None:
    raise ValueError("the file records no meta-training steps or meta "
                     "learning rate: its start cannot be checked")
  if far > 2 * steps * rate:
    raise ValueError(f"the rebuilt start is {far:.3g} from the file's "
                     f"theta, more than {steps} meta-steps at rate {rate:g} "
                     "can move it: the file was not trained from it")
  return far


def interpolate(start: hrnn.Theta, theta: hrnn.Theta,
                alpha: float) -> hrnn.Theta:
  """``start + alpha * (theta - start)``, leaf by leaf, in float32."""
  return jax.tree.map(
      lambda s, t: np.asarray(s, np.float32)
      + np.float32(alpha) * (np.asarray(t, np.float32)
                             - np.asarray(s, np.float32)), start, theta)


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--from", dest="src", default=zoo.DEFAULT,
                  help="a shipped optimizer's name or a .lopt file")
  ap.add_argument("--alpha", type=float, action="append", default=[],
                  help="the point on the line (0: the start, 1: the file); "
                  "repeat for several (default: 0.5 and 1.5)")
  ap.add_argument("--global-step", choices=("learned", "capped", "fixed"),
                  help="re-export with this step-size rule (default: the "
                  "file's)")
  ap.add_argument("--out", required=True, help="directory for the files")
  args = ap.parse_args(argv)
  path = args.src if os.path.isfile(args.src) else zoo.pretrained_path(
      args.src)
  name = os.path.splitext(os.path.basename(path))[0]
  config, theta, meta = export.read_optimizer(path)
  start = start_of(config, meta)
  far = check_start(theta, start, meta)
  print(f"{name}: rebuilt its start (seed "
        f"{meta['train_config']['seed']}); largest change "
        f"{far:.3g} over {meta['meta_training']['steps']} meta-steps")
  if args.global_step:
    config = dataclasses.replace(config, global_step=args.global_step)
  os.makedirs(args.out, exist_ok=True)
  for alpha in args.alpha or [0.5, 1.5]:
    suffix = f"-{args.global_step}" if args.global_step else ""
    out = os.path.join(args.out, f"{name}-a{alpha:g}{suffix}.lopt")
    export.save_optimizer(out, config, interpolate(start, theta, alpha), {
        "name": os.path.basename(out)[:-len(".lopt")],
        "derived_from": {"file": name, "alpha": alpha,
                         "global_step": config.global_step,
                         "rule": "start + alpha * (theta - start); start "
                                 "rebuilt from train_config.seed"},
        "train_config": meta.get("train_config"),
        "meta_training": meta.get("meta_training")})
    print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
