"""The weighted meta-training ensemble and the held-out validation tasks."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from metatrain.tasks.base import TaskConfig
from metatrain.tasks.registry import FAMILIES, build_task
from metatrain.tasks.transforms import ORDER, TRANSFORMS

# Held-out configs come from rngs seeded with [HOLDOUT_SEED, i]; training
# rngs are seeded from the run's integer seed, a different entropy stream.
HOLDOUT_SEED = 2017_0000

DEFAULT_TRANSFORM_PROBS = (("rescale", 0.1), ("log_objective", 0.1),
                           ("gradient_noise", 0.1), ("sparse", 0.05))
# Sparse gradients (p=0.99) need this many parameters to carry any signal: a
# 2-D problem would see an all-zero gradient on 98% of its steps.
SPARSE_MIN_PARAMS = 20


@functools.lru_cache(maxsize=None)
def num_params(config: TaskConfig) -> int:
  """Number of optimized parameters of a config's task (traced, not run)."""
  params, _ = jax.eval_shape(build_task(config).init, jax.random.PRNGKey(0))
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Samples a family by weight, then applies each transform with its prob.

  Attributes:
    weights: ``((family_name, weight), ...)``, normalized when sampling.
    transform_probs: ``((transform_name, probability), ...)``; each sampled
      transform gets its own sampled static settings and is applied in the
      fixed order ``transforms.ORDER``. ``sparse`` is skipped for tasks with
      fewer than ``SPARSE_MIN_PARAMS`` parameters.
  """

  weights: tuple[tuple[str, float], ...]
  transform_probs: tuple[tuple[str, float], ...] = DEFAULT_TRANSFORM_PROBS

  def __post_init__(self):
    object.__setattr__(self, "weights", tuple(
        (str(n), float(w)) for n, w in self.weights))
    object.__setattr__(self, "transform_probs", tuple(
        (str(n), float(p)) for n, p in self.transform_probs))
    for name, w in self.weights:
      if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: "
                         f"{', '.join(sorted(FAMILIES))}")
      if not w >= 0:
        raise ValueError(f"negative weight for task family {name}")
    for name, p in self.transform_probs:
      if name not in TRANSFORMS:
        raise ValueError(f"unknown task transform {name!r}; known: "
                         f"{', '.join(TRANSFORMS)}")
      if not 0 <= p <= 1:
        raise ValueError(f"transform probability {name}={p} not in [0, 1]")
    if sum(w for _, w in self.weights) <= 0:
      raise ValueError("ensemble weights sum to zero")

  def sample(self, rng: np.random.Generator) -> TaskConfig:
    """One config (deterministic given the rng state)."""
    names = [n for n, _ in self.weights]
    w = np.array([w for _, w in self.weights], float)
    family = FAMILIES[names[rng.choice(len(names), p=w / w.sum())]]
    cfg = family.sample(rng)
    probs = dict(self.transform_probs)
    transforms = []
    for t in ORDER:
      if rng.random() < probs.get(t, 0.0):
        settings = tuple(TRANSFORMS[t].sample(rng).items())
        if t == "sparse" and num_params(cfg) < SPARSE_MIN_PARAMS:
          continue
        transforms.append((t, settings))
    return dataclasses.replace(cfg, transforms=tuple(transforms))

  def describe(self) -> list[str]:
    """Lines for ``lopt tasks``: family, weight, description; transforms."""
    total = sum(w for _, w in self.weights)
    lines = [f"{'family':<16} {'weight':>6}  description"]
    for name, w in self.weights:
      lines.append(f"{name:<16} {w / total:>6.1%}  "
                   f"{FAMILIES[name].description}")
    lines.append("")
    lines.append(f"{'transform':<16} {'prob':>6}  description")
    for name, p in self.transform_probs:
      lines.append(f"{name:<16} {p:>6.0%}  {TRANSFORMS[name].description}")
    return lines


def default_ensemble(include_mlps: bool = True) -> Ensemble:
  """The reference's problem groups with rough weights; MLPs are optional.

  The 2017 paper trains without neural nets, the reference problem sets
  include small MLPs: ``include_mlps`` chooses. ``large_quadratic`` is
  slower per step, so its weight is moderate.
  """
  weights = [("quadratic", 2.0), ("large_quadratic", 0.5), ("bowl", 1.5),
             ("fn2d", 2.0), ("logistic", 1.5), ("matmul_algorithm", 1.0),
             ("sum", 0.5)]
  if include_mlps:
    weights.append(("mlp", 1.0))
  return Ensemble(tuple(weights))


def ensemble_for(include_mlps: bool = True,
                 families: tuple[str, ...] = ()) -> Ensemble:
  """The default ensemble, or equal weights over ``families`` if given."""
  if families:
    return Ensemble(tuple((f, 1.0) for f in families))
  return default_ensemble(include_mlps)


def holdout_configs(n: int = 16, ensemble: Ensemble | None = None
                    ) -> list[TaskConfig]:
  """Fixed held-out validation configs, deterministic across processes.

  Config i is sampled from ``np.random.default_rng([HOLDOUT_SEED, i])``, a
  seed meta-training never uses.
  """
  ensemble = ensemble or default_ensemble()
  return [ensemble.sample(np.random.default_rng([HOLDOUT_SEED, i]))
          for i in range(n)]
