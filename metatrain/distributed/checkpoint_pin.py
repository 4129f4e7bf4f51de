"""The run's best checkpoint, kept whatever the retention policy.

The trainer pins one step: the best fully evaluated checkpoint still on
disk, as chosen by a ``pick`` function it is given (``evaluators.best``:
this layer knows nothing of evaluator records). The pin is the file
``workdir/best_checkpoint.json`` (``{"step": N, "info": {...}, "pinned_at":
...}``, replaced atomically), so it survives a resume and readers such as
``lopt export --best`` see it; ``PinnedStep`` is the Orbax preservation
policy that keeps the pinned step beside ``keep_last``/``keep_every``.
Pinning a better step releases the previous one: Orbax deletes it at the
next save unless another rule keeps it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from orbax.checkpoint import checkpoint_managers as ocm

from metatrain import files

# (step, info) of the best fully evaluated step among those given, or None.
Pick = Callable[[list[int]], tuple[int, dict[str, Any]] | None]


@dataclasses.dataclass
class PinnedStep(ocm.PreservationPolicy):
  """Preserves the pinned step (none while ``step`` is None)."""

  step: int | None = None

  def should_preserve(self, checkpoints: Sequence[Any], *,
                      context: Any) -> Sequence[bool]:
    del context
    return [c.step == self.step for c in checkpoints]


def read_pin(path: str) -> dict[str, Any] | None:
  """The pin file's content, or None (no file; unreadable: a warning)."""
  try:
    with open(path) as f:
      pin = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    warnings.warn(f"{path}: unreadable best-checkpoint pin ({e}); ignored",
                  stacklevel=2)
    return None
  if (not isinstance(pin, dict) or not isinstance(pin.get("step"), int)
      or isinstance(pin["step"], bool)):
    warnings.warn(f"{path}: best-checkpoint pin without a step; ignored",
                  stacklevel=2)
    return None
  pin.setdefault("info", {})
  return pin


def write_pin(path: str, step: int, info: dict[str, Any]) -> None:
  """Replaces the pin file atomically (write, fsync, rename)."""
  pin = {"step": int(step), "info": info,
         "pinned_at": datetime.datetime.now().isoformat(timespec="seconds")}
  files.write_atomic(path, json.dumps(pin, indent=2, sort_keys=True))


def keep_best(ckpt: Any, pick: Pick) -> int | None:
  """Pins the step ``pick`` chooses among ``ckpt``'s complete steps.

  Call it before each save: the retention of that save then keeps the new
  best and releases the old one. Records of deleted steps never count, as
  ``pick`` only sees the steps retention still keeps; when it finds nothing
  (no evaluator, evaluations still incomplete) the current pin stays.

  Args:
    ckpt: the trainer's ``checkpoints.Checkpointer``.
    pick: returns ``(step, info)`` for the best fully evaluated step among
      those given (info: JSON-safe, stored in the pin), or None.

  Returns:
    The newly pinned step, or None if the pin did not change.
  """
  found = pick(ckpt.retained_steps())
  if found is None or found[0] == ckpt.protected_step:
    return None
  ckpt.protect(found[0], found[1])
  return found[0]
