"""How a learned optimizer's step moves against Adam's over a run.

Usage:
  python benchmarks/step_profile.py [--lopt FILE] [--rate R]
      [--tasks validation:0,...] [--steps 1000] [--seed 0]
      [--at 1,10,100,250,500,1000]

Trains each task with the learned optimizer (default: the shipped
``hrnn-v1``) at rate ``R`` (default: its own default rate), and at every
step also feeds the same gradient to ``optax.adam(R)``, whose update is not
applied: it is what Adam would step from here. It prints, per task, the
ratio of the two updates' RMS over all parameters (learned over Adam) at
the given steps (the geometric mean over the steps since the previous
one), the spread across tensors of the per-tensor log-ratio at the
last step, and the mean over the run of the cosine between the two
updates (1: Adam's direction). A ratio that climbs over the run is a rising schedule that no
constant Adam rate reproduces; one that stays at 1 is Adam's step size.
The last line is the median over tasks.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from evaluators import problems, suites  # noqa: E402
from metatrain.optimizer import export, zoo  # noqa: E402
from metatrain.optimizer.optax_adapter import hrnn_optax  # noqa: E402


def _sq(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def profile(problem, tx, adam, steps: int, seed: int) -> dict[str, np.ndarray]:
  """Per step: the update RMS ratio, learned over Adam on the same
  gradients (``ratio``), their cosine (``cos``) and the training loss
  (``loss``); and the per-tensor log-ratios at the last step
  (``tensor_log``)."""
  if problem.batches is not None:
    raise SystemExit(f"{problem.name}: only tasks that sample their own "
                     "minibatches (heldout:, validation:, vimage:)")
  key = jax.random.PRNGKey(seed)
  params, aux = problem.init(key)
  lg = problem.loss_and_grad or jax.value_and_grad(problem.loss, has_aux=True)

  @jax.jit
  def step(params, aux, s_l, s_a, k):
    (loss, aux), g = lg(params, aux, None, k)
    u, s_l = tx.update(g, s_l, params)
    ua, s_a = adam.update(g, s_a, params)
    per = jax.tree.map(lambda a, b: jnp.log(
        jnp.sqrt(jnp.sum(a * a) + 1e-30) / jnp.sqrt(jnp.sum(b * b) + 1e-30)),
        u, ua)
    ratio = jnp.sqrt(_sq(u) / (_sq(ua) + 1e-30))
    dot = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(u),
                                              jax.tree.leaves(ua)))
    cos = dot / jnp.sqrt(_sq(u) * _sq(ua) + 1e-30)
    return (optax.apply_updates(params, u), aux, s_l, s_a, loss, ratio, cos,
            per)

  s_l, s_a = tx.init(params), adam.init(params)
  ratios, coss, losses, per = [], [], [], None
  for t in range(steps):
    params, aux, s_l, s_a, loss, r, c, per = step(
        params, aux, s_l, s_a, jax.random.fold_in(key, t))
    ratios.append(float(r))
    coss.append(float(c))
    losses.append(float(loss))
  return {"ratio": np.asarray(ratios), "cos": np.asarray(coss),
          "loss": np.asarray(losses),
          "tensor_log": np.asarray([float(x) for x in jax.tree.leaves(per)])}


def windows(ratio: np.ndarray, at: list[int]) -> list[float]:
  """The geometric mean of ``ratio`` over each window ending at ``at``
  (steps counted from 1); nan where the run did not get there or is not
  finite."""
  out, lo = [], 0
  for hi in at:
    w = ratio[lo:hi]
    ok = w.size and hi <= ratio.size and np.all(np.isfinite(w)) and np.all(
        w > 0)
    out.append(float(np.exp(np.mean(np.log(w)))) if ok else math.nan)
    lo = hi
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--lopt", default="",
                  help="optimizer file (default: the shipped hrnn-v1)")
  ap.add_argument("--rate", type=float, default=None,
                  help="the learning rate (default: the file's own)")
  ap.add_argument("--tasks", default="",
                  help="comma-separated (default: the validation suite's)")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--at", default="1,10,100,250,500,1000")
  args = ap.parse_args(argv)
  at = sorted({int(x) for x in args.at.split(",") if x.strip()})
  if args.steps < 1 or not at or at[0] < 1:
    raise SystemExit("need --steps >= 1 and --at steps >= 1")
  at = [a for a in at if a <= args.steps]
  path = args.lopt or zoo.pretrained_path()
  config, theta, _ = export.read_optimizer(path)
  rate = config.init_lr if args.rate is None else args.rate
  tasks = ([t for t in args.tasks.split(",") if t.strip()] if args.tasks
           else list(suites.load("validation").tasks))
  tx = hrnn_optax(config, theta, learning_rate=rate)
  adam = optax.adam(rate, b1=config.adam_b1, b2=config.adam_b2,
                    eps=config.adam_eps)
  print(f"optimizer {os.path.basename(path)} at rate {rate:g}, against "
        f"Adam {rate:g} on the same gradients; {args.steps} steps, seed "
        f"{args.seed}")
  head = " ".join(f"{'<=' + str(a):>8}" for a in at)
  print(f"update RMS, learned / Adam, geometric mean over steps up to:\n"
        f"{'task':<44} {head} {'tensor sd':>9} {'cos':>6}")
  rows = []
  for name in tasks:
    prob = problems.build(name)
    res = profile(prob, tx, adam, args.steps, args.seed)
    w = windows(res["ratio"], at)
    rows.append(w)
    sd = float(np.std(res["tensor_log"]))
    cos = float(np.mean(res["cos"]))
    print(f"{prob.name[:44]:<44} " + " ".join(f"{x:>8.3g}" for x in w)
          + f" {sd:>9.3g} {cos:>6.3f}", flush=True)
  med = np.nanmedian(np.asarray(rows), axis=0)
  print(f"{'median over tasks':<44} "
        + " ".join(f"{x:>8.3g}" for x in med))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
