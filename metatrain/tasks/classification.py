"""Classification on generated data: logistic regression and small MLPs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from metatrain.tasks.base import FnTask, TaskConfig, TaskFamily

NUM_SAMPLES = 1000


def make_classification(key, n: int, dim: int, informative: int,
                        flip: float = 0.01):
  """Two Gaussian clusters per class on informative dims, like sklearn's."""
  ky, kc, kx, kf, kr = jax.random.split(key, 5)
  y = jax.random.bernoulli(ky, 0.5, (n,)).astype(jnp.float32)
  centers = 2.0 * jax.random.normal(kc, (2, 2, informative))
  cluster = jax.random.bernoulli(kr, 0.5, (n,)).astype(jnp.int32)
  mean = centers[y.astype(jnp.int32), cluster]
  x = jax.random.normal(kx, (n, dim))
  x = x.at[:, :informative].add(mean)
  flips = jax.random.bernoulli(kf, flip, (n,))
  return x, jnp.where(flips, 1.0 - y, y)


def _minibatch(key, batch):
  return jax.random.randint(key, (batch,), 0, NUM_SAMPLES)


def _build_logistic(cfg: TaskConfig):
  dim, batch, noise = cfg.get("dim"), cfg.get("batch"), cfg.get("noise", 0.0)
  informative = max(2, dim // 5)

  def init(key):
    kd, kw = jax.random.split(key)
    x, y = make_classification(kd, NUM_SAMPLES, dim, informative)
    params = {"w": 0.01 * jax.random.normal(kw, (dim,)), "b": jnp.zeros(())}
    return params, {"x": x, "y": y}

  def nll(p, x, y):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"],
                                                       y))

  def loss(p, d, key):
    kb, kn = jax.random.split(key)
    idx = _minibatch(kb, batch)
    x = d["x"][idx] + noise * jax.random.normal(kn, (batch, dim))
    return nll(p, x, d["y"][idx])

  return FnTask(cfg, init, loss, lambda p, d: nll(p, d["x"], d["y"]))


LOGISTIC = TaskFamily(
    "logistic", "2-class logistic regression, 10-256 features, 1000 "
    "generated samples, batch 20-100, maybe noisy inputs",
    lambda rng: {"dim": int(rng.choice([10, 100, 200, 256])),
                 "batch": int(rng.integers(20, 101)),
                 "noise": float(rng.choice([0.0, 0.5]))},
    _build_logistic)


def _build_mlp(cfg: TaskConfig):
  dim, hidden, batch = cfg.get("dim"), cfg.get("hidden"), cfg.get("batch")
  act = jnp.tanh if cfg.get("act") == "tanh" else jax.nn.sigmoid
  sizes = (dim,) + tuple(hidden) + (1,)

  def forward(p, x):
    for i in range(len(sizes) - 1):
      x = x @ p[f"w{i}"] + p[f"b{i}"]
      if i < len(sizes) - 2:
        x = act(x)
    return x[:, 0]

  def init_params(key):
    p = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      key, k = jax.random.split(key)
      p[f"w{i}"] = jax.random.normal(k, (a, b)) / math.sqrt(a)
      p[f"b{i}"] = jnp.zeros((b,))
    return p

  def init(key):
    kx, kt, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (NUM_SAMPLES, dim))
    teacher = jax.tree_util.tree_map(lambda w: 3.0 * w, init_params(kt))
    logits = forward(teacher, x)
    y = (logits > jnp.median(logits)).astype(jnp.float32)
    return init_params(kp), {"x": x, "y": y}

  def nll(p, x, y):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(forward(p, x), y))

  def loss(p, d, key):
    idx = _minibatch(key, batch)
    return nll(p, d["x"][idx], d["y"][idx])

  return FnTask(cfg, init, loss, lambda p, d: nll(p, d["x"], d["y"]))


MLP = TaskFamily(
    "mlp", "small sigmoid/tanh MLP on random-MLP (teacher) labels, 1000 "
    "samples, batch 20-100",
    lambda rng: {"dim": int(rng.choice([2, 5, 10])),
                 "hidden": tuple(int(h) for h in rng.choice(
                     [4, 8, 16], size=int(rng.integers(1, 3)))),
                 "act": str(rng.choice(["sigmoid", "tanh"])),
                 "batch": int(rng.integers(20, 101))},
    _build_mlp)
