"""Quadratic problems: noisy quadratics, large rotated ones, (sparse) bowls."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from metatrain.tasks.base import (FnTask, TaskConfig, TaskFamily, choice,
                                  is_static, is_zero, normal, normal_tree,
                                  uniform)
from metatrain.tasks.transforms import Sparse


def _build_quadratic(cfg: TaskConfig) -> FnTask:
  """``0.5 ||W x - y||^2``; the noisy loss perturbs the targets y."""
  dim, noise = cfg.get("dim"), cfg.get("noise", 0.0)

  def init(key):
    z = normal_tree(key, {"w": (dim, dim), "y": (dim,), "x": (dim,)})
    return {"x": z["x"]}, {"w": z["w"] / math.sqrt(dim), "y": z["y"]}

  def f(p, d, y):
    return 0.5 * jnp.sum((d["w"] @ p["x"] - y) ** 2)

  def loss(p, d, key):
    if is_zero(noise):
      return f(p, d, d["y"])
    return f(p, d, d["y"] + noise * normal(key, (dim,)))

  return FnTask(cfg, init, loss, lambda p, d: f(p, d, d["y"]))


QUADRATIC = TaskFamily(
    "quadratic", "0.5||Wx - y||^2, W Gaussian, dims 20/25/50/100, target "
    "noise stdev 0-2",
    lambda rng: {"dim": choice(rng, [20, 25, 50, 100]),
                 "noise": choice(rng, [0.0, 0.0, 0.5, 1.0, 2.0])},
    _build_quadratic,
    bucket_fn=lambda c: ({"dim": c.get("dim")},
                         {"noise": c.get("noise", 0.0)}))


def _factor(dim: int) -> tuple[int, int]:
  """``dim = a * b`` with a the largest divisor <= sqrt(dim)."""
  a = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
  return a, dim // a


def _orthogonalize(g: jax.Array) -> jax.Array:
  """A Haar-random orthogonal matrix from a square Gaussian one.

  Gram-Schmidt with re-orthogonalization (CGS2): the Q of ``g = QR`` with a
  positive diagonal in R, which is Haar-distributed. Written in plain jnp
  rather than ``jnp.linalg.qr`` because XLA:CPU in jax 0.10 can hang for
  good on a program with two independent batched QR (LAPACK) custom calls,
  which this task's init has (docs/architecture.md).
  """
  def column(j, q):
    v = g[:, j]
    v = v - q @ (q.T @ v)  # columns >= j of q are still zero
    v = v - q @ (q.T @ v)
    return q.at[:, j].set(v / jnp.linalg.norm(v))

  return jax.lax.fori_loop(0, g.shape[1], column, jnp.zeros_like(g))


def _build_large(cfg: TaskConfig) -> FnTask:
  """``0.5 (x - x*)^T Q^T S Q (x - x*)`` with a dense but cheap rotation.

  ``Q = Q_a kron Q_b`` (two random rotations of sizes a, b with a * b = dim)
  is a full rotation, applied in O(dim (a + b)) and stored in O(a^2 + b^2),
  so 2048-D instances are cheap; the spectrum S spans ``10^-log10_cond..1``.
  """
  dim, cond = cfg.get("dim"), cfg.get("log10_cond")
  a, b = _factor(dim)

  def init(key):
    ks, kz = jax.random.split(key)
    z = normal_tree(kz, {"qa": (a, a), "qb": (b, b), "opt": (dim,),
                         "x": (dim,)})
    data = {"s": 10.0 ** (-cond * uniform(ks, (dim,))),
            "qa": _orthogonalize(z["qa"]), "qb": _orthogonalize(z["qb"]),
            "opt": z["opt"]}
    return {"x": z["x"]}, data

  def loss(p, d, key):
    del key
    z = d["qa"] @ (p["x"] - d["opt"]).reshape(a, b) @ d["qb"].T
    return 0.5 * jnp.sum(d["s"] * z.reshape(dim) ** 2)

  return FnTask(cfg, init, loss)


LARGE_QUADRATIC = TaskFamily(
    "large_quadratic", "rotated ill-conditioned quadratic, dims "
    "784/1024/2048, condition 10-10^4",
    lambda rng: {"dim": choice(rng, [784, 1024, 2048]),
                 "log10_cond": choice(rng, [1.0, 2.0, 3.0, 4.0])},
    _build_large,
    bucket_fn=lambda c: ({"dim": c.get("dim")},
                         {"log10_cond": c.get("log10_cond")}))


def _rotation(cond, angle):
  """``(R(angle), (cond, 1))`` of a 2-D bowl: numpy for static settings
  (jnp arrays made in a cached build would leak tracers), else jnp."""
  if is_static(cond) and is_static(angle):
    c, s = math.cos(angle), math.sin(angle)
    return (np.array([[c, -s], [s, c]], np.float32),
            np.array([cond, 1.0], np.float32))
  cond = jnp.asarray(cond, jnp.float32)
  c, s = jnp.cos(angle), jnp.sin(angle)
  return (jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])]),
          jnp.stack([cond, jnp.ones_like(cond)]))


def _bowl_bucket(c: TaskConfig):
  return {}, {"cond": c.get("cond"), "angle": c.get("angle", 0.0),
              "noise": c.get("noise", 0.0)}


def _build_bowl(cfg: TaskConfig) -> FnTask:
  """``0.5 (c z1^2 + z2^2)`` with ``z = R(angle) x``; noise on the gradient."""
  rot, h = _rotation(cfg.get("cond"), cfg.get("angle", 0.0))

  def init(key):
    return {"x": uniform(key, (2,), minval=-3, maxval=3)}, {}

  def loss(p, d, key):
    del d, key
    z = rot @ p["x"]
    return 0.5 * jnp.sum(h * z * z)

  return FnTask(cfg, init, loss, grad_noise=cfg.get("noise", 0.0))


def _sample_bowl(rng):
  cond = choice(rng, [0.1, 1.0, 5.0])
  angle = choice(rng, [0.0, math.pi / 4]) if cond != 1.0 else 0.0
  return {"cond": cond, "angle": angle,
          "noise": choice(rng, [0.0, 0.0, 0.1, 0.5])}


BOWL = TaskFamily(
    "bowl", "2-D bowl 0.5(c z1^2 + z2^2), c in {0.1,1,5}, maybe rotated by "
    "pi/4, gradient noise 0/0.1/0.5", _sample_bowl, _build_bowl,
    bucket_fn=_bowl_bucket)


# (copies, zero probability) of the sparse bowls. The reference zeroes each
# gradient entry of a 2-D bowl with p = 0.99, so 98% of its steps see an
# all-zero gradient. Here every size keeps some signal in most truncations:
# one bowl with p = 0.9 (19% of steps carry a gradient, each coordinate gets
# one every ~10 steps), and 16 or 64 independent bowls with the reference's
# p = 0.99 (each coordinate sees what it sees in the reference, and 28% or
# 72% of steps carry some gradient).
SPARSE_BOWL_SIZES = ((1, 0.9), (16, 0.99), (64, 0.99))


def _build_sparse_bowl(cfg: TaskConfig):
  """``copies`` independent 2-D bowls whose gradient entries are zeroed."""
  copies, p = cfg.get("copies"), cfg.get("p")
  rot, h = _rotation(cfg.get("cond"), cfg.get("angle", 0.0))
  rot_t = rot.T  # rows z = x @ R^T

  def init(key):
    return {"x": uniform(key, (copies, 2), minval=-3, maxval=3)}, {}

  def loss(params, data, key):
    del data, key
    z = params["x"] @ rot_t
    return 0.5 * jnp.sum(h * z * z)

  return Sparse(FnTask(cfg, init, loss), cfg, p)


def _sample_sparse_bowl(rng):
  cond = choice(rng, [0.1, 1.0, 5.0])
  angle = choice(rng, [0.0, math.pi / 4]) if cond != 1.0 else 0.0
  copies, p = choice(rng, SPARSE_BOWL_SIZES)
  return {"cond": cond, "angle": angle, "copies": copies, "p": p}


SPARSE_BOWL = TaskFamily(
    "sparse_bowl", "1/16/64 independent 2-D bowls (as bowl, no noise) with "
    "each gradient entry zeroed, p=0.9 (1 bowl) or 0.99 (16, 64)",
    _sample_sparse_bowl, _build_sparse_bowl,
    bucket_fn=lambda c: ({"copies": c.get("copies")},
                         {"cond": c.get("cond"), "angle": c.get("angle", 0.0),
                          "p": c.get("p")}))
