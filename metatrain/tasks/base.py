"""Task protocol: a family samples static configs; a config builds a Task.

A ``TaskConfig`` fixes every array shape, so the tasks of one config can be
vmapped over seeds. ``Task.init(key)`` samples a problem instance (its params
and its data); losses are pure functions of ``(params, data, key)``.

Meta-training does not compile one program per config: a family splits a
config into a ``Bucket`` (its static shape settings, padded sizes where a
size is rounded up) and dynamic hyperparameters, arrays that the one
compiled program of the bucket takes as inputs (``tasks/buckets.py``). A
family's build function therefore reads its settings with ``cfg.get`` from
either a ``TaskConfig`` (python values: the exact task, as evaluators build
it) or a ``Settings`` view (some values traced arrays), and keeps python
branches to settings that are static in both.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

L2_SCALE = 1e-3  # weight decay of the classification tasks (as the reference)


def _freeze(v: Any) -> Any:
  """Makes a config value hashable: lists/dicts to tuples, numpy to python."""
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  if isinstance(v, dict):
    return tuple((k, _freeze(x)) for k, x in v.items())
  if isinstance(v, np.generic):
    return v.item()
  return v


def is_static(v: Any) -> bool:
  """True for a python (or numpy scalar) value, False for an array (a
  bucket's hyperparameter: traced inside jit)."""
  return isinstance(v, (int, float, str, tuple, np.generic))


def is_zero(v: Any) -> bool:
  """True when ``v`` is a static zero (a traced value never is)."""
  return is_static(v) and not isinstance(v, (str, tuple)) and v == 0


def prefix(n, size: int) -> jax.Array:
  """A float32 mask of ``size`` entries whose first ``n`` are 1."""
  return (jnp.arange(size) < n).astype(jnp.float32)


def pad_mask(n, size: int) -> jax.Array | None:
  """``prefix(n, size)`` where ``n`` is a bucket's hyperparameter (the
  array is padded to ``size``); None where ``n`` is static (no padding)."""
  return None if is_static(n) else prefix(n, size)


def _lookup(pairs: tuple, key: str, default: Any) -> Any:
  for k, v in pairs:
    if k == key:
      return v
  return default


def _fmt(v: Any) -> str:
  if isinstance(v, TaskConfig):
    return v.name
  if isinstance(v, tuple):
    if v and all(isinstance(x, TaskConfig) for x in v):
      return " + ".join(x.name for x in v)
    return "(" + ",".join(_fmt(x) for x in v) + ")"
  if isinstance(v, float):
    return f"{v:.3g}"
  return str(v)


def _settings(pairs: tuple) -> str:
  return ",".join(f"{k}={_fmt(v)}" for k, v in pairs)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Static, hashable description of one task (determines all shapes).

  Attributes:
    family: registry name of the family that builds it.
    params: ``((key, value), ...)`` of static settings; values are python
      scalars, strings, tuples or nested ``TaskConfig`` s.
    transforms: ``((transform_name, ((key, value), ...)), ...)`` applied in
      order on top of the family's task.
  """

  family: str
  params: tuple = ()
  transforms: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "params", _freeze(self.params))
    object.__setattr__(self, "transforms", tuple(
        (str(n), _freeze(p)) for n, p in self.transforms))
    for pair in self.params:
      if len(pair) != 2 or not isinstance(pair[0], str):
        raise TypeError(f"TaskConfig params must be (str, value) pairs, "
                        f"got {pair!r}")
    hash(self)  # fail early on unhashable values

  def get(self, key: str, default: Any = None) -> Any:
    """The value of static setting ``key``, or ``default``."""
    return _lookup(self.params, key, default)

  @property
  def name(self) -> str:
    """Short readable name, e.g. ``rescale[scale=10](quadratic(dim=20))``."""
    s = f"{self.family}({_settings(self.params)})"
    for t, p in self.transforms:
      s = f"{t}[{_settings(p)}]({s})" if p else f"{t}({s})"
    return s

  def to_dict(self) -> dict[str, Any]:
    """JSON-safe dict; ``from_dict`` inverts it exactly."""
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
    """Inverse of ``to_dict`` (lists become tuples)."""
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

  @classmethod
  def from_json(cls, s: str) -> "TaskConfig":
    return cls.from_dict(json.loads(s))


@dataclasses.dataclass(frozen=True)
class Bucket:
  """The static part of task configs that share one compiled program.

  Attributes:
    family: the family's registry name.
    params: ``((key, value), ...)``: the static settings (shapes, and the
      padded sizes of settings that the bucket makes dynamic).
  """

  family: str
  params: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "params", _freeze(self.params))
    hash(self)

  def get(self, key: str, default: Any = None) -> Any:
    return _lookup(self.params, key, default)

  @property
  def name(self) -> str:
    return f"{self.family}[{_settings(self.params)}]"


class Settings:
  """A config's settings as a build function reads them: the bucket's static
  ones, and the sample's dynamic ones (arrays, traced inside jit)."""

  def __init__(self, bucket: Bucket, hparams: dict[str, Any]):
    self.bucket, self.hparams = bucket, hparams
    self.family = bucket.family
    self.name = bucket.name

  def get(self, key: str, default: Any = None) -> Any:
    if key in self.hparams:
      return self.hparams[key]
    return self.bucket.get(key, default)


def normal(key, shape, dtype=jnp.float32) -> jax.Array:
  """``jax.random.normal`` drawn flat and reshaped.

  Same distribution; multi-dimensional draws compile several times slower
  on XLA:CPU than flat ones, and every task config is a new compilation.
  """
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def normal_tree(key, shapes: dict[str, tuple[int, ...]]) -> dict:
  """Independent float32 standard normals of the given shapes, one draw."""
  return tree_random_like(key, {k: jax.ShapeDtypeStruct(s, jnp.float32)
                                for k, s in shapes.items()})


def uniform(key, shape, minval=0.0, maxval=1.0) -> jax.Array:
  """``jax.random.uniform`` drawn flat and reshaped (see ``normal``)."""
  return jax.random.uniform(key, (math.prod(shape),), jnp.float32, minval,
                            maxval).reshape(shape)


def tree_random_like(key, tree, dist: str = "normal"):
  """Standard normal (or U[0, 1)) arrays shaped like ``tree``'s leaves.

  Leaves are arrays or ``jax.ShapeDtypeStruct`` s. One flat draw for the
  whole tree: fewer random ops compile faster (see ``normal``).
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  sizes = [math.prod(x.shape) for x in leaves]
  draw = jax.random.normal if dist == "normal" else jax.random.uniform
  flat = draw(key, (sum(sizes),))
  out, i = [], 0
  for x, n in zip(leaves, sizes):
    out.append(flat[i:i + n].reshape(x.shape).astype(x.dtype))
    i += n
  return jax.tree_util.tree_unflatten(treedef, out)


def add_gradient_noise(grads, key, stdev: float):
  """Adds ``stdev * N(0, 1)`` to every entry of ``grads``."""
  return jax.tree_util.tree_map(lambda g, z: g + stdev * z, grads,
                                tree_random_like(key, grads))


def l2_penalty(params) -> jax.Array:
  """Mean over leaves of the leaf's sum of squares (the reference's reg)."""
  leaves = jax.tree_util.tree_leaves(params)
  return sum(jnp.sum(x * x) for x in leaves) / len(leaves)


class Task:
  """A problem made of pure, jit- and vmap-friendly functions.

  Subclasses define ``init`` and ``loss``; ``full_loss`` defaults to ``loss``
  with a fixed key (right for tasks whose loss has no randomness) and
  ``loss_and_grad`` to ``jax.value_and_grad(loss)``.
  """

  config: TaskConfig

  def init(self, key) -> tuple[Any, Any]:
    """Returns ``(params, data)`` of one sampled instance."""
    raise NotImplementedError

  def loss(self, params, data, key) -> jax.Array:
    """Minibatch / noisy loss, a non-negative scalar."""
    raise NotImplementedError

  def full_loss(self, params, data) -> jax.Array:
    """Full-batch, noise-free loss (used by the meta-objective)."""
    return self.loss(params, data, jax.random.PRNGKey(0))

  def loss_and_grad(self, params, data, key):
    """``(loss, grads)`` as the optimizer sees them."""
    return jax.value_and_grad(self.loss)(params, data, key)


class FnTask(Task):
  """A Task made of plain functions.

  Args:
    config: the task's config.
    init: ``key -> (params, data)``.
    loss: ``(params, data, key) -> scalar``.
    full_loss: ``(params, data) -> scalar``; defaults to ``loss`` at a fixed
      key.
    grad_noise: stdev of Gaussian noise added to the gradients only (the
      reference's ``noise_stdev``); the loss value stays clean.
  """

  def __init__(self, config: TaskConfig, init: Callable, loss: Callable,
               full_loss: Callable | None = None, grad_noise: float = 0.0):
    self.config = config
    self._init, self._loss, self._full = init, loss, full_loss
    self.grad_noise = (float(grad_noise) if is_static(grad_noise) else
                       grad_noise)

  def init(self, key):
    return self._init(key)

  def loss(self, params, data, key):
    return self._loss(params, data, key)

  def full_loss(self, params, data):
    if self._full is None:
      return super().full_loss(params, data)
    return self._full(params, data)

  def loss_and_grad(self, params, data, key):
    if is_zero(self.grad_noise):
      return super().loss_and_grad(params, data, key)
    k_loss, k_noise = jax.random.split(key)
    loss, grads = jax.value_and_grad(self.loss)(params, data, k_loss)
    return loss, add_gradient_noise(grads, k_noise, self.grad_noise)


@dataclasses.dataclass(frozen=True)
class TaskFamily:
  """Samples static configs (with numpy) and builds tasks from them.

  Attributes:
    name: registry name (short snake_case).
    description: one line, shown by ``lopt tasks``.
    sample_fn: ``rng -> dict`` of static settings.
    build_fn: ``TaskConfig | Settings -> Task``.
    bucket_fn: ``TaskConfig -> (static, dynamic)``, two dicts: the bucket's
      settings and the sample's dynamic hyperparameters (python numbers or
      tuples of them, the same keys and shapes for every config of the
      bucket). None: every setting is static (a bucket per config).
    build_bucket_fn: builds a bucket's task from ``Settings`` where that
      differs from ``build_fn`` (the sum's uniform parts).
    check_fn: raises (naming the fix) where the family cannot be built on
      this machine, e.g. a missing dataset; an ensemble that samples the
      family calls it when it is made, before any worker starts.
  """

  name: str
  description: str
  sample_fn: Callable[[np.random.Generator], dict[str, Any]]
  build_fn: Callable[[TaskConfig], Task]
  bucket_fn: Callable[[TaskConfig], tuple[dict, dict]] | None = None
  build_bucket_fn: Callable[[Settings], Task] | None = None
  check_fn: Callable[[], None] | None = None

  def sample(self, rng: np.random.Generator) -> TaskConfig:
    return TaskConfig(self.name, tuple(self.sample_fn(rng).items()))

  def build(self, config: TaskConfig) -> Task:
    if config.family != self.name:
      raise ValueError(f"family {self.name!r} cannot build {config.name}")
    return self.build_fn(config)


def choice(rng: np.random.Generator, options) -> Any:
  """``rng.choice`` that returns a python value (keeps configs JSON-safe)."""
  return _freeze(options[int(rng.integers(len(options)))])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
  """Log-uniform in [lo, hi], rounded to 1 significant digit.

  The rounding keeps the number of distinct static configs (hence of jit
  compilations) small while still spanning the range.
  """
  v = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  return float(min(max(float(f"{v:.1g}"), lo), hi))
