"""Optimizers that ship with lopt (``metatrain/pretrained/*.lopt``).

``metatrain.pretrained()`` is the recommended learned optimizer: a plain
optax transformation, used like ``optax.adam``. Each file is a normal
``.lopt`` export (msgpack + JSON, no pickle) whose metadata names how it was
made: the command, the config, the meta-training time and hardware, and its
evaluation summary (``pretrained_info``). ``benchmarks/runs.md`` keeps the
runs that produced them.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Any

import optax

from metatrain.optimizer import export

DEFAULT = "hrnn-v1"


def available() -> list[str]:
  """Names of the shipped optimizers."""
  root = importlib.resources.files("metatrain") / "pretrained"
  if not root.is_dir():
    return []
  return sorted(p.name[:-len(".lopt")] for p in root.iterdir()
                if p.name.endswith(".lopt"))


def pretrained_path(name: str = DEFAULT) -> str:
  """The path of shipped optimizer ``name`` (ValueError if unknown)."""
  path = importlib.resources.files("metatrain") / "pretrained" / f"{name}.lopt"
  if not path.is_file():
    known = ", ".join(available()) or "none (a broken install?)"
    raise ValueError(f"no shipped optimizer {name!r}; shipped: {known}. "
                     "Use metatrain.load_optimizer(path) for your own files.")
  return os.fspath(path)


def pretrained_info(name: str = DEFAULT) -> dict[str, Any]:
  """The metadata of shipped optimizer ``name`` (provenance, evaluation)."""
  return export.read_optimizer(pretrained_path(name))[2]


def pretrained(name: str = DEFAULT, learning_rate: Any = None,
               key: Any = None, kernel: bool | None = None
               ) -> optax.GradientTransformationExtraArgs:
  """The shipped learned optimizer ``name`` as an optax transformation.

  Args:
    name: a shipped optimizer (``available()``).
    learning_rate: a float or an optax schedule; None is the optimizer's
      default rate (1e-3 for every shipped one). The step scales linearly
      with it, like ``optax.adam``'s.
    key, kernel: as ``hrnn_optax``'s.

  Example::

    tx = metatrain.pretrained(learning_rate=1e-3)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

    # A schedule, or a rate you can change between steps:
    tx = metatrain.pretrained(
        learning_rate=optax.warmup_cosine_decay_schedule(0, 3e-3, 100, 5000))
    tx = optax.inject_hyperparams(metatrain.pretrained)(learning_rate=1e-3)
  """
  return export.load_optimizer(pretrained_path(name),
                               learning_rate=learning_rate, key=key,
                               kernel=kernel)
