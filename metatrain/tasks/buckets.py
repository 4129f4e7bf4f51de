"""Compile-free task sampling: a config's bucket and dynamic hyperparameters.

``split(config)`` returns the config's ``Bucket`` (its family's static shape
settings) and its hyperparameters (a pytree of numpy arrays, the same
structure, shapes and dtypes for every config of the bucket).
``build_bucket(bucket, hparams)`` builds the task inside jit from both, so
one compiled meta-training program serves every sample of a bucket: the
hyperparameters are its inputs.

Every bucket's task carries all five transforms (``transforms.ORDER``),
each switched by its hyperparameter, off (the identity) where the sample
does not have it: rescale 1, param_scale amount 0, log_objective 0,
gradient_noise stdev 0, sparse p 0. Where a bucket changes a task (padded
sizes, the sum's uniform parts) is listed in docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metatrain.tasks.base import Bucket, Settings, Task, TaskConfig
from metatrain.tasks.registry import FAMILIES, build_task
from metatrain.tasks.transforms import (ORDER, GradientNoise, LogObjective,
                                        ParamScale, Rescale, Sparse)

TaskSpec = TaskConfig | Bucket  # what a compiled unroll is keyed on


def _array(v: Any) -> np.ndarray:
  """A hyperparameter as a numpy array: ints (and tuples of them) int32,
  everything else float32, so every sample of a bucket has one dtype."""
  a = np.asarray(v)
  return a.astype(np.int32 if a.dtype.kind in "iu" else np.float32)


def transform_hparams(config: TaskConfig) -> dict[str, np.ndarray]:
  """The five transforms' switches of a config (off where it has none)."""
  tr = {name: dict(settings) for name, settings in config.transforms}
  values = {
      "rescale": tr["rescale"]["scale"] if "rescale" in tr else 1.0,
      "param_scale": 1.0 if "param_scale" in tr else 0.0,
      "log_objective": 1.0 if "log_objective" in tr else 0.0,
      "gradient_noise": tr.get("gradient_noise", {}).get("stdev", 0.0),
      "sparse": tr.get("sparse", {}).get("p", 0.0),
  }
  return {k: np.float32(v) for k, v in values.items()}


def split(config: TaskConfig) -> tuple[TaskSpec, dict[str, Any]]:
  """``(bucket, hparams)`` of a sampled config.

  A family without a ``bucket_fn`` (or a transform this module does not
  know) keeps the whole config as its program's key: ``(config, None)``.
  """
  fam = FAMILIES.get(config.family)
  if (fam is None or fam.bucket_fn is None or
      any(name not in ORDER for name, _ in config.transforms)):
    return config, None
  static, dynamic = fam.bucket_fn(config)
  bucket = Bucket(config.family, tuple(sorted(static.items())))
  hparams = {"task": {k: _array(v) for k, v in sorted(dynamic.items())},
             "transforms": transform_hparams(config)}
  return bucket, hparams


def build_bucket(bucket: Bucket, hparams: dict[str, Any]) -> Task:
  """A bucket's task with ``hparams`` (arrays; traced inside jit)."""
  fam = FAMILIES[bucket.family]
  settings = Settings(bucket, hparams["task"])
  task = (fam.build_bucket_fn or fam.build_fn)(settings)
  t = hparams["transforms"]
  task = Rescale(task, settings, t["rescale"])
  task = ParamScale(task, settings, amount=t["param_scale"])
  task = LogObjective(task, settings, on=t["log_objective"])
  task = GradientNoise(task, settings, t["gradient_noise"])
  return Sparse(task, settings, t["sparse"])


def make_task(spec: TaskSpec, hparams: dict[str, Any] | None = None) -> Task:
  """The task of a compiled unroll: a config's (exact, static), or a
  bucket's with its hyperparameters."""
  if isinstance(spec, TaskConfig):
    return build_task(spec)
  if hparams is None:
    raise ValueError(f"bucket {spec.name} needs its hyperparameters")
  return build_bucket(spec, hparams)
