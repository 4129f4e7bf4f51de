"""Quadratic problems: noisy quadratics, large ill-conditioned ones, 2-D bowls."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from metatrain.tasks.base import FnTask, TaskConfig, TaskFamily


def _build_quadratic(cfg: TaskConfig):
  dim, noise = cfg.get("dim"), cfg.get("noise", 0.0)

  def init(key):
    kw, ky, kx = jax.random.split(key, 3)
    w = jax.random.normal(kw, (dim, dim)) / math.sqrt(dim)
    y = jax.random.normal(ky, (dim,))
    return {"x": jax.random.normal(kx, (dim,))}, {"w": w, "y": y}

  def loss(p, d, key):
    y = d["y"] + noise * jax.random.normal(key, d["y"].shape)
    return 0.5 * jnp.sum((d["w"] @ p["x"] - y) ** 2)

  def full(p, d):
    return 0.5 * jnp.sum((d["w"] @ p["x"] - d["y"]) ** 2)

  return FnTask(cfg, init, loss, full)


QUADRATIC = TaskFamily(
    "quadratic", "noisy quadratic 0.5||Wx - y||^2, dims 20-100, noise 0-2",
    lambda rng: {"dim": int(rng.choice([20, 25, 50, 100])),
                 "noise": float(rng.choice([0.0, 0.0, rng.uniform(0, 2)]))},
    _build_quadratic)


def _build_large(cfg: TaskConfig):
  """Diagonal in a random basis would cost dim^2; the eigenbasis is enough."""
  dim, cond = cfg.get("dim"), cfg.get("log10_cond")

  def init(key):
    ks, ky, kx = jax.random.split(key, 3)
    u = jax.random.uniform(ks, (dim,))
    return ({"x": jax.random.normal(kx, (dim,))},
            {"s": 10.0 ** (-cond * u), "y": jax.random.normal(ky, (dim,))})

  def loss(p, d, key):
    del key
    return 0.5 * jnp.sum(d["s"] * (p["x"] - d["y"]) ** 2)

  return FnTask(cfg, init, loss)


LARGE_QUADRATIC = TaskFamily(
    "large_quadratic", "large ill-conditioned quadratic, dims 784/1024/2048",
    lambda rng: {"dim": int(rng.choice([784, 1024, 2048])),
                 "log10_cond": float(rng.uniform(1, 4))},
    _build_large)


def _build_bowl(cfg: TaskConfig):
  cond, angle, noise = cfg.get("cond"), cfg.get("angle"), cfg.get("noise")
  c, s = math.cos(angle), math.sin(angle)
  rot = np.array([[c, -s], [s, c]], np.float32)  # numpy: builders are cached

  def init(key):
    return {"x": jax.random.uniform(key, (2,), minval=-3, maxval=3)}, {}

  def f(x, shift):
    z = rot @ x - shift
    return 0.5 * (cond * z[0] ** 2 + z[1] ** 2)

  def loss(p, d, key):
    del d
    return f(p["x"], noise * jax.random.normal(key, (2,)))

  return FnTask(cfg, init, loss, lambda p, d: f(p["x"], jnp.zeros(2)))


BOWL = TaskFamily(
    "bowl", "2-D bowl 0.5(c z1^2 + z2^2), c in {0.1,1,5}, maybe rotated/noisy",
    lambda rng: {"cond": float(rng.choice([0.1, 1.0, 5.0])),
                 "angle": float(rng.choice([0.0, np.pi / 4])),
                 "noise": float(rng.choice([0.0, 1.0]))},
    _build_bowl)
