"""Learn a bilinear n x n matrix-multiplication algorithm with k products.

Params ``u, v`` (k, n^2) and ``w`` (n^2, k) compute ``C = w ((u a) * (v b))``
from the flattened factors a, b: an exact solution with k = 7, n = 2 is
Strassen's algorithm. The minibatch loss is the mean squared error of C
against ``A @ B`` on ``batch`` random Gaussian pairs. The full loss is its
exact expectation: for a bilinear error E(a, b) = sum_ij a_i b_j D_ij,
``E ||E(a, b)||^2 = sum_ij ||D_ij||^2``, i.e. the error on all one-hot pairs.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from metatrain.tasks.base import (FnTask, TaskConfig, TaskFamily, choice,
                                  normal_tree, pad_mask)

# A bucket's products and batch round up to these (n -> k pad; batch pad).
K_PADS = {2: 8, 3: 24}
BATCH_PAD = 32


def _onehot_products(n: int) -> np.ndarray:
  """``t[i, j] = vec(E_i @ E_j)`` for all one-hot n x n matrices E."""
  m = n * n
  e = np.eye(m, dtype=np.float32).reshape(m, n, n)
  return np.einsum("iab,jbc->ijac", e, e).reshape(m, m, m)


def _build(cfg: TaskConfig) -> FnTask:
  """The task; where ``k`` and ``batch`` are a bucket's hyperparameters,
  products past k are masked out (their parameters start at zero and get
  zero gradients) and minibatch rows past ``batch`` do not count."""
  n, k, batch = cfg.get("n"), cfg.get("k"), cfg.get("batch", 16)
  pad_k, pad_b = cfg.get("pad_k", k), cfg.get("pad_batch", batch)
  m = n * n
  target = _onehot_products(n)  # numpy constant (builds are cached)
  kmask, rows = pad_mask(k, pad_k), pad_mask(batch, pad_b)

  def masked(prod):
    return prod if kmask is None else prod * kmask

  def init(key):
    z = normal_tree(key, {"u": (pad_k, m), "v": (pad_k, m), "w": (m, pad_k)})
    unit_rows = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
    params = {"u": unit_rows(z["u"]), "v": unit_rows(z["v"]),
              "w": z["w"] / (math.sqrt(k) if kmask is None else
                             jnp.sqrt(k.astype(jnp.float32)))}
    if kmask is not None:
      params = {"u": params["u"] * kmask[:, None],
                "v": params["v"] * kmask[:, None], "w": params["w"] * kmask}
    return params, {}

  def loss(p, d, key):
    del d
    z = normal_tree(key, {"a": (pad_b, n, n), "b": (pad_b, n, n)})
    a, b = z["a"], z["b"]
    prod = masked((a.reshape(pad_b, m) @ p["u"].T) *
                  (b.reshape(pad_b, m) @ p["v"].T))
    err = prod @ p["w"].T - (a @ b).reshape(pad_b, m)
    if rows is None:
      return jnp.mean(err ** 2)
    return jnp.sum(rows[:, None] * err ** 2) / (jnp.sum(rows) * m)

  def full_loss(p, d):
    del d
    prod = masked(p["u"].T[:, None, :] * p["v"].T[None, :, :])  # (m, m, k)
    err = prod @ p["w"].T - target
    return jnp.sum(err ** 2) / m

  return FnTask(cfg, init, loss, full_loss)


def _sample(rng):
  if rng.random() < 0.5:
    n, k = 2, int(rng.integers(5, 9))
  else:
    n, k = 3, int(rng.integers(19, 25))
  return {"n": n, "k": k, "batch": choice(rng, [8, 16, 32])}


MATMUL = TaskFamily(
    "matmul_algorithm", "learn a bilinear n x n matmul algorithm with k "
    "products (n=2, k=5-8; n=3, k=19-24), MSE on random matrices",
    _sample, _build,
    bucket_fn=lambda c: ({"n": c.get("n"), "pad_k": K_PADS[c.get("n")],
                          "pad_batch": BATCH_PAD},
                         {"k": c.get("k"), "batch": c.get("batch", 16)}))
