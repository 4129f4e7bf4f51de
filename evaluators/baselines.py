"""Hand-designed baselines over learning-rate grids, and the learned optimizer.

Adam, RMSProp and SGD with momentum are built from a traced learning rate,
so one compiled program serves a whole grid. Baseline runs do not depend on
the checkpoint being evaluated, so their results are cached on disk per
(task, optimizer, learning rate, seed, steps) under ``workdir/eval/baselines``
and computed once per workdir, not once per checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Callable

import optax

from evaluators.runner import Optimizer
from metatrain import files
from metatrain.distributed.workdir import Workdir
from metatrain.optimizer import hrnn
from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.optimizer.optax_adapter import hrnn_optax

# Cache entries from a different format are recomputed, never misread.
CACHE_VERSION = 1

_BUILDERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "adam": lambda a: optax.adam(a["learning_rate"]),
    "rmsprop": lambda a: optax.rmsprop(a["learning_rate"], decay=0.9,
                                       eps=1e-8),
    "sgdm": lambda a: optax.sgd(a["learning_rate"], momentum=0.9),
}
BASELINES = tuple(_BUILDERS)


def baseline(name: str, learning_rate: float) -> Optimizer:
  """A hand-designed optimizer at one learning rate."""
  if name not in _BUILDERS:
    raise ValueError(f"unknown baseline {name!r}; known: "
                     f"{', '.join(BASELINES)}")
  return Optimizer(name=name, family=("baseline", name),
                   build=_BUILDERS[name],
                   args={"learning_rate": float(learning_rate)},
                   hparams={"learning_rate": float(learning_rate)})


def learned(config: HRNNConfig, theta: hrnn.Theta,
            learning_rate: float | None = None) -> Optimizer:
  """The HRNN with meta-parameters ``theta`` at ``learning_rate`` (None: its
  default, ``config.init_lr``). Every checkpoint of ``config`` at every rate
  shares one compiled program per problem (the rate is traced)."""
  lr = config.init_lr if learning_rate is None else float(learning_rate)
  return Optimizer(name="learned", family=("hrnn", config),
                   build=lambda a: hrnn_optax(config, a["theta"],
                                              learning_rate=a["lr"]),
                   args={"theta": theta, "lr": lr},
                   hparams={} if learning_rate is None
                   else {"learning_rate": lr})


class BaselineCache:
  """Baseline run results on disk, one JSON file per run key."""

  def __init__(self, workdir: str):
    self.dir = Workdir(workdir).baselines

  @staticmethod
  def key(task_key: str, optimizer: str, learning_rate: float, seed: int,
          steps: int) -> str:
    return json.dumps({"task": task_key, "optimizer": optimizer,
                       "lr": float(learning_rate), "seed": int(seed),
                       "steps": int(steps), "v": CACHE_VERSION},
                      sort_keys=True)

  def _path(self, key: str) -> str:
    return os.path.join(self.dir,
                        hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

  def get(self, key: str) -> dict[str, Any] | None:
    """The cached result of ``key``, or None (a corrupt entry is ignored
    with a warning and recomputed)."""
    path = self._path(key)
    try:
      with open(path) as f:
        entry = json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError) as e:
      warnings.warn(f"baseline cache: ignoring unreadable {path} ({e}); "
                    "recomputing it", stacklevel=2)
      return None
    if not isinstance(entry, dict) or entry.get("key") != key:
      warnings.warn(f"baseline cache: ignoring {path} (written for another "
                    "key); recomputing it", stacklevel=2)
      return None
    return entry["result"]

  def put(self, key: str, result: dict[str, Any]) -> None:
    """Writes atomically (temp file + rename)."""
    os.makedirs(self.dir, exist_ok=True)
    files.write_atomic(self._path(key),
                       json.dumps({"key": key, "result": result}))
