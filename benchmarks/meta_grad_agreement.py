"""Where is the meta-gradient, and do task groups agree on it?

Usage:
  python benchmarks/meta_grad_agreement.py [--config v2] [--set a.b=c ...]
      [--workdir W [--step N]] [--groups 8] [--truncations 1] [--seed 123]

At one theta (the config's untrained start, or a checkpoint of ``--workdir``
with that run's config), samples ``--groups`` task groups from the
training ensemble as meta-training does, computes each group's meta-
gradient for one truncation with the config's estimator, and prints per
group of theta (the top-level keys):
- its share of the summed squared gradient norm: where the gradient is;
- the mean (and standard deviation) over pairs of groups of the cosine
  between their gradients: whether the tasks pull the same way (1: all
  agree; about 0: no common direction that a meta-optimizer could follow);
- with ``--truncations N`` > 1 (each group runs N consecutive truncations,
  as it would over N meta-steps), the mean cosine between truncations of
  the same group too: if that is high and the between-group one is not,
  tasks disagree; if both are near 0, each truncation's estimate is noise.
A group whose gradient is exactly zero for every task shows "zero".
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.theta_drift import flat_groups  # noqa: E402
from metatrain.distributed import checkpoints  # noqa: E402
from metatrain.distributed.workdir import Workdir  # noqa: E402
from metatrain.optimizer import hrnn  # noqa: E402
from metatrain.training import config as config_lib  # noqa: E402
from metatrain.training import meta_step  # noqa: E402


def _cosines(vecs: list[np.ndarray], same: list[int], within: bool
             ) -> list[float]:
  """Cosines over pairs of ``vecs`` whose labels ``same`` are equal
  (``within``) or differ; pairs with a zero side are left out."""
  norms = [float(np.linalg.norm(v)) for v in vecs]
  return [float(vecs[i] @ vecs[j]) / (norms[i] * norms[j])
          for i, j in itertools.combinations(range(len(vecs)), 2)
          if norms[i] and norms[j] and (same[i] == same[j]) == within]


def agreement(grads: list[dict[str, np.ndarray]],
              groups: list[int] | None = None) -> list[dict]:
  """Rows for "all" and each theta group: ``size``, ``share`` of the
  squared norm, ``cos`` and ``cos_sd`` over pairs of gradients from
  different task groups, and ``cos_within``, the mean over pairs from the
  same task group (``groups[i]`` is gradient i's task group; None: each
  its own). Cosines are None where no pair has two nonzero sides."""
  groups = list(range(len(grads))) if groups is None else groups
  keys = list(grads[0])
  total = sum(float(np.sum(g[k] ** 2)) for g in grads for k in keys)
  rows = []
  for name in ["all"] + keys:
    vecs = [np.concatenate([g[k] for k in keys]) if name == "all"
            else g[name] for g in grads]
    cs = _cosines(vecs, groups, within=False)
    cw = _cosines(vecs, groups, within=True)
    rows.append({"group": name, "size": int(vecs[0].size),
                 "share": (sum(float(np.sum(v * v)) for v in vecs) / total
                           if total else 0.0),
                 "cos": float(np.mean(cs)) if cs else None,
                 "cos_sd": float(np.std(cs)) if cs else None,
                 "cos_within": float(np.mean(cw)) if cw else None})
  return rows


def add_theta_args(ap: argparse.ArgumentParser) -> None:
  """The options that ``theta_and_config`` reads."""
  ap.add_argument("--config", default="v2")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--workdir", default="")
  ap.add_argument("--step", type=int, default=None)


def theta_and_config(args):
  """``(config, theta, where)`` for ``--workdir``/``--step`` (a checkpoint,
  with its run's config) or, without a workdir, ``--config``'s start;
  ``--set`` overrides apply to either."""
  if not args.workdir:
    cfg = config_lib.load(args.config, args.set)
    return cfg, hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn), \
        "the untrained start"
  cfg = config_lib.load(Workdir(args.workdir).config, args.set)
  with checkpoints.Checkpointer(args.workdir, read_only=True) as ck:
    step = args.step if args.step is not None else ck.latest_step()
    _, theta = ck.restore_lopt(step)
  return cfg, jax.tree_util.tree_map(np.asarray, theta), \
      f"{args.workdir} step {step}"


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_theta_args(ap)
  ap.add_argument("--groups", type=int, default=8)
  ap.add_argument("--truncations", type=int, default=1,
                  help="consecutive truncations per group (> 1 also "
                  "prints the cosine within groups)")
  ap.add_argument("--seed", type=int, default=123)
  args = ap.parse_args(argv)
  if args.groups < 2 or args.truncations < 1:
    ap.error("--groups must be >= 2 (cosines are over pairs) and "
             "--truncations >= 1")
  cfg, theta, where = theta_and_config(args)
  ensemble = cfg.tasks.ensemble()
  rng = np.random.default_rng(args.seed)
  grads, labels, t0 = [], [], time.time()
  for i in range(args.groups):
    group = meta_step.TaskGroup.sample(rng, ensemble, cfg, theta)
    for _ in range(args.truncations):
      grad, _, _ = group.meta_grad(theta, rng, cfg)
      grads.append(flat_groups(grad))
      labels.append(i)
    print(f"group {i + 1}/{args.groups}: {group.label} "
          f"({time.time() - t0:.0f} s)", flush=True)
  rows = agreement(grads, labels)
  within = args.truncations > 1
  print(f"\nAt {where}: estimator {cfg.meta_grad.estimator}, "
        f"{args.groups} task groups, {args.truncations} truncation(s) "
        "each\n")
  print("| theta group | size | share of squared norm | cosine between "
        "groups, mean (sd) |" + (" cosine within groups |" if within else ""))
  print("|---|---:|---:|---:|" + ("---:|" if within else ""))
  for r in rows:
    cos = ("zero" if r["cos"] is None
           else f"{r['cos']:+.3f} ({r['cos_sd']:.3f})")
    cw = ("" if not within else " zero |" if r["cos_within"] is None
          else f" {r['cos_within']:+.3f} |")
    print(f"| {r['group']} | {r['size']} | {r['share']:.3f} | {cos} |{cw}")
  return rows


if __name__ == "__main__":
  main()
