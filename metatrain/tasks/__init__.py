"""The meta-training task ensemble (Wichrowska et al. 2017, problem sets)."""

from metatrain.tasks.base import FnTask, Task, TaskConfig, TaskFamily
from metatrain.tasks.ensemble import (HOLDOUT_SEED, Ensemble, default_ensemble,
                                      ensemble_for,
                                      holdout_configs)
from metatrain.tasks.registry import FAMILIES, build_task
from metatrain.tasks.transforms import TRANSFORMS

__all__ = ["FAMILIES", "TRANSFORMS", "Ensemble", "FnTask", "HOLDOUT_SEED",
           "Task", "TaskConfig", "TaskFamily", "build_task",
           "default_ensemble", "ensemble_for", "holdout_configs"]
