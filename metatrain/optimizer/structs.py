"""Typed frozen dataclasses from JSON-ish dicts: the one config loader.

``from_dict(cls, d)`` builds any config dataclass of lopt (``TrainConfig``
and its parts, ``HRNNConfig``, the evaluator suites) from a dict, checking
every field's type (numbers must be finite) and refusing unknown keys
with a ``ValueError`` that names the key's path. A dataclass may define
``from_dict(d, where)`` of its own to fill in fields that old files lack
(``HRNNConfig``'s legacy defaults); nested fields of that type go through
it, so a dict means the same config whichever loader reads it. A missing field otherwise takes the
class default. User-facing partial configs (presets, ``--config`` files)
are merged onto the current defaults first (``config.load``), so that only
stored, complete configs ever meet the legacy defaults.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any


def _coerce(value: Any, typ: Any, where: str) -> Any:
  """Checks/coerces a JSON-ish value to a dataclass field's type."""
  if dataclasses.is_dataclass(typ):
    if isinstance(value, typ):
      return value
    if not isinstance(value, dict):
      raise ValueError(f"{where} must be a mapping")
    own = getattr(typ, "from_dict", None)
    if own is not None:
      return own(value, where)
    return from_dict(typ, value, where)
  if typ is bool:
    if isinstance(value, bool):
      return value
    raise ValueError(f"{where} must be true/false, got {value!r}")
  if typ is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise ValueError(f"{where} must be an integer, got {value!r}")
  if typ is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      if not math.isfinite(value):  # JSON has no inf/nan; no config wants one
        raise ValueError(f"{where} must be a finite number, got {value!r}")
      return float(value)
    raise ValueError(f"{where} must be a number, got {value!r}")
  if typ is str:
    if isinstance(value, str):
      return value
    raise ValueError(f"{where} must be a string, got {value!r}")
  if typing.get_origin(typ) is tuple:
    if isinstance(value, (list, tuple)):
      args = typing.get_args(typ)
      return tuple(_coerce(v, args[0], where) for v in value)
    raise ValueError(f"{where} must be a list, got {value!r}")
  return value


def from_dict(cls, d: dict[str, Any], where: str = "config"):
  """Builds dataclass ``cls`` from a dict; unknown keys raise ValueError."""
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"unknown config key {where}.{unknown[0]} (valid: "
                     f"{', '.join(sorted(names))})")
  kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in d.items()}
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None

