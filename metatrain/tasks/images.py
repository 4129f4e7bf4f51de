"""Classifiers on real small images: ReLU/GELU MLPs and tiny ConvNets.

Two sources of 8x8 grayscale images, each a fixed pool of ``POOL``,
standardized:

* ``fmnist``: Fashion-MNIST's *train* split, cropped to 24x24 and
  average-pooled 3x3 to 8x8; its ten classes.
* ``photo``: 16x16 patches of the two photographs that ship with
  scikit-learn (``load_sample_images``: a temple in China and a flower),
  average-pooled 2x2 to 8x8; ten classes, the photo and which fifth of its
  height the patch comes from (natural-image statistics, texture and
  colour-free shape cues).

Each instance draws ``NUM_SAMPLES`` images (with replacement) from its
source and maps the ten classes onto ``classes`` labels by a random
permutation modulo ``classes`` (2, 5 or 10-way problems); the network has
ten outputs either way. The evaluators' Fashion-MNIST tasks are 28x28 with
other models, and their digits tasks another dataset: docs/architecture.md
says what is shared.

Buckets: an MLP's hidden layers pad to ``WIDTH_PAD`` units (one program
per depth), a ConvNet's channels are static (one per width); activation,
widths, batch size and classes are dynamic hyperparameters.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain import datasets
from metatrain.tasks.base import (L2_SCALE, FnTask, TaskFamily, choice,
                                  l2_penalty, normal_tree, pad_mask, prefix)

POOL = 4000  # images kept (1 MB of constants in each program)
SIDE = 8
NUM_SAMPLES = 512  # per instance; the full-batch loss is over these
BATCH_SIZES = (32, 64, 128)
CLASSES = (2, 5, 10)
ACTIVATIONS = ("relu", "gelu")  # a bucket's ``act`` indexes these
SOURCES = ("fmnist", "photo")  # a bucket's ``data`` indexes these
WIDTHS = (16, 32, 64)
WIDTH_PAD = 64
CHANNELS = (8, 16)


@functools.lru_cache(maxsize=1)
def pool_images() -> tuple[np.ndarray, np.ndarray]:
  """``(images [POOL, 8, 8] float32, labels [POOL] int32)``."""
  # Uncached: the standardized 28x28 split is 188 MB, and only this
  # pool of it stays in memory.
  a = datasets.fashion_mnist_arrays.__wrapped__("train")
  x = a["image"][:POOL, 2:26, 2:26, 0].reshape(POOL, SIDE, 3, SIDE, 3)
  x = x.mean(axis=(2, 4))
  x = (x - x.mean()) / x.std()
  return x.astype(np.float32), a["label"][:POOL].astype(np.int32)


@functools.lru_cache(maxsize=1)
def photo_patches() -> tuple[np.ndarray, np.ndarray]:
  """``(images [POOL, 8, 8] float32, labels [POOL] int32)``: patches of
  scikit-learn's sample photos (label: photo * 5 + fifth of its height)."""
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  photos = [im.astype(np.float32).mean(-1) for im in
            load_sample_images().images]
  rng = np.random.default_rng(0)  # a fixed pool
  which = rng.integers(0, len(photos), POOL)
  xs, ys = np.empty((POOL, SIDE, SIDE), np.float32), np.empty(POOL, np.int32)
  w = 2 * SIDE
  for n, i in enumerate(which):
    h, wd = photos[i].shape
    r, c = rng.integers(0, h - w + 1), rng.integers(0, wd - w + 1)
    patch = photos[i][r:r + w, c:c + w]
    xs[n] = patch.reshape(SIDE, 2, SIDE, 2).mean(axis=(1, 3))
    ys[n] = 5 * i + min(4, int(5 * (r + w / 2) / h))
  return ((xs - xs.mean()) / xs.std()).astype(np.float32), ys


def _check_data() -> None:
  try:
    pool_images()
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"the image_mlp/image_conv task families need "
                     f"Fashion-MNIST: {e} (or drop them from "
                     "tasks.weights)") from None


def _sample_data(key, classes, source):
  """An instance's images and labels (classes grouped modulo ``classes``)
  from ``source`` (a name of ``SOURCES``, or its index as an array)."""
  ki, kp = jax.random.split(key)
  idx = jax.random.randint(ki, (NUM_SAMPLES,), 0, POOL)
  perm = jax.random.permutation(kp, 10)
  pools = {name: fn() for name, fn in (("fmnist", pool_images),
                                       ("photo", photo_patches))}
  if isinstance(source, str):  # the exact task: one pool
    images, labels = (jnp.asarray(a)[idx] for a in pools[source])
  else:  # a bucket's: the source is an input
    pick = jnp.asarray(source) == SOURCES.index("photo")
    images = jnp.where(pick, jnp.asarray(pools["photo"][0])[idx],
                       jnp.asarray(pools["fmnist"][0])[idx])
    labels = jnp.where(pick, jnp.asarray(pools["photo"][1])[idx],
                       jnp.asarray(pools["fmnist"][1])[idx])
  return {"x": images, "y": perm[labels] % classes}


def _act(cfg):
  act = cfg.get("act")
  is_gelu = (act == "gelu") if isinstance(act, str) else (
      act == ACTIVATIONS.index("gelu"))
  return lambda h: jnp.where(is_gelu, jax.nn.gelu(h), jax.nn.relu(h))


def _xent(logits, y, weights):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  if weights is None:
    return jnp.mean(ce)
  return jnp.sum(weights * ce) / jnp.sum(weights)


def _fn_task(cfg, init_params, forward, masks=None) -> FnTask:
  """The task: softmax cross-entropy of ``forward`` plus the L2 penalty of
  the real (unpadded) weights; minibatches as the padded MLPs draw them."""
  batch = cfg.get("batch")
  pad_batch = cfg.get("pad_batch", batch)

  def init(key):
    kd, kp = jax.random.split(key)
    return init_params(kp), _sample_data(kd, cfg.get("classes"),
                                         cfg.get("data", "fmnist"))

  def objective(p, x, y, weights=None):
    real = p if masks is None else jax.tree_util.tree_map(
        lambda w, m: w * m, p, masks)
    return _xent(forward(p, x), y, weights) + L2_SCALE * l2_penalty(real)

  def loss(p, d, key):
    weights = pad_mask(batch, pad_batch)
    n = batch if weights is None else pad_batch
    idx = jax.random.randint(key, (n,), 0, NUM_SAMPLES)
    return objective(p, d["x"][idx], d["y"][idx], weights)

  return FnTask(cfg, init, loss, lambda p, d: objective(p, d["x"], d["y"]))


def _build_mlp(cfg) -> FnTask:
  """An MLP on the flattened 8x8 images; hidden layers padded (masked)."""
  hidden = cfg.get("hidden")
  pads = tuple(cfg.get("pad_hidden") or hidden)
  sizes = (SIDE * SIDE,) + pads + (10,)
  n = len(sizes) - 1
  units = [jnp.ones((sizes[0],))] + [prefix(hidden[i], s)
                                     for i, s in enumerate(pads)]
  units.append(jnp.ones((10,)))
  fan_in = [SIDE * SIDE] + [hidden[i] for i in range(len(pads))]
  masks = {}
  for i in range(n):
    masks[f"w{i}"] = units[i][:, None] * units[i + 1][None, :]
    masks[f"b{i}"] = units[i + 1]
  act = _act(cfg)

  def init_params(key):
    z = normal_tree(key, {f"w{i}": (sizes[i], sizes[i + 1])
                          for i in range(n)})
    p = {}
    for i in range(n):
      scale = jnp.sqrt(2.0 / jnp.asarray(fan_in[i], jnp.float32))
      p[f"w{i}"] = scale * z[f"w{i}"] * masks[f"w{i}"]
      p[f"b{i}"] = jnp.zeros((sizes[i + 1],))
    return p

  def forward(p, x):
    h = x.reshape(x.shape[0], -1)
    for i in range(n):
      h = h @ p[f"w{i}"] + p[f"b{i}"]
      if i < n - 1:
        h = act(h) * units[i + 1]
    return h

  return _fn_task(cfg, init_params, forward, masks)


def _conv(x, w, b):
  """A 3x3 SAME convolution (NHWC, HWIO) as one matmul over the nine
  shifted copies of ``x`` (im2col): the same sums, and under meta-
  training's vmap over instances a batched matmul, 3x faster on XLA:CPU
  than ``lax.conv_general_dilated``'s grouped convolution."""
  _, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(3)
                          for j in range(3)], axis=-1)
  return cols @ w.reshape(9 * c, -1) + b


def _build_conv(cfg) -> FnTask:
  """conv3x3(c) - act - 2x2 mean pool - conv3x3(2c) - act - global mean -
  dense(10)."""
  c = cfg.get("channels")
  shapes = {"c0": (3, 3, 1, c), "c1": (3, 3, c, 2 * c), "w": (2 * c, 10)}
  fan_in = {"c0": 9, "c1": 9 * c, "w": 2 * c}
  act = _act(cfg)

  def init_params(key):
    z = normal_tree(key, shapes)
    p = {k: math.sqrt(2.0 / fan_in[k]) * z[k] for k in shapes}
    p.update(b0=jnp.zeros((c,)), b1=jnp.zeros((2 * c,)), b=jnp.zeros((10,)))
    return p

  def forward(p, x):
    h = act(_conv(x[..., None], p["c0"], p["b0"]))
    h = h.reshape(h.shape[0], SIDE // 2, 2, SIDE // 2, 2, c).mean((2, 4))
    h = act(_conv(h, p["c1"], p["b1"])).mean((1, 2))
    return h @ p["w"] + p["b"]

  return _fn_task(cfg, init_params, forward)


def _common(rng):
  return {"act": choice(rng, ACTIVATIONS), "batch": choice(rng, BATCH_SIZES),
          "classes": choice(rng, CLASSES), "data": choice(rng, SOURCES)}


def _dynamic(c):
  return {"act": ACTIVATIONS.index(c.get("act")), "batch": c.get("batch"),
          "classes": c.get("classes"),
          "data": SOURCES.index(c.get("data", "fmnist"))}


IMAGE_MLP = TaskFamily(
    "image_mlp", "ReLU/GELU MLP (1-2 hidden layers of 16-64) on 8x8 "
    "Fashion-MNIST (train split) or photo patches, 2/5/10 classes, batch "
    "32-128",
    lambda rng: {"hidden": tuple(choice(rng, WIDTHS) for _ in range(
        int(rng.integers(1, 3)))), **_common(rng)},
    _build_mlp,
    bucket_fn=lambda c: (
        {"pad_hidden": (WIDTH_PAD,) * len(c.get("hidden")),
         "pad_batch": max(BATCH_SIZES)},
        {"hidden": tuple(c.get("hidden")), **_dynamic(c)}),
    check_fn=_check_data)

IMAGE_CONV = TaskFamily(
    "image_conv", "ReLU/GELU 2-layer ConvNet (8 or 16 channels) on 8x8 "
    "Fashion-MNIST (train split) or photo patches, 2/5/10 classes, batch "
    "32-128",
    lambda rng: {"channels": choice(rng, CHANNELS), **_common(rng)},
    _build_conv,
    bucket_fn=lambda c: ({"channels": c.get("channels"),
                          "pad_batch": max(BATCH_SIZES)}, _dynamic(c)),
    check_fn=_check_data)
