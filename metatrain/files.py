"""Writing files so that a crash or a full disk never leaves half of one.

Every file the system rewrites in place (exported optimizers, the
best-checkpoint pin, ``config.json``, ``run_info.json``, the baseline cache,
the HTML report, benchmark results) goes through :func:`write_atomic`.
Readers see the old content or the new one, never a mixture.
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Replaces ``path`` with ``data`` atomically.

  The data goes to a temporary file in the same directory, is flushed and
  synced to disk, and is then renamed over ``path``. The new file gets the
  permissions ``open()`` would give it (0666 less the umask). On any error
  (a full disk, a missing directory) the exception propagates, ``path``
  keeps its old content and no temporary file is left behind.

  Args:
    path: the file to write; its directory must exist.
    data: text (written as UTF-8) or bytes.
  """
  path = os.fspath(path)
  blob = data.encode("utf-8") if isinstance(data, str) else data
  d = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-",
                             suffix="-" + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
