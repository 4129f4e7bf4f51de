"""The meta-training task ensemble (Wichrowska et al. 2017, problem sets).

Families: quadratic, large_quadratic, bowl, sparse_bowl, fn2d (9 classic 2-D
functions), norm, logistic, mlp, matmul_algorithm, sum (2-11 parts).
Transforms: rescale, param_scale, log_objective, gradient_noise, sparse. See
``default_ensemble().describe()``. ``holdout_configs`` are the held-out test
tasks, ``validation_configs`` the validation tasks.
"""

from metatrain.tasks.base import (Bucket, FnTask, Settings, Task, TaskConfig,
                                  TaskFamily)
from metatrain.tasks.ensemble import (HOLDOUT_ENSEMBLE, HOLDOUT_SEED,
                                      VALIDATION_SEED, Ensemble,
                                      default_ensemble, ensemble_for,
                                      holdout_configs, holdout_ensemble,
                                      image_validation_ensemble,
                                      validation_configs)
from metatrain.tasks.buckets import build_bucket, split
from metatrain.tasks.registry import FAMILIES, build_task
from metatrain.tasks.transforms import TRANSFORMS, Transform

__all__ = ["FAMILIES", "HOLDOUT_ENSEMBLE", "HOLDOUT_SEED", "TRANSFORMS",
           "VALIDATION_SEED", "Bucket", "Ensemble", "FnTask", "Settings",
           "Task", "TaskConfig", "TaskFamily", "Transform", "build_bucket",
           "build_task", "default_ensemble",
           "ensemble_for", "holdout_configs", "holdout_ensemble",
           "image_validation_ensemble", "split", "validation_configs"]
