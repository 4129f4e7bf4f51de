"""The classic 2-D optimization test functions, clean or noisy.

Every function is non-negative (offsets where needed, as in the reference,
and a clip at 0 against rounding). Initial points come from the reference's
boxes (``INITS``), e.g. Ackley in [-32.768, 32.768]^2 and Rosenbrock in
[-5, 10]^2. "Noisy" adds ``noise * N(0, 1)`` to the
gradient, as the reference's ``noise_stdev`` does; the loss stays clean.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from metatrain.tasks.base import (FnTask, TaskConfig, TaskFamily, choice,
                                  normal, uniform)


def ackley(x, y):
  r = jnp.sqrt(0.5 * (x * x + y * y) + 1e-12)  # eps: finite grad at 0
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
  """Boyd's 2-D log-sum-exp (with a +1 term): bounded minimum, always > 0."""
  return jax.nn.logsumexp(jnp.stack(
      [x + 3 * y - 0.1, x - 3 * y - 0.1, -x - 0.1, jnp.zeros_like(x)]))


def matyas(x, y):
  return 0.26 * (x * x + y * y) - 0.48 * x * y


def michalewicz(x, y, m=5):
  return 2.0 - (jnp.sin(x) * jnp.sin(x * x / math.pi) ** (2 * m) +
                jnp.sin(y) * jnp.sin(2 * y * y / math.pi) ** (2 * m))


def rosenbrock(x, y):
  return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def styblinski_tang(x, y):
  f = lambda z: z ** 4 - 16 * z ** 2 + 5 * z
  return 0.5 * (f(x) + f(y)) + 80.0  # 2-D minimum is about -78.33


FUNCTIONS = {
    "ackley": ackley, "beale": beale, "booth": booth, "branin": branin,
    "logsumexp": logsumexp, "matyas": matyas, "michalewicz": michalewicz,
    "rosenbrock": rosenbrock, "styblinski_tang": styblinski_tang,
}

# Initial points, as the reference's ``init_tensors`` (problem_generator.py):
# name -> ("uniform", (x_lo, y_lo), (x_hi, y_hi)), a box, or
# ("normal", mean, stdev) per coordinate (the reference's default init).
INITS = {
    "ackley": ("uniform", (-32.768, -32.768), (32.768, 32.768)),
    "beale": ("uniform", (-4.5, -4.5), (4.5, 4.5)),
    "booth": ("uniform", (-10.0, -10.0), (10.0, 10.0)),
    "branin": ("uniform", (-5.0, 0.0), (10.0, 15.0)),
    "logsumexp": ("normal", 0.0, 1.0),  # no init_tensors: N(0, 1)
    "matyas": ("uniform", (-10.0, -10.0), (10.0, 10.0)),
    "michalewicz": ("uniform", (0.0, 0.0), (math.pi, math.pi)),
    "rosenbrock": ("uniform", (-5.0, -5.0), (10.0, 10.0)),
    "styblinski_tang": ("uniform", (-5.0, -5.0), (5.0, 5.0)),
}


def init_point(name: str, key) -> jax.Array:
  """A random initial point ``(x, y)`` of function ``name`` (see INITS)."""
  kind, a, b = INITS[name]
  if kind == "normal":
    return a + b * jax.random.normal(key, (2,))
  return uniform(key, (2,), minval=jnp.array(a), maxval=jnp.array(b))


NAMES = tuple(sorted(FUNCTIONS))  # a bucket's ``fn`` indexes these


def init_point_of(index, key) -> jax.Array:
  """``init_point`` of function ``NAMES[index]``, index an array."""
  box = [INITS[n] for n in NAMES]
  lo = jnp.array([b[1] if b[0] == "uniform" else (0.0, 0.0) for b in box])
  hi = jnp.array([b[2] if b[0] == "uniform" else (1.0, 1.0) for b in box])
  mean = jnp.array([b[1] if b[0] == "normal" else 0.0 for b in box])
  std = jnp.array([b[2] if b[0] == "normal" else 1.0 for b in box])
  is_normal = jnp.array([b[0] == "normal" for b in box])
  u = uniform(key, (2,), minval=lo[index], maxval=hi[index])
  z = mean[index] + std[index] * normal(key, (2,))
  return jnp.where(is_normal[index], z, u)


def value_of(index, x) -> jax.Array:
  """``FUNCTIONS[NAMES[index]](x[0], x[1])`` clipped at 0, index an array.

  Every function is evaluated and one selected (no conditional: that
  compiles and fuses better inside scans and vmaps); the others see the
  point 0, so their gradients stay finite wherever ``x`` is.
  """
  picks = [index == j for j in range(len(NAMES))]
  vals = []
  for pick, name in zip(picks, NAMES):
    v = jnp.where(pick, x, 0.0)
    vals.append(jnp.maximum(FUNCTIONS[name](v[0], v[1]), 0.0))
  return jnp.select(picks, vals)


def _build(cfg: TaskConfig) -> FnTask:
  name = cfg.get("fn")
  if not isinstance(name, str):  # a bucket's index (an array)
    return FnTask(cfg, lambda key: ({"x": init_point_of(name, key)}, {}),
                  lambda p, d, key: value_of(name, p["x"]),
                  grad_noise=cfg.get("noise", 0.0))
  if name not in FUNCTIONS:
    raise ValueError(f"unknown 2-D function {name!r}; known: "
                     f"{', '.join(FUNCTIONS)}")
  fn = FUNCTIONS[name]

  def init(key):
    return {"x": init_point(name, key)}, {}

  def loss(p, d, key):
    del d, key
    return jnp.maximum(fn(p["x"][0], p["x"][1]), 0.0)

  return FnTask(cfg, init, loss, grad_noise=cfg.get("noise", 0.0))


FN2D = TaskFamily(
    "fn2d", "2-D test functions: " + ", ".join(FUNCTIONS) +
    "; clean or noisy (gradient noise 1.0)",
    lambda rng: {"fn": choice(rng, sorted(FUNCTIONS)),
                 "noise": choice(rng, [0.0, 1.0])},
    _build,
    bucket_fn=lambda c: ({}, {"fn": NAMES.index(c.get("fn")),
                              "noise": c.get("noise", 0.0)}))
