"""infra/run_log.py: third-party errors go to workdir/lopt.log."""

import asyncio
import gc
import logging

from infra import run_log


def _orphan_failed_task():
  """A finished asyncio task whose exception nobody retrieved, reachable
  only through a reference cycle (as Orbax's failed reads leave them)."""
  loop = asyncio.new_event_loop()

  async def read():
    raise ValueError("Error opening \"zarr\" driver: data corruption")

  task = loop.create_task(read())
  loop.run_until_complete(asyncio.wait([task]))
  loop.close()
  holder = {"task": task}
  holder["self"] = holder  # freed by the cycle collector only


def test_a_task_failure_freed_after_the_run_goes_to_the_file(tmp_path,
                                                               capsys):
  gc.collect()
  gc.disable()  # only close() may collect the cycle
  try:
    log = run_log.RunLog(str(tmp_path), "lopt train")
    log.install()
    _orphan_failed_task()
    log.close()
  finally:
    gc.enable()
  gc.collect()
  text = (tmp_path / run_log.LOG_NAME).read_text()
  assert "Task exception was never retrieved" in text
  assert "data corruption" in text
  err = capsys.readouterr().err
  assert "Traceback" not in err and "never retrieved" not in err, err


def test_close_restores_the_loggers_and_hooks(tmp_path):
  log = logging.getLogger("asyncio")
  handlers, propagate = list(log.handlers), log.propagate
  rl = run_log.RunLog(str(tmp_path), "lopt train")
  rl.install()
  assert log.propagate is False and log.handlers != handlers
  rl.close()
  assert log.handlers == handlers and log.propagate == propagate
