"""Problem transforms that wrap a Task, and the sum of two tasks.

Loss transforms (``rescale``, ``log_objective``) map the loss and, by the
chain rule, the wrapped task's (possibly altered) gradient, so they compose
with the gradient transforms (``gradient_noise``, ``sparse``), which leave
the loss unchanged and alter only the gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from metatrain.tasks.base import (Task, TaskConfig, TaskFamily,
                                  add_gradient_noise, choice, log_uniform,
                                  tree_random_like)


class Wrapped(Task):
  """A task that delegates everything to ``base``."""

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


class GradientNoise(Wrapped):
  """Adds ``stdev * N(0, 1)`` to every gradient entry; the loss is unchanged."""

  def __init__(self, base: Task, config: TaskConfig, stdev: float):
    super().__init__(base, config)
    self.stdev = float(stdev)

  def loss_and_grad(self, params, data, key):
    k_base, k_noise = jax.random.split(key)
    loss, grads = self.base.loss_and_grad(params, data, k_base)
    return loss, add_gradient_noise(grads, k_noise, self.stdev)


class Sparse(Wrapped):
  """Zeroes each gradient entry with probability ``p`` (new mask each step)."""

  def __init__(self, base: Task, config: TaskConfig, p: float = 0.99):
    super().__init__(base, config)
    self.p = float(p)

  def loss_and_grad(self, params, data, key):
    k_base, k_mask = jax.random.split(key)
    loss, grads = self.base.loss_and_grad(params, data, k_base)
    u = tree_random_like(k_mask, grads, "uniform")
    return loss, jax.tree_util.tree_map(
        lambda g, r: jnp.where(r < self.p, jnp.zeros_like(g), g), grads, u)


class Rescale(Wrapped):
  """The optimizer sees ``q = scale * p``; the task is evaluated at q / scale.

  As in the reference: with scale 1000 the parameters look 1000x larger and
  the gradients 1000x smaller than the base task's.
  """

  def __init__(self, base: Task, config: TaskConfig, scale: float):
    super().__init__(base, config)
    self.scale = float(scale)

  def _to_base(self, params):
    return jax.tree_util.tree_map(lambda q: q / self.scale, params)

  def init(self, key):
    params, data = self.base.init(key)
    return jax.tree_util.tree_map(lambda p: p * self.scale, params), data

  def loss(self, params, data, key):
    return self.base.loss(self._to_base(params), data, key)

  def full_loss(self, params, data):
    return self.base.full_loss(self._to_base(params), data)

  def loss_and_grad(self, params, data, key):
    loss, g = self.base.loss_and_grad(self._to_base(params), data, key)
    return loss, jax.tree_util.tree_map(lambda x: x / self.scale, g)


class LogObjective(Wrapped):
  """``log(1 + loss)``: non-negative, and compresses huge loss ranges."""

  def loss(self, params, data, key):
    return jnp.log1p(self.base.loss(params, data, key))

  def full_loss(self, params, data):
    return jnp.log1p(self.base.full_loss(params, data))

  def loss_and_grad(self, params, data, key):
    loss, g = self.base.loss_and_grad(params, data, key)
    return jnp.log1p(loss), jax.tree_util.tree_map(lambda x: x / (1 + loss),
                                                   g)


@dataclasses.dataclass(frozen=True)
class Transform:
  """A registered transform.

  Attributes:
    name: registry name.
    description: one line for ``lopt tasks``.
    wrap: ``(base_task, config, **settings) -> Task``.
    sample: ``rng -> dict`` of static settings.
  """

  name: str
  description: str
  wrap: Callable[..., Task]
  sample: Callable[[np.random.Generator], dict[str, Any]]

  def __call__(self, base: Task, config: TaskConfig, **settings) -> Task:
    return self.wrap(base, config, **settings)


TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("rescale", "optimizer sees params * scale, scale log-uniform "
              "in [0.1, 1000]", Rescale,
              lambda rng: {"scale": log_uniform(rng, 0.1, 1000.0)}),
    Transform("log_objective", "loss -> log(1 + loss)",
              LogObjective, lambda rng: {}),
    Transform("gradient_noise", "adds N(0, stdev^2) to gradients, stdev "
              "log-uniform in [0.01, 1]", GradientNoise,
              lambda rng: {"stdev": log_uniform(rng, 0.01, 1.0)}),
    Transform("sparse", "zeroes each gradient entry with p=0.99 (tasks with "
              ">= 20 params)", Sparse,
              lambda rng: {"p": 0.99}),
)}
# Sampled transforms are applied in this order: loss transforms first, so
# that the gradient transforms act on the final gradients.
ORDER = ("rescale", "log_objective", "gradient_noise", "sparse")


class SumTask(Task):
  """The sum of two tasks' losses; params and data are ``{"a", "b"}``."""

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
  """The ``sum`` family: two sub-tasks sampled from ``parts``.

  Quadratic parts get small dims (3-13), as in the reference's sum problems.
  """
  names = sorted(parts)

  def sample_part(rng):
    cfg = parts[choice(rng, names)].sample(rng)
    if cfg.family == "quadratic":
      cfg = TaskConfig("quadratic", (("dim", int(rng.integers(3, 14))),
                                     ("noise", cfg.get("noise", 0.0))))
    return cfg

  def sample(rng):
    return {"parts": (sample_part(rng), sample_part(rng))}

  def build_sum(cfg: TaskConfig):
    a, b = cfg.get("parts")
    return SumTask(cfg, build(a), build(b))

  return TaskFamily("sum", "sum of the losses of two tasks from: " +
                    ", ".join(names), sample, build_sum)
