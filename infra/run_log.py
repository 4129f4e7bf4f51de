"""``workdir/lopt.log``: third-party tracebacks go there, not to the terminal.

A handled failure of ``lopt train`` (a full disk, a damaged checkpoint)
is one line on the terminal. Everything else that the libraries print about
it (Orbax's and asyncio's tracebacks from their background threads, Ray's
shutdown) goes to ``workdir/lopt.log``, which that line names.

``RunLog.install`` routes, for the run:

- ERROR and worse records of the third-party loggers (``absl``, which Orbax
  logs through, ``asyncio``, ``orbax``, ``ray``) to the file only; their
  warnings still reach the terminal too;
- exceptions of background threads (``threading.excepthook``) and
  unraisable ones (``sys.unraisablehook``, e.g. ``Event loop is closed``
  from a finaliser) to the file only.

``RunLog.fail`` writes the handled exception's traceback to the file,
prints the one line, and points the process's stderr (fd 2) at the file,
so that what the libraries print while shutting down stays out of the
terminal too.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
import threading
import time
import traceback

LOG_NAME = "lopt.log"
_THIRD_PARTY = ("absl", "asyncio", "orbax", "ray")


class _FileHandler(logging.StreamHandler):
  """Writes to the log file; a full disk must not print logging's own
  "--- Logging error ---" tracebacks to the terminal."""

  def handleError(self, record: logging.LogRecord) -> None:
    del record


class _BelowError(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


class RunLog:
  """``workdir/lopt.log``, appended to by each session."""

  def __init__(self, workdir: str, command: str):
    self.path = os.path.join(workdir, LOG_NAME)
    try:
      self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError:  # a read-only workdir: the temp dir instead
      self.path = os.path.join(tempfile.gettempdir(),
                               f"lopt-{os.getpid()}.log")
      self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # pylint: disable=consider-using-with
    self.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
               f"pid {os.getpid()}: {command}")
    self._saved: list = []

  def write(self, text: str) -> None:
    try:
      self._file.write(text if text.endswith("\n") else text + "\n")
    except (OSError, ValueError):
      pass  # a full disk: the terminal line still says what failed

  def install(self) -> None:
    """Routes third-party errors and thread tracebacks to the file."""
    to_file = _FileHandler(self._file)
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_term = logging.StreamHandler(sys.stderr)
    to_term.setLevel(logging.WARNING)
    to_term.addFilter(_BelowError())
    for name in _THIRD_PARTY:
      log = logging.getLogger(name)
      self._saved.append((log, list(log.handlers), log.propagate))
      log.handlers = [to_file, to_term]
      log.propagate = False
    self._saved_hooks = (threading.excepthook, sys.unraisablehook)

    def thread_hook(args):
      self.write(f"exception in thread {getattr(args.thread, 'name', '?')}:"
                 "\n" + "".join(traceback.format_exception(
                     args.exc_type, args.exc_value, args.exc_traceback)))

    def unraisable_hook(u):
      self.write(f"unraisable exception ({u.err_msg or 'ignored'} "
                 f"{u.object!r}):\n" + "".join(traceback.format_exception(
                     u.exc_type, u.exc_value, u.exc_traceback)))

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook

  def uninstall(self) -> None:
    for log, handlers, propagate in self._saved:
      log.handlers, log.propagate = handlers, propagate
    self._saved = []
    if hasattr(self, "_saved_hooks"):
      threading.excepthook, sys.unraisablehook = self._saved_hooks
      del self._saved_hooks

  def fail(self, message: str, exc: BaseException) -> None:
    """Logs ``exc``, prints ``lopt: error: message`` and quiets stderr."""
    self.write("".join(traceback.format_exception(exc)))
    line = " ".join(message.split())
    print(f"lopt: error: {line} (details: {self.path})", file=sys.stderr,
          flush=True)
    if sys.stderr is not sys.__stderr__:
      return  # stderr is captured (tests calling cli.main): leave fd 2 be
    try:
      sys.stderr.flush()
      os.dup2(self._file.fileno(), 2)
    except (OSError, ValueError):
      pass

  def close(self) -> None:
    # An asyncio task that failed inside a library (Orbax reading a damaged
    # checkpoint) logs "Task exception was never retrieved" with its
    # traceback when it is freed: free such tasks now, while that log still
    # goes to the file, not later to the terminal.
    gc.collect()
    self.uninstall()
    try:
      self._file.close()
    except OSError:
      pass
