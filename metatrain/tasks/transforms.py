"""Problem transforms that wrap a Task, and the sum of several tasks.

Parameter and loss transforms (``rescale``, ``param_scale``,
``log_objective``) map the parameters or the loss and, by the chain rule,
the wrapped task's (possibly altered) gradient, so they compose with the
gradient transforms (``gradient_noise``, ``sparse``), which leave the loss
unchanged and alter only the gradients.
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from metatrain.tasks.base import (Task, TaskConfig, TaskFamily,
                                  add_gradient_noise, choice, is_static,
                                  log_uniform, tree_random_like, uniform)


def _number(v):
  """A static setting as a python float; a bucket's (an array) as is."""
  return float(v) if is_static(v) else v


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
    self.stdev = _number(stdev)

  def loss_and_grad(self, params, data, key):
    k_base, k_noise = jax.random.split(key)
    loss, grads = self.base.loss_and_grad(params, data, k_base)
    return loss, add_gradient_noise(grads, k_noise, self.stdev)


class Sparse(Wrapped):
  """Zeroes each gradient entry with probability ``p`` (new mask each step)."""

  def __init__(self, base: Task, config: TaskConfig, p: float = 0.99):
    super().__init__(base, config)
    self.p = _number(p)

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
    self.scale = _number(scale)

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


PARAM_SCALE_RANGE = (1e-3, 1e3)


class ParamScale(Wrapped):
  """Per-tensor reparameterization ``p = s * p'``; the optimizer sees p'.

  The task augmentation of Metz et al. 2022 and Celo (Moudgil et al. 2025):
  each parameter tensor gets its own scale s, log-uniform in
  ``PARAM_SCALE_RANGE``, drawn with the instance (``init``) and kept in its
  data, so the scales cost no compilation and vary continuously. The loss at
  p' is the base loss at ``s * p'``, the initial p' is ``p / s`` and the
  gradient in p' is ``s`` times the base gradient: a tensor's values and its
  gradients move by the inverse factors, as a layer's do under a change of
  parameterization. Per tensor rather than per task: the optimizer has to
  adapt each tensor's step size on its own, as it must on networks whose
  layers (and biases) live at different scales; for one-tensor tasks the
  two coincide. ``rescale`` (the reference's) is the per-task version with
  a narrower range. ``amount`` (1 as sampled) multiplies the log-scales: a
  bucket's tasks carry the transform with amount 0 (every scale 1) where the
  sample has none.
  """

  def __init__(self, base: Task, config: TaskConfig, amount: float = 1.0):
    super().__init__(base, config)
    self.amount = _number(amount)

  def _scales(self, key, params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    lo, hi = (math.log(x) for x in PARAM_SCALE_RANGE)
    logs = uniform(key, (len(leaves),), lo, hi)
    if not (is_static(self.amount) and self.amount == 1.0):
      logs = logs * self.amount
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.exp(logs[i]).astype(x.dtype)
                  for i, x in enumerate(leaves)])

  @staticmethod
  def _to_base(params, scales):
    return jax.tree_util.tree_map(lambda q, s: q * s, params, scales)

  def init(self, key):
    # The base instance is the untransformed task's at the same key.
    params, data = self.base.init(key)
    scales = self._scales(jax.random.fold_in(key, 0x5CA1E), params)
    return (jax.tree_util.tree_map(lambda p, s: p / s, params, scales),
            {"task": data, "scale": scales})

  def loss(self, params, data, key):
    return self.base.loss(self._to_base(params, data["scale"]), data["task"],
                          key)

  def full_loss(self, params, data):
    return self.base.full_loss(self._to_base(params, data["scale"]),
                               data["task"])

  def loss_and_grad(self, params, data, key):
    loss, g = self.base.loss_and_grad(self._to_base(params, data["scale"]),
                                      data["task"], key)
    return loss, jax.tree_util.tree_map(lambda x, s: x * s, g, data["scale"])


class LogObjective(Wrapped):
  """``log(1 + loss)``: non-negative, and compresses huge loss ranges.

  ``on`` (True as sampled): a bucket's tasks carry the transform switched
  by an array, off where the sample has none.
  """

  def __init__(self, base: Task, config: TaskConfig, on=True):
    super().__init__(base, config)
    self.on = bool(on) if is_static(on) else on

  def _map(self, loss):
    if self.on is True:
      return jnp.log1p(loss)
    return jnp.where(self.on > 0, jnp.log1p(loss), loss)

  def loss(self, params, data, key):
    return self._map(self.base.loss(params, data, key))

  def full_loss(self, params, data):
    return self._map(self.base.full_loss(params, data))

  def loss_and_grad(self, params, data, key):
    loss, g = self.base.loss_and_grad(params, data, key)
    denom = 1 + loss
    if self.on is not True:
      denom = jnp.where(self.on > 0, denom, 1.0)
    return self._map(loss), jax.tree_util.tree_map(lambda x: x / denom, g)


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
    Transform("param_scale", "per tensor, optimizer sees p / s, s "
              "log-uniform in [1e-3, 1e3] per instance", ParamScale,
              lambda rng: {}),
    Transform("log_objective", "loss -> log(1 + loss)",
              LogObjective, lambda rng: {}),
    Transform("gradient_noise", "adds N(0, stdev^2) to gradients, stdev "
              "log-uniform in [0.01, 1]", GradientNoise,
              lambda rng: {"stdev": log_uniform(rng, 0.01, 1.0)}),
    Transform("sparse", "zeroes each gradient entry with p=0.99 (tasks with "
              ">= 20 params)", Sparse,
              lambda rng: {"p": 0.99}),
)}
# Sampled transforms are applied in this order: parameter and loss
# transforms first, so that the gradient transforms act on the final
# gradients.
ORDER = ("rescale", "param_scale", "log_objective", "gradient_noise",
         "sparse")


MAX_SUM_PARTS = len(string.ascii_lowercase)


class SumTask(Task):
  """The sum of several tasks' losses.

  Params and data are dicts keyed ``"a", "b", ...`` by part (in order, so
  the leaves keep the parts' order).
  """

  def __init__(self, config: TaskConfig, parts: tuple[Task, ...]):
    if not 1 <= len(parts) <= MAX_SUM_PARTS:
      raise ValueError(f"a sum has 1 to {MAX_SUM_PARTS} parts, "
                       f"got {len(parts)}")
    self.config, self.parts = config, tuple(parts)
    self.keys = string.ascii_lowercase[:len(parts)]

  def _split(self, key):
    return jax.random.split(key, len(self.parts))

  def init(self, key):
    params, data = {}, {}
    for k, part, kp in zip(self.keys, self.parts, self._split(key)):
      params[k], data[k] = part.init(kp)
    return params, data

  def loss(self, params, data, key):
    return sum(part.loss(params[k], data[k], kp) for k, part, kp in
               zip(self.keys, self.parts, self._split(key)))

  def full_loss(self, params, data):
    return sum(part.full_loss(params[k], data[k])
               for k, part in zip(self.keys, self.parts))

  def loss_and_grad(self, params, data, key):
    total, grads = 0.0, {}
    for k, part, kp in zip(self.keys, self.parts, self._split(key)):
      loss, grads[k] = part.loss_and_grad(params[k], data[k], kp)
      total = total + loss
    return total, grads


SUM_PARTS = (2, 3, 5, 8, 11)  # the reference's sums had 2 to 11 parts


def make_sum_family(parts: dict[str, TaskFamily],
                    build: Callable[[TaskConfig], Task],
                    num_parts: tuple[int, ...] = SUM_PARTS) -> TaskFamily:
  """The ``sum`` family: sub-tasks sampled from ``parts``, summed.

  The number of parts is drawn from ``num_parts`` (none is drawn if it has
  one value). Quadratic parts get small dims (3-13), as in the reference's
  sum problems. Every part's loss is non-negative, so the sum's is too.
  """
  names = sorted(parts)

  def sample_part(rng):
    cfg = parts[choice(rng, names)].sample(rng)
    if cfg.family == "quadratic":
      cfg = TaskConfig("quadratic", (("dim", int(rng.integers(3, 14))),
                                     ("noise", cfg.get("noise", 0.0))))
    return cfg

  def sample(rng):
    n = num_parts[0] if len(num_parts) == 1 else choice(rng, num_parts)
    return {"parts": tuple(sample_part(rng) for _ in range(n))}

  def build_sum(cfg: TaskConfig):
    return SumTask(cfg, tuple(build(p) for p in cfg.get("parts")))

  counts = "/".join(map(str, num_parts))
  return TaskFamily("sum", f"sum of the losses of {counts} tasks from: " +
                    ", ".join(names), sample, build_sum)
