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

# XLA compiles and persistent-cache loads in this process, counted from
# JAX's own monitoring events (so every jit counts, ours or a library's).
_compiles = {"built": 0, "cache_hits": 0}
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_listening = False


def _on_duration(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event == _COMPILE_EVENT:  # a compile or a load from the disk cache
    _compiles["built"] += 1


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  if event == _CACHE_HIT_EVENT:
    _compiles["cache_hits"] += 1


def compile_counts() -> dict[str, int]:
  """XLA compiles and compile-cache loads so far in this process.

  ``compiles`` counts XLA compiles, ``cache_hits`` programs loaded from the
  persistent cache instead (``enable_persistent_cache``). (JAX times both
  as one "backend compile" event, and marks the loads.) Counting starts at
  the first call.
  """
  global _listening
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _listening = True
  return {"compiles": _compiles["built"] - _compiles["cache_hits"],
          "cache_hits": _compiles["cache_hits"]}


def default_cache_dir() -> str:
  """Where ``compile_cache_dir="auto"`` keeps programs.

  ``$JAX_COMPILATION_CACHE_DIR`` if set (JAX's own variable), else
  ``$XDG_CACHE_HOME/lopt/jax-<jax>-<jaxlib>`` (``~/.cache/lopt/...``): one
  directory per jax and jaxlib version, so a new version never meets
  programs of an old one, and an old directory can simply be deleted.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  import jaxlib  # pylint: disable=import-outside-toplevel
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lopt", f"jax-{jax.__version__}-"
                      f"{jaxlib.__version__}")


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


def enable_persistent_cache(path: str) -> str | None:
  """Keeps compiled programs on disk at ``path`` ("" disables, "auto" is
  ``default_cache_dir()``).

  A program dropped by ``clear`` (or lost with a restarted worker, or
  compiled by an earlier run or another process of this run) then loads in
  well under a second instead of recompiling. Returns the directory used,
  or None when disabled or unwritable (a warning says why; nothing else
  breaks).
  """
  if not path:
    return None
  if path == "auto":
    path = default_cache_dir()
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
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  # No eviction inside JAX: its LRU eviction races between the processes
  # that share the directory (FileNotFoundError on "-atime" files, seen
  # here). ``trim_cache`` bounds the directory instead, from one process.
  jax.config.update("jax_compilation_cache_max_size", -1)
  return path


def trim_cache(path: str, max_bytes: int = 4 << 30) -> int:
  """Deletes the oldest programs until the cache holds <= ``max_bytes``.

  Run by ``lopt train`` at start, before its workers exist, so that no
  other process of the run is reading; "" or "auto" as for
  ``enable_persistent_cache``. Returns the bytes freed.
  """
  if not path:
    return 0
  path = default_cache_dir() if path == "auto" else path
  path = os.path.abspath(os.path.expanduser(path))
  try:
    entries = [(e.stat().st_mtime, e.stat().st_size, e.path)
               for e in os.scandir(path) if e.is_file()]
  except OSError:
    return 0
  total, freed = sum(s for _, s, _ in entries), 0
  for _, size, p in sorted(entries):
    if total - freed <= max_bytes:
      break
    try:
      os.unlink(p)
      freed += size
    except OSError:
      pass
  return freed


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
