"""The registry of task families and ``build_task``."""

from __future__ import annotations

import dataclasses
import functools

from metatrain.tasks.base import Task, TaskConfig, TaskFamily
from metatrain.tasks.classification import LOGISTIC, MLP
from metatrain.tasks.functions2d import FN2D
from metatrain.tasks.images import IMAGE_CONV, IMAGE_MLP
from metatrain.tasks.matmul import MATMUL
from metatrain.tasks.norm import NORM
from metatrain.tasks.quadratic import (BOWL, LARGE_QUADRATIC, QUADRATIC,
                                       SPARSE_BOWL)
from metatrain.tasks.transforms import TRANSFORMS, make_sum_family

FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (QUADRATIC, LARGE_QUADRATIC, BOWL, SPARSE_BOWL, FN2D,
                        NORM, LOGISTIC, MLP, MATMUL, IMAGE_MLP, IMAGE_CONV)}
# The cheap families a sum draws its parts from.
SUM_PART_FAMILIES = ("bowl", "fn2d", "norm", "quadratic")


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
    {k: FAMILIES[k] for k in SUM_PART_FAMILIES}, build_task)


def _sum_buckets() -> None:
  from metatrain.tasks import sum_slots  # pylint: disable=import-outside-toplevel
  FAMILIES["sum"] = dataclasses.replace(
      FAMILIES["sum"], bucket_fn=sum_slots.sum_bucket,
      build_bucket_fn=sum_slots.build_sum_bucket)


_sum_buckets()
