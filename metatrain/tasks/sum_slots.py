"""The sum family's buckets: parts of one uniform shape, their kind dynamic.

A sum of P parts drawn from bowl, fn2d, norm and quadratic has as many
shapes as it has part mixes. In a bucket, every part is a *slot*: one
parameter vector of ``SLOT_DIM`` entries (the largest part, norm's 27) of
which the part's own dims are real, and its kind, dims and settings are
hyperparameters. The slots are vmapped, and a slot evaluates its four kinds
and selects one (each kind sees the point 0 unless selected, so every
gradient stays finite): the program's size does not grow with P. The
padded entries start at zero and get zero gradients, so the loss is the
sum's; what the optimizer sees differs (docs/architecture.md): each part
is one 27-entry tensor.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp

from metatrain.tasks import functions2d, norm
from metatrain.tasks.base import (Settings, Task, TaskConfig, normal,
                                  normal_tree, uniform)
from metatrain.tasks.quadratic import _rotation  # pylint: disable=protected-access

KINDS = ("bowl", "fn2d", "norm", "quadratic")  # a slot's ``type`` indexes
SLOT_DIM = max(norm.DIMS)
_QUADRATIC = KINDS.index("quadratic")
HPARAMS = ("type", "dim", "cond", "angle", "noise", "fn")


def part_hparams(part: TaskConfig) -> dict[str, float]:
  """One part's slot settings (kind index, real dims and its settings)."""
  kind = part.family
  if kind not in KINDS:
    raise ValueError(f"a sum bucket has no slot for {kind!r} parts")
  hp = {"type": KINDS.index(kind), "dim": 2, "cond": 1.0, "angle": 0.0,
        "noise": float(part.get("noise", 0.0)), "fn": 0}
  if kind == "bowl":
    hp.update(cond=float(part.get("cond")), angle=float(part.get("angle",
                                                                 0.0)))
  elif kind == "fn2d":
    hp["fn"] = functions2d.NAMES.index(part.get("fn"))
  else:
    hp["dim"] = int(part.get("dim"))
  return hp


def sum_bucket(config: TaskConfig):
  parts = [part_hparams(p) for p in config.get("parts")]
  return ({"parts": len(parts), "slot_dim": SLOT_DIM},
          {k: tuple(p[k] for p in parts) for k in HPARAMS})


def _mask(hp, size):
  return jnp.arange(size) < hp["dim"]


def _slot_init(key, hp, size):
  kz, kb, kf, kp = jax.random.split(key, 4)
  z = normal_tree(kz, {"w": (size, size), "y": (size,), "x": (size,)})
  pad = jnp.zeros((size - 2,))
  kind = hp["type"]
  x = jnp.where(kind == 0, jnp.concatenate([uniform(kb, (2,), -3.0, 3.0),
                                            pad]),
                jnp.where(kind == 1, jnp.concatenate(
                    [functions2d.init_point_of(hp["fn"], kf), pad]), z["x"]))
  m = _mask(hp, size).astype(jnp.float32)
  scale = jnp.where(kind == _QUADRATIC,
                    jax.lax.rsqrt(hp["dim"].astype(jnp.float32)), 1.0)
  data = {"w": z["w"] * scale * m[:, None] * m[None, :], "y": z["y"] * m,
          "p": uniform(kp, (), *norm.POWER_RANGE)}
  return {"x": x * m}, data


def _slot_value(x, data, hp, target_noise):
  """The slot's loss: its kind's, the other kinds evaluated at 0."""
  picks = [hp["type"] == k for k in range(len(KINDS))]
  xs = [jnp.where(p, x, 0.0) for p in picks]
  rot, h = _rotation(hp["cond"], hp["angle"])
  z = rot @ xs[0][:2]
  vals = [
      0.5 * jnp.sum(h * z * z),
      functions2d.value_of(hp["fn"], xs[1][:2]),
      norm.p_norm(data["w"] @ xs[2] - data["y"], data["p"],
                  _mask(hp, x.shape[0])),
      0.5 * jnp.sum((data["w"] @ xs[3] - data["y"] - target_noise) ** 2),
  ]
  return jnp.select(picks, vals)


def _slot_loss(x, data, hp, key):
  """Minibatch loss: the quadratic's noise is on its targets."""
  size = x.shape[0]
  noise = (jnp.where(hp["type"] == _QUADRATIC, hp["noise"], 0.0) *
           normal(key, (size,)) * _mask(hp, size))
  return _slot_value(x, data, hp, noise)


def _slot_grad_noise(key, hp, size):
  """The other kinds' noise is on the gradient."""
  stdev = jnp.where(hp["type"] == _QUADRATIC, 0.0, hp["noise"])
  return stdev * normal(key, (size,)) * _mask(hp, size)


class SumSlots(Task):
  """A sum bucket's task: params and data keyed ``"a", "b", ...`` by part,
  as ``transforms.SumTask``'s, each part a slot."""

  def __init__(self, settings: Settings):
    self.config = settings
    self.hp = {k: settings.get(k) for k in HPARAMS}
    self.size = settings.get("slot_dim")
    self.keys = string.ascii_lowercase[:settings.get("parts")]

  def _stack(self, tree):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                  *[tree[k] for k in self.keys])

  def init(self, key):
    params, data = jax.vmap(_slot_init, in_axes=(0, 0, None))(
        jax.random.split(key, len(self.keys)), self.hp, self.size)
    part = lambda t, i: jax.tree_util.tree_map(lambda a: a[i], t)
    return ({k: part(params, i) for i, k in enumerate(self.keys)},
            {k: part(data, i) for i, k in enumerate(self.keys)})

  def _total(self, params, data, keys):
    return jnp.sum(jax.vmap(_slot_loss)(self._stack(params)["x"],
                                        self._stack(data), self.hp, keys))

  def _keys(self, key):
    """Per slot: (loss key, gradient-noise key)."""
    ks = jax.vmap(jax.random.split)(jax.random.split(key, len(self.keys)))
    return ks[:, 0], ks[:, 1]

  def loss(self, params, data, key):
    return self._total(params, data, self._keys(key)[0])

  def full_loss(self, params, data):
    x, d = self._stack(params)["x"], self._stack(data)
    return jnp.sum(jax.vmap(lambda x, d, hp: _slot_value(x, d, hp, 0.0))(
        x, d, self.hp))

  def loss_and_grad(self, params, data, key):
    k_loss, k_grad = self._keys(key)
    loss, g = jax.value_and_grad(self._total)(params, data, k_loss)
    noise = jax.vmap(_slot_grad_noise, in_axes=(0, 0, None))(
        k_grad, self.hp, self.size)
    return loss, {k: {"x": g[k]["x"] + noise[i]}
                  for i, k in enumerate(self.keys)}


def build_sum_bucket(settings: Settings) -> SumSlots:
  return SumSlots(settings)
