"""The weighted meta-training ensemble and the held-out validation tasks."""

from __future__ import annotations

import dataclasses

import numpy as np

from metatrain.tasks.base import TaskConfig
from metatrain.tasks.registry import FAMILIES
from metatrain.tasks.transforms import ORDER, TRANSFORMS

HOLDOUT_SEED = 2017_0000  # training rngs are seeded from the run's seed


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Samples a family by weight, then applies each transform with its prob."""

  weights: tuple[tuple[str, float], ...]
  transform_probs: tuple[tuple[str, float], ...] = (
      ("rescale", 0.1), ("log_objective", 0.1), ("gradient_noise", 0.1),
      ("sparse", 0.05))

  def __post_init__(self):
    for name, w in self.weights:
      if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: "
                         f"{', '.join(sorted(FAMILIES))}")
      if w < 0:
        raise ValueError(f"negative weight for {name}")
    for name, p in self.transform_probs:
      if name not in TRANSFORMS or not 0 <= p <= 1:
        raise ValueError(f"bad transform probability {name}={p}")
    if sum(w for _, w in self.weights) <= 0:
      raise ValueError("ensemble weights sum to zero")

  def sample(self, rng: np.random.Generator) -> TaskConfig:
    names = [n for n, _ in self.weights]
    w = np.array([w for _, w in self.weights], float)
    family = FAMILIES[names[rng.choice(len(names), p=w / w.sum())]]
    cfg = family.sample(rng)
    probs = dict(self.transform_probs)
    transforms = tuple((t, tuple(TRANSFORMS[t][1](rng).items()))
                       for t in ORDER if rng.random() < probs.get(t, 0.0))
    return dataclasses.replace(cfg, transforms=transforms)

  def describe(self) -> list[str]:
    total = sum(w for _, w in self.weights)
    lines = [f"{'family':<16} {'weight':>6}  description"]
    for name, w in self.weights:
      lines.append(f"{name:<16} {w / total:>6.1%}  "
                   f"{FAMILIES[name].description}")
    lines.append("transforms (probability per sampled task): " + ", ".join(
        f"{t} {p:.0%}" for t, p in self.transform_probs))
    return lines


def default_ensemble(include_mlps: bool = True) -> Ensemble:
  """The paper's families with equal-ish weights; MLPs are optional."""
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
  """Fixed held-out validation configs, never used for meta-training."""
  ensemble = ensemble or default_ensemble()
  return [ensemble.sample(np.random.default_rng([HOLDOUT_SEED, i]))
          for i in range(n)]
