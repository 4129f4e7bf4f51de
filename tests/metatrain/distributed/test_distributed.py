"""Ray meta-training end to end, on the session's real local Ray instance.

Each test runs ``lopt train --address ADDR`` as a subprocess, as a user
joining a cluster would (``lopt train`` starting its own instance is
covered by test_workflow.py). CI runs the suite inside a loopback-only
network namespace, so Ray binds to 127.0.0.1. A frozen worker is covered by
test_learner_errors.py (real Ray) and test_learner_pool.py (its rules).
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metatrain.distributed import checkpoints, launcher

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[3]
# One group of two tiny tasks per worker, a fixed truncation length (one
# compiled program per worker), a checkpoint every step.
FAST = ["--config", "tiny", "--set", 'tasks.families=["quadratic"]',
        "--set", "tasks.num_groups=1", "--set", "unroll.min_steps=5",
        "--set", "unroll.max_steps=5", "--set", "log_every=1",
        "--set", "learner.save_every=1", "--set", "learner.max_staleness=100"]


_RUNNING: list = []


@pytest.fixture(autouse=True)
def _end_runs():
  """Ends a run a failed assertion left behind: SIGTERM shuts its Ray down."""
  yield
  while _RUNNING:
    proc = _RUNNING.pop()
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(name="address")
def _address(ray_session):
  return ray_session


def _start(workdir, address, *args):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  log = open(workdir.parent / f"{workdir.name}.log", "a")
  proc = subprocess.Popen(
      [sys.executable, "-m", "infra.cli", "train", "--workdir", str(workdir),
       "--address", address, *FAST, *args], stdout=log,
      stderr=subprocess.STDOUT, cwd=ROOT, env=env)
  _RUNNING.append(proc)
  return proc, workdir.parent / f"{workdir.name}.log"


def _wait_for(pred, timeout, proc=None):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if pred():
      return True
    if proc is not None and proc.poll() is not None:
      return pred()
    time.sleep(0.5)
  return False


def _finish(proc, timeout=400):
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise


def test_two_workers_survive_a_worker_kill_and_checkpoint(tmp_path, address):
  wd = tmp_path / "run"
  proc, log = _start(wd, address, "--workers", "2", "--steps", "30")
  # Wait until the run makes progress, then kill one worker's process.
  assert _wait_for(lambda: "step      2/30" in log.read_text(), 300, proc), \
      log.read_text()
  pids = json.loads((wd / "workers.json").read_text())["pids"]
  os.kill(pids[0], signal.SIGKILL)
  assert _finish(proc) == 0, log.read_text()
  counters = json.loads((wd / "counters.json").read_text())
  assert counters["step"] == 30
  assert counters["worker_failures"] >= 1
  ck = checkpoints.Checkpointer(str(wd), read_only=True)
  assert ck.latest_step() == 30
  config, theta = ck.restore_lopt()
  assert config["unroll"]["min_steps"] == 5
  assert all(np.all(np.isfinite(np.asarray(v))) for v in theta.values()
             if not isinstance(v, dict))
  assert list((wd / "tb").glob("events.out.tfevents.*"))
  assert "restarts 1" in log.read_text() or "restarts 2" in log.read_text()


def test_learner_stop_and_resume_is_exact(tmp_path, address):
  wd = tmp_path / "run"
  proc, log = _start(wd, address, "--workers", "1", "--steps", "1000")
  assert _wait_for(lambda: "step      3/1000" in log.read_text(), 300, proc), \
      log.read_text()
  proc.send_signal(signal.SIGTERM)
  _finish(proc, timeout=120)
  text = log.read_text()
  assert "received SIGTERM" in text
  ck = checkpoints.Checkpointer(str(wd), read_only=True)
  stopped_at = ck.latest_step()
  assert stopped_at is not None and stopped_at >= 3
  _, theta = ck.restore_lopt(stopped_at)
  digest = launcher.theta_digest(theta)
  # Run the same command again: it resumes and the step count continues.
  proc, log = _start(wd, address, "--workers", "1", "--steps",
                     str(stopped_at + 2))
  assert _finish(proc) == 0, log.read_text()
  text = log.read_text()
  m = re.search(r"resumed from .* step (\d+) \(theta (\w+)\)", text)
  assert m, text
  assert int(m.group(1)) == stopped_at and m.group(2) == digest
  assert f"step {stopped_at + 1:>6}/{stopped_at + 2}" in text
  assert json.loads((wd / "counters.json").read_text())["step"] == \
      stopped_at + 2
