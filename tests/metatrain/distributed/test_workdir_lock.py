"""One trainer per workdir: the lock, held by real processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from metatrain.distributed.workdir_lock import WorkdirBusyError, WorkdirLock

_HOLDER = textwrap.dedent("""
    import sys, time
    from metatrain.distributed.workdir_lock import WorkdirLock
    lock = WorkdirLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until its stdin closes
    lock.release()
""")


@pytest.fixture(name="holder")
def _holder(tmp_path):
  """A second process that holds tmp_path/run's lock."""
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, cwd=os.getcwd())
  assert proc.stdout.readline().strip() == "locked"
  yield workdir, proc
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_a_second_trainer_is_refused_naming_the_holder(holder):
  workdir, proc = holder
  with pytest.raises(WorkdirBusyError) as err:
    WorkdirLock(str(workdir)).acquire()
  msg = str(err.value)
  assert f"pid {proc.pid} on {socket.gethostname()}" in msg
  assert "another --workdir" in msg
  proc.stdin.close()  # the holder releases; the workdir is free again
  proc.wait(timeout=30)
  with WorkdirLock(str(workdir)) as lock:
    held = json.loads(open(lock.path).read())
    assert held["pid"] == os.getpid()
  assert open(os.path.join(workdir, "train.lock")).read() == ""


def test_a_killed_holder_leaves_a_lock_that_is_taken_over(holder):
  workdir, proc = holder
  proc.kill()  # SIGKILL: no release, the file still names it
  proc.wait()
  path = os.path.join(workdir, "train.lock")
  assert json.loads(open(path).read())["pid"] == proc.pid
  warned = []
  with WorkdirLock(str(workdir), warn=warned.append):
    assert json.loads(open(path).read())["pid"] == os.getpid()
  assert len(warned) == 1
  assert "taking over the stale lock" in warned[0]
  assert f"pid {proc.pid}" in warned[0]


def test_the_file_alone_refuses_a_live_holder(tmp_path):
  """Where flock does not reach (another host's NFS client), the file's
  contents still refuse: a live pid here, or any holder on another host."""
  path = tmp_path / "train.lock"
  for holder in ({"pid": os.getppid(), "host": socket.gethostname()},
                 {"pid": 1, "host": "other-host.example", "started": "x"}):
    path.write_text(json.dumps(holder))
    with pytest.raises(WorkdirBusyError, match=f"pid {holder['pid']} on "
                       f"{holder['host']}.*remove {path}"):
      WorkdirLock(str(tmp_path)).acquire()
    assert json.loads(path.read_text()) == holder  # left as it was


def test_lopt_train_refuses_a_locked_workdir(holder, capsys):
  from infra import cli  # pylint: disable=import-outside-toplevel
  workdir, proc = holder
  (workdir / "config.json").write_text("{}")
  code = cli.main(["train", "--workdir", str(workdir), "--config", "tiny",
                   "--workers", "0", "--steps", "1"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1, err
  assert err[0].startswith("lopt: error: ")
  assert f"in use by another trainer (pid {proc.pid}" in err[0]
  assert (workdir / "config.json").read_text() == "{}"  # nothing written

