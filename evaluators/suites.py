"""Evaluation suites: which tasks, how long, and the baselines' grids.

A suite is a frozen ``SuiteConfig`` built from a preset name plus
``--set key=value`` overrides (the same syntax as ``lopt train``):

* ``small``: Fashion-MNIST and digits ConvNets and MLPs, 300 steps; minutes
  on a CPU.
* ``heldout``: the 12 held-out configurations of the meta-training
  ensemble, 200 steps, 4 seeds.
* ``validation``: 12 validation configurations of the ensemble and 4 of
  its real-image families (``vimage``), for choosing checkpoints and
  settings (never the test tasks), as ``heldout``.
* ``imagenet``: Inception V3 and ResNet-50 V2, thousands of steps; for
  accelerator hosts (``image_size``, ``batch_size`` and ``steps`` shrink it
  for smoke tests).
* ``retina``: the retina CNN against its LN baseline on simulated
  ganglion cells (white noise and natural-like stimuli).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metatrain.training import config as config_lib

_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """One evaluation suite.

  Attributes:
    name: the preset it came from.
    tasks: task names (``evaluators.problems``).
    steps: optimizer steps per run.
    seeds: runs per (task, optimizer, learning rate), seeds 0..seeds-1.
    batch_size: training batch size (and evaluation batch size).
    image_size: ImageNet resolution; 0 uses each model's (299 Inception
      V3, 224 ResNet V2).
    dtype: model compute dtype, ``float32`` or ``bfloat16``.
    eval_examples: examples in each held-out evaluation.
    eval_every: held-out evaluation period in steps (0: only at the end).
    chunk: steps per compiled call: a ``lax.scan`` for small problems; 1
      for models with convolutions (XLA:CPU runs convolutions inside a loop
      about 8x slower than outside one, jax 0.10).
    divergence_factor: a loss above ``factor * (first loss + 1)`` diverged.
    baselines: the hand-designed optimizers, each tuned over its grid.
    adam_lrs, rmsprop_lrs, sgdm_lrs: the learning-rate grids.
    learned_lrs: the learned optimizer's rate grid for the tuned-against-
      tuned comparison (``records.summarize``): each preset's Adam grid,
      since its rate means what Adam's does; () runs only its default
      rate (cheaper evaluation, no tuned comparison).
    data_dir: TFDS data dir ("" : TFDS's default).
    fast_compile: compile training steps at XLA's lowest optimization
      level (seconds instead of a minute for ImageNet models on a CPU, but
      slower steps): for smoke tests, never for figures.
  """

  name: str = "small"
  tasks: tuple[str, ...] = ("fmnist_convnet", "fmnist_mlp", "digits_convnet",
                            "digits_mlp")
  steps: int = 300
  seeds: int = 2
  batch_size: int = 64
  image_size: int = 0
  dtype: str = "float32"
  eval_examples: int = 2000
  eval_every: int = 100
  chunk: int = 1
  divergence_factor: float = 1e3
  baselines: tuple[str, ...] = ("adam", "rmsprop", "sgdm")
  # Grids wide enough that every small-suite task's best learning rate is
  # inside them, not on an edge (checked with the untrained HRNN run).
  adam_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
  rmsprop_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
  sgdm_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
  learned_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
  data_dir: str = ""
  fast_compile: bool = False

  def __post_init__(self):
    from evaluators import baselines  # pylint: disable=import-outside-toplevel
    errors = []
    if not self.tasks:
      errors.append("tasks must not be empty")
    for k in ("steps", "seeds", "batch_size", "eval_examples", "chunk"):
      if getattr(self, k) < 1:
        errors.append(f"{k} must be >= 1")
    if self.eval_every < 0 or self.image_size < 0:
      errors.append("eval_every and image_size must be >= 0")
    if self.dtype not in ("float32", "bfloat16"):
      errors.append(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
    for b in self.baselines:
      if b not in baselines.BASELINES:
        errors.append(f"unknown baseline {b!r} (known: "
                      f"{', '.join(baselines.BASELINES)})")
      elif not self.lrs(b):
        errors.append(f"{b}_lrs must not be empty")
      elif any(not lr > 0 for lr in self.lrs(b)):
        errors.append(f"{b}_lrs must be positive")
    if any(not lr > 0 for lr in self.learned_lrs):
      errors.append("learned_lrs must be positive")
    if errors:
      raise ValueError(f"suite {self.name!r}: " + "; ".join(errors))

  def lrs(self, baseline: str) -> tuple[float, ...]:
    return getattr(self, f"{baseline}_lrs")

  def runs(self) -> list[tuple[str, str, float | None, int]]:
    """Every run of a full evaluation, ``(task, optimizer, learning rate,
    seed)``: per task, the baselines' grids, then the learned optimizer at
    its default rate (learning rate None) and over ``learned_lrs``."""
    out = []
    for task in self.tasks:
      for b in self.baselines:
        out += [(task, b, lr, s) for lr in self.lrs(b)
                for s in range(self.seeds)]
      out += [(task, "learned", lr, s) for lr in (None, *self.learned_lrs)
              for s in range(self.seeds)]
    return out

  def problem_settings(self) -> dict[str, Any]:
    return {"batch_size": self.batch_size,
            "eval_examples": self.eval_examples,
            "image_size": self.image_size, "dtype": self.dtype,
            "data_dir": self.data_dir}


PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "heldout": {"tasks": [f"heldout:{i}" for i in range(12)], "steps": 200,
                "seeds": 4, "eval_every": 0, "chunk": 200,
                "adam_lrs": list(_LR_GRID), "rmsprop_lrs": list(_LR_GRID),
                "learned_lrs": list(_LR_GRID),
                "sgdm_lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]},
    # 12 ensemble configs and 4 of the real-image families (3 MLPs, one
    # ConvNet: the ConvNets cost ~40x an MLP per run on a CPU).
    "validation": {"tasks": [*(f"validation:{i}" for i in range(12)),
                             *(f"vimage:{i}" for i in range(1, 5))],
                   "steps": 200, "seeds": 4, "eval_every": 0, "chunk": 200,
                   "adam_lrs": list(_LR_GRID), "rmsprop_lrs": list(_LR_GRID),
                   "learned_lrs": list(_LR_GRID),
                   "sgdm_lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]},
    "imagenet": {"tasks": ["inception_v3", "resnet50_v2"], "steps": 5000,
                 "seeds": 1, "batch_size": 256, "dtype": "bfloat16",
                 "eval_examples": 10000, "eval_every": 1000, "chunk": 1,
                 "adam_lrs": [3e-4, 1e-3, 3e-3],
                 "learned_lrs": [3e-4, 1e-3, 3e-3],
                 "rmsprop_lrs": [3e-4, 1e-3, 3e-3],
                 "sgdm_lrs": [0.03, 0.1, 0.3]},
    "retina": {"tasks": ["retina_cnn", "retina_ln", "retina_cnn_natural",
                         "retina_ln_natural"],
               "steps": 1000, "seeds": 2, "batch_size": 64,
               "eval_every": 250},
}


def load(name: str = "small", overrides: list[str] = ()) -> SuiteConfig:
  """A preset suite plus ``key=value`` overrides (ValueError if unknown)."""
  if name not in PRESETS:
    raise ValueError(f"unknown suite {name!r}; known: {', '.join(PRESETS)}")
  d = config_lib.to_dict(SuiteConfig())
  d.update(PRESETS[name], name=name)
  config_lib.apply_overrides(d, list(overrides))
  return config_lib.from_dict(SuiteConfig, d, where=f"suite {name}")
