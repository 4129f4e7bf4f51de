"""One trainer per workdir: an exclusive lock on ``workdir/train.lock``.

``lopt train`` holds the lock for its whole run. The file holds the
holder's pid, host and start time (JSON), so that a refused second trainer
can name the holder. Evaluators and the monitor only read a workdir and
never take it.

Two mechanisms back each other up:

- ``fcntl.flock`` on the file: the kernel releases it when the holder dies,
  however it dies, so a lock left by a killed run is simply free again.
- The file's contents: on filesystems where ``flock`` is not shared across
  hosts (some NFS setups), a second trainer on another host would get the
  flock. The contents still name the holder; a holder on this host is
  checked for being alive (its pid, and that it is a Python process), and
  a holder on another host is trusted, since its liveness cannot be
  checked from here: the refusal says to remove the file if that run is
  gone. A stale lock (its holder gone, on this host) is taken over with a
  warning. On release the file is emptied, not removed (removing a
  flocked file races with a process that has just opened it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from typing import Any, Callable

LOCK_NAME = "train.lock"


class WorkdirBusyError(RuntimeError):
  """Another trainer holds the workdir."""


def _alive(pid: int) -> bool:
  """Whether ``pid`` is a live Python process on this host."""
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      cmd = f.read()
  except OSError:
    try:
      os.kill(pid, 0)  # no /proc (macOS): existence only
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
    return True
  return b"python" in cmd or b"lopt" in cmd


def _describe(holder: dict[str, Any]) -> str:
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
          f"{holder.get('started')}")


class WorkdirLock:
  """Context manager holding ``workdir/train.lock``.

  Raises:
    WorkdirBusyError: on entry, naming the holder, if another trainer runs
      in ``workdir``.
  """

  def __init__(self, workdir: str, command: str = "lopt train",
               warn: Callable[[str], None] | None = None):
    """``warn`` receives the one-line stale-lock warning (default:
    ``warnings.warn``)."""
    self.path = os.path.join(workdir, LOCK_NAME)
    self.command = command
    self._warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    self._fd: int | None = None

  def _read(self) -> dict[str, Any] | None:
    assert self._fd is not None
    os.lseek(self._fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(self._fd, 65536):
      data += chunk
    try:
      holder = json.loads(data) if data.strip() else None
    except ValueError:
      return None
    return holder if isinstance(holder, dict) else None

  def _busy(self, holder: dict[str, Any] | None) -> WorkdirBusyError:
    who = _describe(holder) if holder else "another process"
    return WorkdirBusyError(
        f"{os.path.dirname(self.path) or '.'} is in use by another trainer "
        f"({who}); stop it, or train in another --workdir. If that run is "
        f"gone (e.g. on another host of a shared filesystem), remove "
        f"{self.path}")

  def acquire(self) -> None:
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    self._fd = fd
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._read()
      os.close(fd)
      self._fd = None
      raise self._busy(holder) from None
    holder = self._read()
    if holder and holder.get("pid") != os.getpid():
      here = holder.get("host") == socket.gethostname()
      if not here or _alive(int(holder.get("pid", -1))):
        self._release_fd()
        raise self._busy(holder)
      self._warn(f"{self.path}: taking over the stale lock of a trainer "
                 f"that is gone ({_describe(holder)})")
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": self.command}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + "\n").encode())
    os.fsync(fd)

  def _release_fd(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    except OSError:
      pass  # a full or read-only disk: the flock still goes with us
    self._release_fd()

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()
