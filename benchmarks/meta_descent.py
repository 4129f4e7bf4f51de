"""Does a step along the meta-gradient lower the meta-loss, and where?

Usage:
  python benchmarks/meta_descent.py [--config v2] [--set a.b=c ...]
      [--workdir W [--step N]] [--groups 4] [--heldout 4]
      [--eps 1e-4,3e-4,1e-3,3e-3] [--seed 123] [--mean-only]
      [--heldout-seed N]

At one theta (the config's untrained start, or a checkpoint of
``--workdir`` with that run's config, as in ``meta_grad_agreement.py``),
samples ``--groups`` task groups from the training ensemble as
meta-training does and runs each for one truncation (T1) with the config's
estimator, then for the next one (T2), keeping the tasks' states before
each. Each truncation is replayed exactly (same tasks, data, length and
keys) at moved thetas ``theta - eps * sign(g)``, which is the first step
Adam takes at meta-learning rate ``eps`` on the gradient ``g``, where ``g``
is
- each group's own T1 gradient, measured on that same truncation (the
  objective it is the gradient of), on the same tasks' T2, and on the
  other groups' T1;
- random signs on the coordinates where the group's gradient is nonzero
  (the same step size in no particular direction: how rough the
  meta-loss is at that eps), measured on the same truncation;
- the groups' mean gradient (one meta-step, ``meta_step.average_grads``),
  measured on the groups' T1 (in sample), their T2, and ``--heldout``
  fresh groups (out of sample).
Prints the mean change of the meta-loss (and its standard error) for each
eps: negative is descent. The first row is the change that the gradient
predicts to first order, ``-eps * |g|_1``, for its own truncation.

Reading it: if the own-truncation change does not follow the prediction at
small eps, the gradient does not describe its own objective (chaos, or a
bug), and the random-sign row says how large the noise it is lost in is;
if it does and the other rows do not fall, what a meta-step learns is
the sampled truncations' own noise, which meta-training averages away.
A PES group's meta-loss is its perturbed particles' mean. With
``meta_grad.normalize_groups`` each group's gradient is scaled to unit
norm, so the prediction row is no longer a change of the meta-loss.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.meta_grad_agreement import add_theta_args  # noqa: E402
from benchmarks.meta_grad_agreement import theta_and_config  # noqa: E402
from metatrain.training import meta_step  # noqa: E402

ROWS = (("own", "prediction", "own gradient, first-order prediction"),
        ("own", "same", "own gradient, same truncation"),
        ("random", "same", "random signs on its support, same truncation"),
        ("own", "next", "own gradient, the tasks' next truncation"),
        ("own", "other", "own gradient, other groups' truncations"),
        ("mean", "same", "mean gradient, the groups' truncations"),
        ("mean", "next", "mean gradient, their next truncations"),
        ("mean", "heldout", "mean gradient, held-out groups"))


class _Replay:
  """One truncation of one task group, replayable at any theta."""

  def __init__(self, group: meta_step.TaskGroup, seed: tuple[int, ...]):
    self.group, self.states, self.seed = group, group.states, seed

  def run(self, theta, cfg):
    """``(grad, metrics)`` of the truncation at ``theta``; leaves the group
    holding the tasks' states after it."""
    self.group.states = self.states
    grad, metrics, _ = self.group.meta_grad(
        theta, np.random.default_rng(self.seed), cfg)
    return grad, metrics

  def loss(self, theta, cfg) -> float:
    return float(self.run(theta, cfg)[1]["meta_loss"])


def sign_step(theta, grad, eps: float):
  """``theta - eps * sign(grad)``, leaf by leaf."""
  return jax.tree_util.tree_map(
      lambda t, g: t - eps * jnp.sign(g).astype(t.dtype), theta, grad)


def random_signs(grad, rng: np.random.Generator):
  """Random +-1 where ``grad`` is nonzero, 0 elsewhere: a step of the same
  size as ``sign_step``'s along ``grad``, in no particular direction."""
  return jax.tree_util.tree_map(
      lambda g: np.where(np.asarray(g) != 0,
                         rng.choice([-1.0, 1.0], size=np.shape(g)),
                         0.0).astype(np.float32), grad)


def _l1(grad) -> float:
  return sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree_util.tree_leaves(
      grad))


def _mean_se(xs: list[float]) -> tuple[float, float]:
  if not xs:
    return float("nan"), float("nan")
  a = np.asarray(xs, np.float64)
  se = float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else float("nan")
  return float(a.mean()), se


def descent(theta, cfg, groups: int, heldout: int, eps: list[float],
            seed: int, log=functools.partial(print, flush=True),
            mean_only: bool = False, heldout_seed: int | None = None
            ) -> dict[tuple[str, str], list[tuple]]:
  """``{(direction, measured on): [(mean change, se) per eps]}`` (the
  ``ROWS``' keys). ``mean_only`` measures only the mean gradient's rows
  (and the prediction): the others cost ``groups**2`` replays per eps,
  and are ``(nan, nan)``. ``heldout_seed``: sample the held-out groups
  from their own generator (the same ones whatever ``groups``), instead of
  continuing the groups' sampler."""
  ensemble = cfg.tasks.ensemble()
  rng = np.random.default_rng(seed)
  t0 = time.time()
  t1, t2, grads, l1s, base1, base2 = [], [], [], [], [], []
  for i in range(groups):
    group = meta_step.TaskGroup.sample(rng, ensemble, cfg, theta)
    first = _Replay(group, (seed, i, 1))
    grad, metrics = first.run(theta, cfg)
    second = _Replay(group, (seed, i, 2))
    t1.append(first)
    t2.append(second)
    grads.append((grad, metrics))
    l1s.append(_l1(grad))
    base1.append(float(metrics["meta_loss"]))
    base2.append(second.loss(theta, cfg))
    log(f"group {i + 1}/{groups}: {group.label}, meta-loss "
        f"{base1[-1]:+.4f} then {base2[-1]:+.4f}, |g|_1 {l1s[-1]:.3g} "
        f"({time.time() - t0:.0f} s)")
  held, base_h = [], []
  rng_h = rng if heldout_seed is None else np.random.default_rng(heldout_seed)
  for i in range(heldout):
    group = meta_step.TaskGroup.sample(rng_h, ensemble, cfg, theta)
    held.append(_Replay(group, (seed, groups + i, 1)))
    base_h.append(held[-1].loss(theta, cfg))
    log(f"held-out group {i + 1}/{heldout}: {group.label} "
        f"({time.time() - t0:.0f} s)")
  mean_grad, _ = meta_step.average_grads(grads)
  out = {(d, m): [] for d, m, _ in ROWS}
  signs = [random_signs(g, np.random.default_rng([seed, i, 3]))
           for i, (g, _) in enumerate(grads)]
  for e in eps:
    own = {"same": [], "next": [], "other": [], "prediction": []}
    control = {"same": [] if mean_only else [
        t1[i].loss(sign_step(theta, signs[i], e), cfg) - base1[i]
        for i in range(groups)]}
    for i, (g, _) in enumerate(grads):
      own["prediction"].append(-e * l1s[i])
      if mean_only:
        continue
      moved = sign_step(theta, g, e)
      own["same"].append(t1[i].loss(moved, cfg) - base1[i])
      own["next"].append(t2[i].loss(moved, cfg) - base2[i])
      own["other"] += [t1[j].loss(moved, cfg) - base1[j]
                       for j in range(groups) if j != i]
    moved = sign_step(theta, mean_grad, e)
    mean = {"same": [r.loss(moved, cfg) - b for r, b in zip(t1, base1)],
            "next": [r.loss(moved, cfg) - b for r, b in zip(t2, base2)],
            "heldout": [r.loss(moved, cfg) - b for r, b in zip(held, base_h)]}
    for (d, m), cells in out.items():
      cells.append(_mean_se({"own": own, "random": control,
                             "mean": mean}[d][m]))
    log(f"eps {e:g}: own truncations' changes " + " ".join(
        f"{x:+.2e}" for x in own["same"]) + f" ({time.time() - t0:.0f} s)")
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_theta_args(ap)
  ap.add_argument("--groups", type=int, default=4)
  ap.add_argument("--heldout", type=int, default=4)
  ap.add_argument("--eps", default="1e-4,3e-4,1e-3,3e-3",
                  help="comma-separated sign-step sizes (Adam's first step "
                  "at that meta-learning rate)")
  ap.add_argument("--seed", type=int, default=123)
  ap.add_argument("--mean-only", action="store_true",
                  help="only the mean gradient's rows (for many groups: "
                  "the other rows replay groups**2 truncations per eps)")
  ap.add_argument("--heldout-seed", type=int, default=None,
                  help="sample the held-out groups from this seed, the same "
                  "whatever --groups (default: after the groups)")
  args = ap.parse_args(argv)
  try:
    eps = [float(x) for x in args.eps.split(",")]
  except ValueError:
    ap.error(f"--eps {args.eps!r}: expected comma-separated numbers")
  if args.groups < 2 or args.heldout < 1 or any(e < 0 for e in eps):
    ap.error("--groups must be >= 2 (the 'other groups' row needs two), "
             "--heldout >= 1 and every --eps >= 0")
  cfg, theta, where = theta_and_config(args)
  out = descent(theta, cfg, args.groups, args.heldout, eps, args.seed,
                mean_only=args.mean_only, heldout_seed=args.heldout_seed)
  print(f"\nAt {where}: estimator {cfg.meta_grad.estimator}, {args.groups} "
        f"task groups, {args.heldout} held out. Change of the meta-loss "
        "after theta -= eps * sign(g), mean (se):\n")
  print("| step along, measured on | " + " | ".join(
      f"eps {e:g}" for e in eps) + " |")
  print("|---|" + "---:|" * len(eps))
  for d, m, label in ROWS:
    print(f"| {label} | " + " | ".join(
        "-" if np.isnan(mu) else f"{mu:+.2e} ({se:.1e})"
        for mu, se in out[(d, m)]) + " |")
  return out


if __name__ == "__main__":
  main()
