"""Is a meta-training run learning, or is theta random-walking on noise?

Usage:
  python benchmarks/theta_drift.py WORKDIR [WORKDIR ...]
      [--start 0] [--stop 500] [--every 10]

For each run, theta is read from its checkpoints every ``--every``
meta-steps in ``[--start, --stop]``. Per group of theta (the top-level
keys: ``param_rnn``, ``w_lr``, ...) it prints the net displacement (the
norm of last minus first), the path length (the sum of the norms of the
segments) and their ratio. A parameter that follows a consistent
meta-gradient moves in a straight line (ratio near 1); one whose
meta-gradient is noise random-walks (ratio near 1/sqrt(segments) for SGD).

The meta-optimizer's momentum smooths noise, which raises a random walk's
ratio, so the script prints, beside the runs, the same ratio for the run's
meta-optimizer (``meta_opt`` in its config.json, built as meta-training
builds it: the clips, then Adam or RMSProp at its rate) fed Gaussian noise plus a constant signal of a given size
per coordinate, over the same segments: the noise floor (signal 0) and a
calibration from which a group's ratio reads as a per-step signal-to-noise
ratio of its meta-gradient.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from metatrain.distributed import checkpoints  # noqa: E402
from metatrain.distributed.workdir import Workdir  # noqa: E402
from metatrain.training import config as config_lib  # noqa: E402
from metatrain.training import meta_step  # noqa: E402

SIGNALS = (0.0, 0.05, 0.1, 0.2, 0.5)


def drift_ratio(traj: list[np.ndarray]) -> tuple[float, float, float]:
  """``(net, path, net / path)`` of a trajectory of flat vectors (ratio
  nan for a trajectory that never moved)."""
  net = float(np.linalg.norm(traj[-1] - traj[0]))
  path = float(sum(np.linalg.norm(b - a) for a, b in zip(traj, traj[1:])))
  return net, path, (net / path if path > 0 else float("nan"))


def simulated_ratio(meta_opt: config_lib.MetaOptConfig, segments: int,
                    every: int, signal: float, dim: int = 4096,
                    seed: int = 0) -> float:
  """The ratio of ``drift_ratio`` for the run's meta-optimizer
  (``meta_step.meta_optimizer``: its clips, then Adam or RMSProp) on
  gradients ``signal + N(0, 1)`` per coordinate, sampled every ``every``
  steps."""
  opt = meta_step.meta_optimizer(meta_opt)
  key = jax.random.PRNGKey(seed)
  steps = segments * every

  def step(carry, k):
    p, s = carry
    g = signal + jax.random.normal(k, (dim,))
    u, s = opt.update(g, s, p)
    p = optax.apply_updates(p, u)
    return (p, s), p

  p0 = np.zeros(dim, np.float32)
  _, ps = jax.lax.scan(step, (p0, opt.init(p0)),
                       jax.random.split(key, steps))
  ps = np.asarray(ps)
  traj = [p0] + [ps[i] for i in range(every - 1, steps, every)]
  return drift_ratio(traj)[2]


def flat_groups(tree: dict) -> dict[str, np.ndarray]:
  """Each top-level entry of a theta-shaped dict as one float64 vector."""
  return {k: np.concatenate([np.ravel(np.asarray(x, np.float64))
                             for x in jax.tree_util.tree_leaves(v)])
          for k, v in sorted(tree.items())}


def load_trajectory(workdir: str, start: int, stop: int, every: int
                    ) -> tuple[list[int], list[dict[str, np.ndarray]]]:
  """The checkpointed steps in ``[start, stop]`` that are multiples of
  ``every``, and theta at each, flattened per top-level group."""
  with checkpoints.Checkpointer(workdir, read_only=True) as ck:
    steps = [s for s in ck.all_steps()
             if start <= s <= stop and s % every == 0]
    if len(steps) < 3:
      raise SystemExit(
          f"{workdir}: {len(steps)} checkpoints in [{start}, {stop}] at "
          f"multiples of {every}; need 3 (train with learner.save_every="
          f"{every} and keep_last or keep_every that keeps them)")
    thetas = [flat_groups(ck.restore_lopt(s)[1]) for s in steps]
  return steps, thetas


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("workdirs", nargs="+")
  ap.add_argument("--start", type=int, default=0)
  ap.add_argument("--stop", type=int, default=500)
  ap.add_argument("--every", type=int, default=10)
  args = ap.parse_args(argv)
  if args.every < 1 or args.stop <= args.start:
    ap.error("need --every >= 1 and --stop > --start")
  floors: dict[tuple, list[float]] = {}
  for wd in args.workdirs:
    meta_opt = config_lib.load(Workdir(wd).config).meta_opt
    steps, thetas = load_trajectory(wd, args.start, args.stop, args.every)
    segments = len(steps) - 1
    print(f"\n### {wd}: meta-steps {steps[0]}-{steps[-1]}, {segments} "
          f"segments, meta-optimizer {meta_opt.name} "
          f"{meta_opt.learning_rate:g}\n")
    print("| group | size | net | path | net / path |")
    print("|---|---:|---:|---:|---:|")
    allv = [np.concatenate(list(t.values())) for t in thetas]
    for name, traj in [("all", allv)] + [
        (g, [t[g] for t in thetas]) for g in thetas[0]]:
      net, path, r = drift_ratio(traj)
      print(f"| {name} | {traj[0].size} | {net:.4g} | {path:.4g} | "
            f"{r:.3f} |")
    key = (meta_opt, segments, args.every)
    if key not in floors:
      floors[key] = [simulated_ratio(meta_opt, segments, args.every, s)
                     for s in SIGNALS]
    print("\nThe same meta-optimizer on signal + N(0, 1) per coordinate "
          "(signal-to-noise per step: net / path): " + ", ".join(
              f"{s:g}: {r:.3f}" for s, r in zip(SIGNALS, floors[key])))


if __name__ == "__main__":
  main()
