"""The weighted meta-training ensemble, held-out test and validation tasks.

Three disjoint seed streams: meta-training samples from the run's integer
seed, ``holdout_configs`` (the held-out TEST tasks) from ``[HOLDOUT_SEED,
i]`` and ``validation_configs`` (for model selection, never for training
or testing) from ``[VALIDATION_SEED, i]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from metatrain.tasks.base import TaskConfig, TaskFamily
from metatrain.tasks.registry import FAMILIES, build_task
from metatrain.tasks.transforms import ORDER, TRANSFORMS, make_sum_family

# Held-out configs come from rngs seeded with [HOLDOUT_SEED, i], validation
# configs from [VALIDATION_SEED, i]; training rngs are seeded from the run's
# integer seed: three different entropy streams.
HOLDOUT_SEED = 2017_0000
VALIDATION_SEED = 2017_0001

DEFAULT_TRANSFORM_PROBS = (("rescale", 0.1), ("param_scale", 0.15),
                           ("log_objective", 0.1), ("gradient_noise", 0.1),
                           ("sparse", 0.05))
# The sparse transform (p=0.99) needs this many parameters to carry any
# signal: a 2-D problem would see an all-zero gradient on 98% of its steps
# (the ``sparse_bowl`` family covers small sparse problems instead).
SPARSE_MIN_PARAMS = 20
# Families whose gradients are sparse already: no sparse transform on top.
SPARSE_FAMILIES = ("sparse_bowl",)


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
    transform_probs: ``((transform_name, probability), ...)``; each listed
      transform is drawn (one uniform each, in the fixed order
      ``transforms.ORDER``), gets its own sampled static settings and is
      applied in that order. ``sparse`` is skipped for tasks with fewer
      than ``SPARSE_MIN_PARAMS`` parameters and for ``SPARSE_FAMILIES``.
    overrides: families sampled instead of the registry's family of the
      same name (they must build the same tasks); the frozen held-out
      ensemble uses it for the 2-part sums of its time.
  """

  weights: tuple[tuple[str, float], ...]
  transform_probs: tuple[tuple[str, float], ...] = DEFAULT_TRANSFORM_PROBS
  overrides: tuple[TaskFamily, ...] = ()

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
    for name, w in self.weights:
      if w > 0 and FAMILIES[name].check_fn is not None:
        FAMILIES[name].check_fn()
    object.__setattr__(self, "overrides", tuple(self.overrides))
    for fam in self.overrides:
      if fam.name not in FAMILIES:
        raise ValueError(f"override of unknown task family {fam.name!r}")

  def family(self, name: str) -> TaskFamily:
    """The family that samples ``name``'s configs (an override or the
    registry's)."""
    for fam in self.overrides:
      if fam.name == name:
        return fam
    return FAMILIES[name]

  def sample(self, rng: np.random.Generator) -> TaskConfig:
    """One config (deterministic given the rng state)."""
    names = [n for n, _ in self.weights]
    w = np.array([w for _, w in self.weights], float)
    cfg = self.family(names[rng.choice(len(names), p=w / w.sum())]).sample(
        rng)
    probs = dict(self.transform_probs)
    transforms = []
    for t in ORDER:
      if t not in probs:  # unlisted transforms draw nothing
        continue
      if rng.random() < probs[t]:
        settings = tuple(TRANSFORMS[t].sample(rng).items())
        if t == "sparse" and (cfg.family in SPARSE_FAMILIES or
                              num_params(cfg) < SPARSE_MIN_PARAMS):
          continue
        transforms.append((t, settings))
    return dataclasses.replace(cfg, transforms=tuple(transforms))

  def describe(self) -> list[str]:
    """Lines for ``lopt tasks``: family, weight, description; transforms."""
    total = sum(w for _, w in self.weights)
    lines = [f"{'family':<16} {'weight':>6}  description"]
    for name, w in self.weights:
      lines.append(f"{name:<16} {w / total:>6.1%}  "
                   f"{self.family(name).description}")
    lines.append("")
    lines.append(f"{'transform':<16} {'prob':>6}  description")
    for name, p in self.transform_probs:
      lines.append(f"{name:<16} {p:>6.0%}  {TRANSFORMS[name].description}")
    return lines


def default_ensemble(include_mlps: bool = True) -> Ensemble:
  """The reference's problem groups with rough weights; MLPs are optional.

  The 2017 paper trains without neural nets, the reference problem sets
  include small MLPs: ``include_mlps`` chooses. ``large_quadratic`` is
  slower per step, so its weight is moderate; ``norm`` and ``sparse_bowl``
  roughly match their share of the reference's 101 problems (6 Norms plus
  5 rescaled ones; 3 sparse bowls).
  """
  weights = [("quadratic", 2.0), ("large_quadratic", 0.5), ("bowl", 1.5),
             ("sparse_bowl", 0.5), ("fn2d", 2.0), ("norm", 1.0),
             ("logistic", 1.5), ("matmul_algorithm", 1.0), ("sum", 0.75)]
  if include_mlps:
    weights.append(("mlp", 1.0))
  return Ensemble(tuple(weights))


# The neural-network families: ``include_mlps=False`` leaves them out.
NET_FAMILIES = ("mlp", "image_mlp", "image_conv")


def ensemble_for(include_mlps: bool = True,
                 families: tuple[str, ...] = (),
                 weights: dict[str, float] | None = None) -> Ensemble:
  """The default ensemble, or equal weights over ``families`` if given.

  ``weights`` then sets the weights of single families (0 drops one). On
  the default mix it may add families (``image_mlp=2``), but never a
  network family under ``include_mlps=False``. With ``families`` given, it
  only reweights those. So a preset's weights still hold under
  ``--no-mlps`` or a ``tasks.families`` list. The transforms stay the
  default ones.
  """
  if families:
    base = Ensemble(tuple((f, 1.0) for f in families))
  else:
    base = default_ensemble(include_mlps)
  if not weights:
    return base
  names = [n for n, _ in base.weights]
  if not families:
    names += [n for n in weights if n not in names and
              (include_mlps or n not in NET_FAMILIES)]
  merged = {**dict(base.weights), **weights}
  kept = tuple((n, merged[n]) for n in names if merged[n] > 0)
  if not kept:
    raise ValueError("tasks.weights: every family has weight 0")
  return dataclasses.replace(base, weights=kept)


# The default ensemble as it was when the held-out test tasks were fixed
# (before norm, sparse_bowl, param_scale and sums of 2-11 parts): its
# held-out configs must not move, since recorded benchmarks refer to them.
_HOLDOUT_TRANSFORM_PROBS = (("rescale", 0.1), ("log_objective", 0.1),
                            ("gradient_noise", 0.1), ("sparse", 0.05))
_HOLDOUT_SUM = make_sum_family(
    {k: FAMILIES[k] for k in ("quadratic", "bowl", "fn2d")}, build_task,
    num_parts=(2,))


def holdout_ensemble(include_mlps: bool = True) -> Ensemble:
  """The frozen ensemble that ``holdout_configs`` samples for the default."""
  weights = [("quadratic", 2.0), ("large_quadratic", 0.5), ("bowl", 1.5),
             ("fn2d", 2.0), ("logistic", 1.5), ("matmul_algorithm", 1.0),
             ("sum", 0.5)]
  if include_mlps:
    weights.append(("mlp", 1.0))
  return Ensemble(tuple(weights), _HOLDOUT_TRANSFORM_PROBS, (_HOLDOUT_SUM,))


HOLDOUT_ENSEMBLE = holdout_ensemble()
_FROZEN_HOLDOUT = {default_ensemble(m): holdout_ensemble(m)
                   for m in (True, False)}


def _sample_stream(seed: int, n: int, ensemble: Ensemble
                   ) -> list[TaskConfig]:
  return [ensemble.sample(np.random.default_rng([seed, i]))
          for i in range(n)]


def holdout_configs(n: int = 16, ensemble: Ensemble | None = None
                    ) -> list[TaskConfig]:
  """Fixed held-out TEST configs, deterministic across processes.

  Config i is sampled from ``np.random.default_rng([HOLDOUT_SEED, i])``, a
  seed meta-training never uses. For the default ensemble (``None``, or
  ``default_ensemble(m)``) the frozen ``holdout_ensemble(m)`` is sampled,
  so these configs do not change when the training ensemble does (their
  instances may: e.g. the 2-D functions' init boxes).
  """
  ensemble = ensemble or default_ensemble()
  return _sample_stream(HOLDOUT_SEED, n,
                        _FROZEN_HOLDOUT.get(ensemble, ensemble))


def image_validation_ensemble() -> Ensemble:
  """The real-image families (2:1 MLPs to ConvNets) with the default
  transforms: ``validation_configs`` of it are the ``vimage`` tasks."""
  return Ensemble((("image_mlp", 2.0), ("image_conv", 1.0)))


def validation_configs(n: int = 16, ensemble: Ensemble | None = None
                       ) -> list[TaskConfig]:
  """Fixed validation configs of ``ensemble`` (default: the default one).

  Config i is sampled from ``np.random.default_rng([VALIDATION_SEED, i])``:
  neither meta-training's stream nor the held-out test tasks', so they can
  pick checkpoints or settings without touching the test tasks.
  """
  return _sample_stream(VALIDATION_SEED, n, ensemble or default_ensemble())
