"""The checkpoint directory's layout on disk, readable without Orbax or JAX.

``metatrain/checkpoints.py`` writes and restores checkpoints with Orbax; this
module holds what both it and its light readers need: the step-dir names
and markers, the errors, whether a step dir is complete, and the stored
config of the newest step (read before Ray starts, see ``stored_config``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from metatrain.distributed.workdir import Workdir

ITEMS = ("state", "state_meta", "lopt", "lopt_meta")
COMMIT_FILE = "_CHECKPOINT_METADATA"
TMP_MARK = ".orbax-checkpoint-tmp"
ORBAX_ROOT_ENTRIES = ("metadata",)  # Orbax's root-metadata dir
STEP_RE = re.compile(r"0|[1-9]\d*")  # Orbax's standard step names
ASIDE_MARK = ".corrupt-"  # set-aside steps: <step>.corrupt-<time>


class CorruptCheckpointError(ValueError):
  """A complete-looking step that is damaged (unreadable, or its arrays do
  not match their stored digests); ``reason`` says which."""

  def __init__(self, path: Path, reason: str):
    super().__init__(f"checkpoint step dir {path} is corrupt: {reason}; "
                     "remove it or restore an earlier step")
    self.reason = reason


class CheckpointRestoreError(ValueError):
  """Orbax could not read a step (damaged files, or another structure)."""


class CheckpointSaveError(OSError):
  """A save failed (e.g. a full disk); the earlier checkpoints are intact."""


def is_complete_step_dir(path: Path) -> bool:
  """Whether ``path`` holds a committed checkpoint in lopt's format."""
  try:
    meta = json.loads((path / COMMIT_FILE).read_text())
  except (OSError, ValueError):
    return False
  if not isinstance(meta, dict) or meta.get("commit_timestamp_nsecs") is None:
    return False
  return all((path / item).is_dir() for item in ITEMS)


def os_error_text(e: BaseException) -> str:
  """The OS error behind a failed save ("No space left on device"), or the
  exception's first 200 characters."""
  seen = set()
  cause: BaseException | None = e
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, OSError) and cause.errno:
      return os.strerror(cause.errno)
    m = re.search(r"os_error_code='(\d+)'|\[Errno (\d+)\]", str(cause))
    if m:
      return os.strerror(int(m.group(1) or m.group(2)))
    cause = cause.__cause__ or cause.__context__
  return " ".join(str(e).split())[:200] or type(e).__name__


def stored_config(workdir: str) -> tuple[int, dict[str, Any]] | None:
  """``(step, config)`` of the newest complete step, or None.

  Reads the step's JSON item directly, without Orbax or JAX: ``lopt train``
  checks it before it starts Ray, and Ray forks its processes, which must
  happen before JAX's threads exist.
  """
  root = Path(Workdir(workdir).checkpoints)
  if not root.is_dir():
    return None
  steps = sorted((int(p.name) for p in root.iterdir()
                  if STEP_RE.fullmatch(p.name) and is_complete_step_dir(p)),
                 reverse=True)
  for step in steps:
    try:
      meta = json.loads((root / str(step) / "state_meta" / "metadata"
                         ).read_text())
    except (OSError, ValueError):
      continue  # damaged: the trainer sets it aside when it resumes
    if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
      return step, meta["config"]
  return None


def disk_failure(what: str, detail: str, directory, newest: int | None
                 ) -> str:
  """The one line for a write that failed (a full disk): ``what``, why,
  the free space, the newest complete step and the fix."""
  try:
    usage = shutil.disk_usage(directory)
    space = (f"{usage.free / 2**20:.1f} MiB free of "
             f"{usage.total / 2**20:.1f} MiB")
  except OSError:
    space = "free space unknown"
  kept = (f"step {newest} is the newest complete checkpoint"
          if newest is not None else "no complete checkpoint exists yet")
  return (f"{what} ({detail}; {space}); {kept}. Free space or move "
          "--workdir, then rerun the same command to resume")
