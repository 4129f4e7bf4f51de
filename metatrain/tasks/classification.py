"""2-class classification on generated data: logistic regression, small MLPs.

Datasets (1000 samples) are generated in JAX from the instance key; the
minibatch loss samples ``batch`` rows (with replacement) from the loss key.
Both losses add the reference's small L2 penalty, so they have a minimum.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain.tasks.base import (L2_SCALE, FnTask, TaskConfig, TaskFamily,
                                  choice, l2_penalty, normal, normal_tree,
                                  pad_mask, prefix, uniform)

NUM_SAMPLES = 1000
BATCH_SIZES = (20, 32, 50, 64, 100)
TEACHER_DEPTH, TEACHER_WIDTH = 4, 20  # the random ReLU MLP labelling data


def make_classification(key, n: int, dim: int, sep: float = 1.0,
                        clusters_per_class: int = 2, flip: float = 0.01):
  """Like sklearn's ``make_classification`` with all features informative.

  Each class is a mix of Gaussian clusters centred on random hypercube
  vertices ``+-sep``, each cluster with its own random covariance
  (``N(0, I) @ U(-1, 1)^{dim x dim}``); a fraction ``flip`` of the labels is
  replaced by random ones.

  Returns:
    ``(x, y)`` with x of shape (n, dim), float32 labels y in {0, 1}.
  """
  k = 2 * clusters_per_class
  if n % k:
    raise ValueError(f"n={n} must be a multiple of {k} clusters")
  ku, kx = jax.random.split(key)
  # One uniform draw for everything but the features (fast to compile).
  sizes = (k * dim * dim, k * dim, n, n)
  u = jnp.split(uniform(ku, (sum(sizes),)), np.cumsum(sizes)[:-1].tolist())
  mix = (2.0 * u[0] - 1.0).reshape(k, dim, dim)
  signs = jnp.where(u[1] < 0.5, -1.0, 1.0).reshape(k, dim)
  x = normal(kx, (k, n // k, dim)) @ mix + sep * signs[:, None]
  y = jnp.repeat(jnp.arange(k) % 2, n // k).astype(jnp.float32)
  y = jnp.where(u[2] < flip, (u[3] < 0.5).astype(jnp.float32), y)
  return x.reshape(n, dim), y  # rows grouped by cluster; batches are random


def _minibatch(key, batch: int):
  return jax.random.randint(key, (batch,), 0, NUM_SAMPLES)


def _xent(logits, y, weights=None):
  """Mean cross-entropy; with ``weights`` (0/1 per row), over the rows that
  count."""
  xent = optax.sigmoid_binary_cross_entropy(logits, y)
  if weights is None:
    return jnp.mean(xent)
  return jnp.sum(weights * xent) / jnp.sum(weights)


def _batch_rows(key, batch, pad_batch):
  """A minibatch's row indices and row weights: ``batch`` rows, or, where
  the batch size is a bucket's hyperparameter, ``pad_batch`` rows of which
  the first ``batch`` count (weights None: every row counts)."""
  weights = pad_mask(batch, pad_batch)
  return _minibatch(key, batch if weights is None else pad_batch), weights


def _build_logistic(cfg: TaskConfig) -> FnTask:
  dim, batch, sep = cfg.get("dim"), cfg.get("batch"), cfg.get("sep", 1.0)
  pad_batch = cfg.get("pad_batch", batch)

  def init(key):
    kd, kw = jax.random.split(key)
    x, y = make_classification(kd, NUM_SAMPLES, dim, sep)
    params = {"w": 1.2 / math.sqrt(dim) * normal(kw, (dim,)),
              "b": jnp.zeros(())}
    return params, {"x": x, "y": y}

  def objective(p, x, y, weights=None):
    return _xent(x @ p["w"] + p["b"], y, weights) + L2_SCALE * l2_penalty(p)

  def loss(p, d, key):
    idx, weights = _batch_rows(key, batch, pad_batch)
    return objective(p, d["x"][idx], d["y"][idx], weights)

  return FnTask(cfg, init, loss, lambda p, d: objective(p, d["x"], d["y"]),
                grad_noise=cfg.get("noise", 0.0))


LOGISTIC = TaskFamily(
    "logistic", "2-class logistic regression, 10/100/200/256 features, 1000 "
    "make_classification samples, batch 20-100, gradient noise 0-0.5",
    lambda rng: {"dim": choice(rng, [10, 100, 200, 256]),
                 "sep": choice(rng, [1.0, 1.5, 2.0]),
                 "batch": choice(rng, BATCH_SIZES),
                 "noise": choice(rng, [0.0, 0.0, 0.1, 0.5])},
    _build_logistic,
    bucket_fn=lambda c: ({"dim": c.get("dim"), "pad_batch": max(BATCH_SIZES)},
                         {"sep": c.get("sep", 1.0), "batch": c.get("batch"),
                          "noise": c.get("noise", 0.0)}))


def _mlp(p, x, n_layers: int, act):
  for i in range(n_layers):
    x = x @ p[f"w{i}"] + p[f"b{i}"]
    if i < n_layers - 1:
      x = act(x)
  return x


def _teacher_labels(x, weights):
  """Labels of a random ReLU MLP (like the reference's ``random_mlp``)."""
  h = x
  for w in weights:
    h = jax.nn.relu(h @ w * math.sqrt(2 / w.shape[0]))
  out = h[:, 0] + 1e-3 * jnp.sum(h, 1)  # break ReLU ties at 0
  return (out > jnp.median(out)).astype(jnp.float32)  # balanced classes


def _build_mlp(cfg: TaskConfig) -> FnTask:
  if cfg.get("pad_hidden") is not None:
    return _build_padded_mlp(cfg)
  dim, hidden, batch = cfg.get("dim"), cfg.get("hidden"), cfg.get("batch")
  act = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[cfg.get("act")]
  sizes = (dim,) + tuple(hidden) + (1,)
  n_layers = len(sizes) - 1
  teacher = [(dim, TEACHER_WIDTH)] + [(TEACHER_WIDTH, TEACHER_WIDTH)] * (
      TEACHER_DEPTH - 1)

  def init(key):
    shapes = {"x": (NUM_SAMPLES, dim)}
    shapes.update({f"t{i}": s for i, s in enumerate(teacher)})
    shapes.update({f"w{i}": (sizes[i], sizes[i + 1]) for i in range(n_layers)})
    z = normal_tree(key, shapes)
    params = {}
    for i in range(n_layers):
      params[f"w{i}"] = 1.2 / math.sqrt(sizes[i]) * z[f"w{i}"]
      params[f"b{i}"] = jnp.zeros((sizes[i + 1],))
    labels = _teacher_labels(z["x"], [z[f"t{i}"] for i in range(len(teacher))])
    return params, {"x": z["x"], "y": labels}

  def objective(p, x, y):
    logits = _mlp(p, x, n_layers, act)[:, 0]
    return _xent(logits, y) + L2_SCALE * l2_penalty(p)

  def loss(p, d, key):
    idx = _minibatch(key, batch)
    return objective(p, d["x"][idx], d["y"][idx])

  return FnTask(cfg, init, loss, lambda p, d: objective(p, d["x"], d["y"]))


ACTIVATIONS = ("sigmoid", "tanh")  # a bucket's ``act`` indexes these
MLP_DIM_PAD = 12  # a bucket's inputs: the largest of the sampled dims
MLP_WIDTH_PADS = (8, 32)  # a bucket's hidden widths round up to these
# ... and, from this depth on, all to the largest (few samples are that
# deep; 8 buckets of them would compile 8 programs for 1/3 of the MLPs).
MLP_DEEP = 3


def _mlp_bucket(c: TaskConfig):
  hidden = tuple(c.get("hidden"))
  pads = tuple(min(p for p in MLP_WIDTH_PADS if p >= h) for h in hidden)
  if len(hidden) >= MLP_DEEP:
    pads = (max(MLP_WIDTH_PADS),) * len(hidden)
  return ({"pad_dim": MLP_DIM_PAD, "pad_batch": max(BATCH_SIZES),
           "pad_hidden": pads},
          {"dim": c.get("dim"), "hidden": hidden,
           "act": ACTIVATIONS.index(c.get("act")), "batch": c.get("batch")})


def _build_padded_mlp(cfg) -> FnTask:
  """The MLP of a bucket: inputs and hidden layers padded to static sizes.

  The padded input features are zero and the padded hidden units' outputs
  are masked to zero, so the loss is the unpadded MLP's and every padded
  weight and bias has a zero gradient (the L2 penalty counts the real
  entries only); padded entries start at zero.
  """
  dim, hidden, batch = cfg.get("dim"), cfg.get("hidden"), cfg.get("batch")
  pad_hidden = tuple(cfg.get("pad_hidden"))
  sizes = (cfg.get("pad_dim"),) + pad_hidden + (1,)
  n_layers = len(sizes) - 1
  fan_in = [dim] + [hidden[i] for i in range(len(pad_hidden))]
  units = [prefix(n, s) for s, n in zip(sizes[:-1], fan_in)]
  units.append(jnp.ones((1,)))
  masks = {}
  for i in range(n_layers):
    masks[f"w{i}"] = units[i][:, None] * units[i + 1][None, :]
    masks[f"b{i}"] = units[i + 1]
  is_tanh = cfg.get("act") == ACTIVATIONS.index("tanh")
  teacher = [(sizes[0], TEACHER_WIDTH)] + [(TEACHER_WIDTH, TEACHER_WIDTH)] * (
      TEACHER_DEPTH - 1)

  def act(x):
    return jnp.where(is_tanh, jnp.tanh(x), jax.nn.sigmoid(x))

  def init(key):
    shapes = {"x": (NUM_SAMPLES, sizes[0])}
    shapes.update({f"t{i}": s for i, s in enumerate(teacher)})
    shapes.update({f"w{i}": (sizes[i], sizes[i + 1]) for i in range(n_layers)})
    z = normal_tree(key, shapes)
    x = z["x"] * units[0]
    params = {}
    for i in range(n_layers):
      params[f"w{i}"] = (1.2 / jnp.sqrt(fan_in[i].astype(jnp.float32)) *
                         z[f"w{i}"] * masks[f"w{i}"])
      params[f"b{i}"] = jnp.zeros((sizes[i + 1],))
    # ReLU teachers are positively homogeneous: their labels do not depend
    # on the scale of the (zero-padded) inputs.
    labels = _teacher_labels(x, [z[f"t{i}"] for i in range(len(teacher))])
    return params, {"x": x, "y": labels}

  def objective(p, x, y, weights=None):
    h = x
    for i in range(n_layers):
      h = h @ p[f"w{i}"] + p[f"b{i}"]
      if i < n_layers - 1:
        h = act(h) * units[i + 1]
    real = jax.tree_util.tree_map(lambda w, m: w * m, p, masks)
    return _xent(h[:, 0], y, weights) + L2_SCALE * l2_penalty(real)

  def loss(p, d, key):
    idx, weights = _batch_rows(key, batch, cfg.get("pad_batch"))
    return objective(p, d["x"][idx], d["y"][idx], weights)

  return FnTask(cfg, init, loss, lambda p, d: objective(p, d["x"], d["y"]))


def _sample_mlp(rng):
  depth = int(rng.integers(1, 4))
  return {"dim": choice(rng, [5, 8, 12]),
          "hidden": tuple(choice(rng, [4, 8, 16, 32]) for _ in range(depth)),
          "act": choice(rng, ["sigmoid", "tanh"]),
          "batch": choice(rng, BATCH_SIZES)}


MLP = TaskFamily(
    "mlp", "sigmoid/tanh MLP (1-3 hidden layers of 4-32) on random ReLU-MLP "
    "labels, 5-12 features, 1000 samples, batch 20-100",
    _sample_mlp, _build_mlp, bucket_fn=_mlp_bucket)
