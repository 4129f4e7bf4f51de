"""The meta-training task ensemble (Wichrowska et al. 2017, problem sets).

Families: quadratic, large_quadratic, bowl, fn2d (9 classic 2-D functions),
logistic, mlp, matmul_algorithm, sum. Transforms: rescale, log_objective,
gradient_noise, sparse. See ``default_ensemble().describe()``.
"""

from metatrain.tasks.base import FnTask, Task, TaskConfig, TaskFamily
from metatrain.tasks.ensemble import (HOLDOUT_SEED, Ensemble, default_ensemble,
                                      ensemble_for, holdout_configs)
from metatrain.tasks.registry import FAMILIES, build_task
from metatrain.tasks.transforms import TRANSFORMS, Transform

__all__ = ["FAMILIES", "TRANSFORMS", "Ensemble", "FnTask", "HOLDOUT_SEED",
           "Task", "TaskConfig", "TaskFamily", "Transform", "build_task",
           "default_ensemble", "ensemble_for", "holdout_configs"]
