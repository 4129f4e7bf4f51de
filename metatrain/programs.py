"""Bounds the compiled XLA programs that a long-lived process keeps alive.

JAX keeps every compiled program for the life of the process. On XLA:CPU each
unroll program holds about 1,000-2,000 memory maps of executable code, and
Linux caps a process at ``vm.max_map_count`` maps (65,530 by default). A long
meta-training run keeps sampling new task configs, so without a bound it
eventually fails inside LLVM with "Cannot allocate memory" and crashes.

Call ``note(key)`` before running a jitted function whose compile is keyed by
``key`` (a task config, a scan length, ...). When a new key arrives while the
process already uses more than ``MAP_FRACTION`` of its map limit, JAX's caches
are dropped (``jax.clear_caches``), which unmaps the old executables; later
calls recompile what they need. JAX cannot evict single programs, so the
bound is kept loose to avoid recompiling the programs still in use. Where
``/proc`` is unavailable, at most ``MAX_PROGRAMS`` distinct keys are kept.
"""

from __future__ import annotations

import logging
import os
from typing import Hashable

import jax

MAX_PROGRAMS = 32  # only used where the map count is unknown
MAP_FRACTION = 0.5

_seen: set = set()
_stats = {"clears": 0, "programs": 0}
_log = logging.getLogger(__name__)


def map_count() -> int | None:
  """Memory maps of this process, or None where /proc is unavailable."""
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def map_limit() -> int | None:
  """The kernel's per-process map limit, or None where unknown."""
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return None


def _over_budget() -> bool:
  n, limit = map_count(), map_limit()
  if n is None or limit is None:
    return len(_seen) >= MAX_PROGRAMS
  return n > MAP_FRACTION * limit


def clear() -> None:
  """Drops every compiled program this process holds."""
  jax.clear_caches()
  _seen.clear()
  _stats["clears"] += 1


def note(key: Hashable) -> bool:
  """Records that the program for ``key`` is about to run.

  Returns True when the caches were cleared to make room for it.
  """
  if key in _seen:
    return False
  cleared = False
  if _seen and _over_budget():
    _log.info("dropping %d compiled programs (%s memory maps)", len(_seen),
              map_count())
    clear()
    cleared = True
  _seen.add(key)
  _stats["programs"] += 1
  return cleared


def enable_persistent_cache(path: str, max_bytes: int = 2 << 30) -> str | None:
  """Keeps compiled programs on disk at ``path`` ("" disables).

  A program dropped by ``clear`` (or lost with a restarted worker) then
  reloads in seconds instead of recompiling. Returns the directory used, or
  None when disabled or unwritable (a warning says why; nothing else breaks).
  """
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    _log.warning("compile cache disabled: cannot create %s (%s)", path, e)
    return None
  if jax.config.jax_compilation_cache_dir != path:
    # The cache binds to its first directory; rebind to this one.
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_compilation_cache_max_size", max_bytes)
  return path


RECOMMENDED_MAP_LIMIT = 262144


def map_limit_advice() -> str | None:
  """A one-line hint when the map limit is low for long runs, else None."""
  limit = map_limit()
  if limit is None or limit >= RECOMMENDED_MAP_LIMIT:
    return None
  return (f"note: vm.max_map_count is {limit}; long runs compile many XLA "
          f"programs and drop them all at {int(MAP_FRACTION * limit)} memory "
          f"maps. Raise it for fewer recompiles: sudo sysctl -w "
          f"vm.max_map_count={RECOMMENDED_MAP_LIMIT}")


def stats() -> dict[str, int]:
  """Programs noted and cache clears so far, and live programs/maps."""
  return dict(_stats, live=len(_seen), maps=map_count() or -1)
