"""Task protocol: a family samples static configs; a config builds a Task.

A ``TaskConfig`` fixes every array shape, so the tasks of one config can be
vmapped over seeds. ``Task.init(key)`` samples a problem instance (its params
and its data); losses are pure functions of (params, data, key).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np


def _freeze(v: Any) -> Any:
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  if isinstance(v, dict):
    return tuple((k, _freeze(x)) for k, x in v.items())
  if isinstance(v, np.generic):
    return v.item()
  return v


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Static, hashable description of one task (determines all shapes)."""

  family: str
  params: tuple = ()  # ((key, value), ...)
  transforms: tuple = ()  # ((name, ((key, value), ...)), ...)

  def __post_init__(self):
    object.__setattr__(self, "params", _freeze(self.params))
    object.__setattr__(self, "transforms", tuple(
        (n, _freeze(p)) for n, p in self.transforms))

  def get(self, key: str, default: Any = None) -> Any:
    for k, v in self.params:
      if k == key:
        return v
    return default

  @property
  def name(self) -> str:
    inner = ",".join(f"{k}={v}" for k, v in self.params
                     if not isinstance(v, tuple) or k != "parts")
    s = f"{self.family}({inner})"
    for t, p in self.transforms:
      s = f"{t}[{','.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in p)}]({s})"
    return s

  def to_dict(self) -> dict[str, Any]:
    def enc(v):
      if isinstance(v, TaskConfig):
        return {"__task__": v.to_dict()}
      if isinstance(v, tuple):
        return [enc(x) for x in v]
      return v
    return {"family": self.family,
            "params": [[k, enc(v)] for k, v in self.params],
            "transforms": [[n, [[k, enc(v)] for k, v in p]]
                           for n, p in self.transforms]}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TaskConfig":
    def dec(v):
      if isinstance(v, dict) and "__task__" in v:
        return cls.from_dict(v["__task__"])
      if isinstance(v, list):
        return tuple(dec(x) for x in v)
      return v
    return cls(d["family"], tuple((k, dec(v)) for k, v in d["params"]),
               tuple((n, tuple((k, dec(v)) for k, v in p))
                     for n, p in d.get("transforms", ())))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)


class Task:
  """A problem with pure, jit/vmap-friendly functions.

  Subclasses (or instances built with ``Task.from_fns``) define ``init`` and
  ``loss``; ``full_loss`` defaults to the noise-free loss and
  ``loss_and_grad`` to ``jax.value_and_grad(loss)``.
  """

  config: TaskConfig

  def init(self, key) -> tuple[Any, Any]:
    raise NotImplementedError

  def loss(self, params, data, key) -> jax.Array:
    raise NotImplementedError

  def full_loss(self, params, data) -> jax.Array:
    return self.loss(params, data, jax.random.PRNGKey(0))

  def loss_and_grad(self, params, data, key):
    return jax.value_and_grad(self.loss)(params, data, key)


class FnTask(Task):
  """A Task made of plain functions."""

  def __init__(self, config: TaskConfig, init: Callable, loss: Callable,
               full_loss: Callable | None = None):
    self.config = config
    self._init, self._loss, self._full = init, loss, full_loss

  def init(self, key):
    return self._init(key)

  def loss(self, params, data, key):
    return self._loss(params, data, key)

  def full_loss(self, params, data):
    if self._full is None:
      return super().full_loss(params, data)
    return self._full(params, data)


@dataclasses.dataclass(frozen=True)
class TaskFamily:
  """Samples static configs and builds tasks from them."""

  name: str
  description: str
  sample_fn: Callable[[np.random.Generator], dict[str, Any]]
  build_fn: Callable[[TaskConfig], Task]

  def sample(self, rng: np.random.Generator) -> TaskConfig:
    return TaskConfig(self.name, tuple(self.sample_fn(rng).items()))

  def build(self, config: TaskConfig) -> Task:
    return self.build_fn(config)
