"""The classic 2-D test functions, made non-negative, clean or noisy.

Noise perturbs the point the function is evaluated at, so the noisy loss
stays non-negative; the full loss is the clean one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from metatrain.tasks.base import FnTask, TaskConfig, TaskFamily


def ackley(x, y):
  r = jnp.sqrt(0.5 * (x * x + y * y) + 1e-12)
  return (-20.0 * jnp.exp(-0.2 * r) - jnp.exp(
      0.5 * (jnp.cos(2 * math.pi * x) + jnp.cos(2 * math.pi * y))) + math.e +
          20.0)


def beale(x, y):
  return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 +
          (2.625 - x + x * y ** 3) ** 2)


def booth(x, y):
  return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def branin(x, y):
  b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
  return (y - b * x ** 2 + c * x - 6) ** 2 + 10 * (1 - t) * jnp.cos(x) + 10


def logsumexp(x, y):
  # log(e^x + e^y + e^0) >= 0; the reference's 2-D LogSumExp plus a 0 term.
  return jax.nn.logsumexp(jnp.stack([x, y, jnp.zeros_like(x)]))


def matyas(x, y):
  return 0.26 * (x * x + y * y) - 0.48 * x * y


def michalewicz(x, y, m=10):
  v = -(jnp.sin(x) * jnp.sin(x * x / math.pi) ** (2 * m) +
        jnp.sin(y) * jnp.sin(2 * y * y / math.pi) ** (2 * m))
  return v + 2.0  # 2-D minimum is about -1.80


def rosenbrock(x, y):
  return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def styblinski_tang(x, y):
  f = lambda z: z ** 4 - 16 * z ** 2 + 5 * z
  return 0.5 * (f(x) + f(y)) + 80.0  # 2-D minimum is about -78.33


# name -> (function, init box low, init box high)
FUNCTIONS = {
    "ackley": (ackley, -2.0, 2.0),
    "beale": (beale, -2.0, 2.0),
    "booth": (booth, -5.0, 5.0),
    "branin": (branin, 0.0, 10.0),
    "logsumexp": (logsumexp, -2.0, 2.0),
    "matyas": (matyas, -5.0, 5.0),
    "michalewicz": (michalewicz, 0.5, 3.0),
    "rosenbrock": (rosenbrock, -2.0, 2.0),
    "styblinski_tang": (styblinski_tang, -4.0, 4.0),
}


def _build(cfg: TaskConfig):
  fn, lo, hi = FUNCTIONS[cfg.get("fn")]
  noise = cfg.get("noise", 0.0)

  def init(key):
    return {"x": jax.random.uniform(key, (2,), minval=lo, maxval=hi)}, {}

  def loss(p, d, key):
    del d
    z = p["x"] + noise * jax.random.normal(key, (2,))
    return jnp.maximum(fn(z[0], z[1]), 0.0)

  def full(p, d):
    del d
    return jnp.maximum(fn(p["x"][0], p["x"][1]), 0.0)

  return FnTask(cfg, init, loss, full)


FN2D = TaskFamily(
    "fn2d", "2-D test functions (" + ", ".join(FUNCTIONS) +
    "), clean or noisy (noise 1.0 on the evaluation point)",
    lambda rng: {"fn": str(rng.choice(sorted(FUNCTIONS))),
                 "noise": float(rng.choice([0.0, 1.0]))},
    _build)
