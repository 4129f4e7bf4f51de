"""``lopt doctor``: what this install has, and what it is missing.

Prints the versions of lopt, Python and the stack, jax's backend and
devices, the HRNN CPU kernel (built or not, the instruction set it runs
with, the compiler that built it, or why it is unavailable and the fix),
and the compile cache and map-limit settings that decide how often long
runs recompile. Exit code 0; the kernel is optional, so its absence is
reported, not an error.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def report() -> list[str]:
  """The lines ``lopt doctor`` prints."""
  import jax  # pylint: disable=import-outside-toplevel
  from metatrain import __version__
  from metatrain.optimizer import hrnn_kernel
  from metatrain.training import programs
  lines = [f"lopt {__version__} on Python {platform.python_version()} "
           f"({sys.platform}, {platform.machine()})"]
  lines.append("packages: " + ", ".join(
      f"{d} {_version(d)}" for d in ("jax", "jaxlib", "flax", "optax",
                                     "orbax-checkpoint", "ray")))
  devices = sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()})
  lines.append(f"jax backend: {jax.default_backend()} ({len(jax.devices())} "
               f"device(s): {', '.join(devices)})")
  lines.append(hrnn_kernel.status_line())
  limit = programs.map_limit()
  lines.append(f"vm.max_map_count: {limit if limit is not None else 'unknown'}")
  if (advice := programs.map_limit_advice()) is not None:
    lines.append(advice)
  return lines


def main() -> int:
  print("\n".join(report()))
  return 0
