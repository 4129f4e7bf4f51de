"""Learn a bilinear matrix-multiplication algorithm (Strassen-like).

Params U, V (k, n^2) and W (n^2, k): C = W ((U a) * (V b)) with a, b the
flattened factors; the loss is the mean squared error against A @ B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metatrain.tasks.base import FnTask, TaskConfig, TaskFamily

_EVAL_PAIRS = 64


def _build(cfg: TaskConfig):
  n, k, batch = cfg.get("n"), cfg.get("k"), cfg.get("batch", 16)
  m = n * n

  def pairs(key, count):
    ka, kb = jax.random.split(key)
    return (jax.random.normal(ka, (count, n, n)),
            jax.random.normal(kb, (count, n, n)))

  def mse(p, a, b):
    prod = (a.reshape(-1, m) @ p["u"].T) * (b.reshape(-1, m) @ p["v"].T)
    c = prod @ p["w"].T
    return jnp.mean((c - (a @ b).reshape(-1, m)) ** 2)

  def init(key):
    kp, kd = jax.random.split(key)
    ku, kv, kw = jax.random.split(kp, 3)
    s = 0.5 / jnp.sqrt(m)
    params = {"u": s * jax.random.normal(ku, (k, m)),
              "v": s * jax.random.normal(kv, (k, m)),
              "w": s * jax.random.normal(kw, (m, k))}
    a, b = pairs(kd, _EVAL_PAIRS)
    return params, {"a": a, "b": b}

  def loss(p, d, key):
    del d
    return mse(p, *pairs(key, batch))

  return FnTask(cfg, init, loss, lambda p, d: mse(p, d["a"], d["b"]))


MATMUL = TaskFamily(
    "matmul_algorithm", "learn a bilinear n x n matmul algorithm with k "
    "products (n=2, k=5-8; n=3, k=19-24)",
    lambda rng: (({"n": 2, "k": int(rng.integers(5, 9))} if rng.random() < 0.5
                  else {"n": 3, "k": int(rng.integers(19, 25))})),
    _build)
