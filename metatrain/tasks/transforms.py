"""Problem transforms that wrap a Task, and the sum of two tasks.

Loss transforms (``rescale``, ``log_objective``) map both the loss and its
gradient by the chain rule, so they compose with gradient transforms
(``gradient_noise``, ``sparse``), which alter only the gradients.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from metatrain.tasks.base import Task, TaskConfig, TaskFamily


class _Wrapped(Task):
  def __init__(self, base: Task, config: TaskConfig):
    self.base, self.config = base, config

  def init(self, key):
    return self.base.init(key)

  def loss(self, params, data, key):
    return self.base.loss(params, data, key)

  def full_loss(self, params, data):
    return self.base.full_loss(params, data)

  def loss_and_grad(self, params, data, key):
    return self.base.loss_and_grad(params, data, key)


class GradientNoise(_Wrapped):
  """Adds ``stdev * N(0, 1)`` to every gradient entry; the loss is unchanged."""

  def __init__(self, base, config, stdev: float):
    super().__init__(base, config)
    self.stdev = stdev

  def loss_and_grad(self, params, data, key):
    k_base, k_noise = jax.random.split(key)
    loss, grads = self.base.loss_and_grad(params, data, k_base)
    leaves, treedef = jax.tree_util.tree_flatten(grads)
    keys = jax.random.split(k_noise, len(leaves))
    noisy = [g + self.stdev * jax.random.normal(k, g.shape, g.dtype)
             for g, k in zip(leaves, keys)]
    return loss, jax.tree_util.tree_unflatten(treedef, noisy)


class Sparse(_Wrapped):
  """Zeroes each gradient entry with probability ``p`` (new mask each step)."""

  def __init__(self, base, config, p: float):
    super().__init__(base, config)
    self.p = p

  def loss_and_grad(self, params, data, key):
    k_base, k_mask = jax.random.split(key)
    loss, grads = self.base.loss_and_grad(params, data, k_base)
    leaves, treedef = jax.tree_util.tree_flatten(grads)
    keys = jax.random.split(k_mask, len(leaves))
    masked = [jnp.where(jax.random.bernoulli(k, 1.0 - self.p, g.shape), g, 0.)
              for g, k in zip(leaves, keys)]
    return loss, jax.tree_util.tree_unflatten(treedef, masked)


class Rescale(_Wrapped):
  """The optimizer sees ``q = p / scale``; the task is evaluated at p."""

  def __init__(self, base, config, scale: float):
    super().__init__(base, config)
    self.scale = scale

  def _to_base(self, params):
    return jax.tree_util.tree_map(lambda q: q * self.scale, params)

  def init(self, key):
    params, data = self.base.init(key)
    return jax.tree_util.tree_map(lambda p: p / self.scale, params), data

  def loss(self, params, data, key):
    return self.base.loss(self._to_base(params), data, key)

  def full_loss(self, params, data):
    return self.base.full_loss(self._to_base(params), data)

  def loss_and_grad(self, params, data, key):
    loss, g = self.base.loss_and_grad(self._to_base(params), data, key)
    return loss, jax.tree_util.tree_map(lambda x: x * self.scale, g)


class LogObjective(_Wrapped):
  """``log(1 + loss)``: non-negative, and compresses huge loss ranges."""

  def loss(self, params, data, key):
    return jnp.log1p(self.base.loss(params, data, key))

  def full_loss(self, params, data):
    return jnp.log1p(self.base.full_loss(params, data))

  def loss_and_grad(self, params, data, key):
    loss, g = self.base.loss_and_grad(params, data, key)
    return jnp.log1p(loss), jax.tree_util.tree_map(lambda x: x / (1 + loss),
                                                   g)


# name -> (constructor(base, config, **settings), settings sampler)
TRANSFORMS: dict[str, tuple[Callable[..., Task], Callable[[Any], dict]]] = {
    "gradient_noise": (GradientNoise, lambda rng: {
        "stdev": float(10 ** rng.uniform(-2, 0))}),
    "rescale": (Rescale, lambda rng: {"scale": float(10 ** rng.uniform(-1, 3))}),
    "sparse": (Sparse, lambda rng: {"p": 0.99}),
    "log_objective": (lambda base, config: LogObjective(base, config),
                      lambda rng: {}),
}
# Loss transforms go first so that gradient transforms act on final grads.
ORDER = ("rescale", "log_objective", "gradient_noise", "sparse")


class SumTask(Task):
  """The sum of two tasks' losses; params are {"a": ..., "b": ...}."""

  def __init__(self, config: TaskConfig, a: Task, b: Task):
    self.config, self.a, self.b = config, a, b

  def init(self, key):
    ka, kb = jax.random.split(key)
    pa, da = self.a.init(ka)
    pb, db = self.b.init(kb)
    return {"a": pa, "b": pb}, {"a": da, "b": db}

  def loss(self, params, data, key):
    ka, kb = jax.random.split(key)
    return (self.a.loss(params["a"], data["a"], ka) +
            self.b.loss(params["b"], data["b"], kb))

  def full_loss(self, params, data):
    return (self.a.full_loss(params["a"], data["a"]) +
            self.b.full_loss(params["b"], data["b"]))

  def loss_and_grad(self, params, data, key):
    ka, kb = jax.random.split(key)
    la, ga = self.a.loss_and_grad(params["a"], data["a"], ka)
    lb, gb = self.b.loss_and_grad(params["b"], data["b"], kb)
    return la + lb, {"a": ga, "b": gb}


def make_sum_family(parts: dict[str, TaskFamily],
                    build: Callable[[TaskConfig], Task]) -> TaskFamily:
  names = sorted(parts)

  def sample(rng):
    a, b = (parts[names[i]].sample(rng)
            for i in rng.integers(0, len(names), 2))
    return {"parts": (a, b)}

  def build_sum(cfg: TaskConfig):
    a, b = cfg.get("parts")
    return SumTask(cfg, build(a), build(b))

  return TaskFamily("sum", "sum of two tasks from: " + ", ".join(names),
                    sample, build_sum)
