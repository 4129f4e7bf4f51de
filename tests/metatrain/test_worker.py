"""The unroll worker's stall watchdog, on a real worker object (no Ray)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

_SCRIPT = """
import sys
import jax
from metatrain import config, hrnn
from metatrain.worker import UnrollWorker
cfg = config.load("tiny", ['tasks.families=["quadratic"]', "tasks.num_groups=1",
                           "worker.stall_timeout_s=" + sys.argv[1]])
w = UnrollWorker(0, config.to_dict(cfg), seed=0)
print("armed before the first call:", w.watchdog.last != float("inf"))
theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn)
mg = w.compute(theta, 0)
print("computed", mg.seq, flush=True)
print("armed between calls:", w.watchdog.last != float("inf"))
"""


def _run(stall_timeout):
  return subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(stall_timeout)],
      env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
      timeout=300)


def test_a_group_stuck_past_the_limit_ends_the_worker():
  # A 0.5 s limit is shorter than compiling a group's programs, which here
  # stands in for XLA never answering.
  out = _run(0.5)
  assert out.returncode == 3, out
  assert "STALLED: worker 0 on " in out.stdout
  assert "computed" not in out.stdout


def test_the_watchdog_is_armed_only_inside_compute():
  out = _run(120)
  assert out.returncode == 0, out
  assert "computed" in out.stdout and "STALLED" not in out.stdout
  assert "armed before the first call: False" in out.stdout
  assert "armed between calls: False" in out.stdout


def test_a_restarted_worker_samples_new_groups(monkeypatch):
  # Ray restarts re-run __init__ with the same arguments; replaying the
  # groups of a hung incarnation would hang again.
  import time  # pylint: disable=import-outside-toplevel
  from metatrain import config, worker  # pylint: disable=import-outside-toplevel
  cfg = config.to_dict(config.load("tiny", []))

  def draws(restarted):
    monkeypatch.setattr(worker, "_restarted_by_ray", lambda: restarted)
    w = worker.UnrollWorker(1, cfg, seed=7)
    time.sleep(0.01)
    return [w.ensemble.sample(w.rng).name for _ in range(3)]

  first = draws(False)
  assert draws(False) == first  # a first incarnation is reproducible
  assert draws(True) != first and draws(True) != draws(True)
