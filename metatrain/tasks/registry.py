"""The registry of task families and ``build_task``."""

from __future__ import annotations

import functools

from metatrain.tasks.base import Task, TaskConfig, TaskFamily
from metatrain.tasks.classification import LOGISTIC, MLP
from metatrain.tasks.functions2d import FN2D
from metatrain.tasks.matmul import MATMUL
from metatrain.tasks.quadratic import BOWL, LARGE_QUADRATIC, QUADRATIC
from metatrain.tasks.transforms import TRANSFORMS, make_sum_family

FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (QUADRATIC, LARGE_QUADRATIC, BOWL, FN2D, LOGISTIC, MLP,
                        MATMUL)}


@functools.lru_cache(maxsize=None)
def build_task(config: TaskConfig) -> Task:
  """Builds a task from its config, applying its transforms in order.

  Cached by config, so jitted code keyed on the (static) config reuses it.
  """
  if config.family not in FAMILIES:
    raise ValueError(f"unknown task family {config.family!r}; known: "
                     f"{', '.join(sorted(FAMILIES))}")
  task = FAMILIES[config.family].build(config)
  for name, settings in config.transforms:
    if name not in TRANSFORMS:
      raise ValueError(f"unknown task transform {name!r}; known: "
                       f"{', '.join(TRANSFORMS)}")
    task = TRANSFORMS[name](task, config, **dict(settings))
  return task


FAMILIES["sum"] = make_sum_family(
    {k: FAMILIES[k] for k in ("quadratic", "bowl", "fn2d")}, build_task)
