"""The unroll worker's stall watchdog, on a real worker object (no Ray).

The stall is injected: a task group whose ``meta_grad`` never returns (or
moves the watchdog's clock past the limit), so no test depends on how long
a compile takes.
"""

import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from metatrain.distributed import worker
from metatrain.tasks import TaskConfig
from metatrain.training import config, meta_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
CONFIG = TaskConfig("quadratic", (("dim", 3), ("noise", 0.0)))


class _FakeGroup:
  """A task group that compiles nothing: ``on_grad(group)`` runs inside
  ``meta_grad``, which returns zero gradients."""

  def __init__(self, on_grad):
    self.config, self.age, self.on_grad = CONFIG, 0, on_grad
    self.label = CONFIG.name

  def meta_grad(self, theta, rng, cfg):
    del rng, cfg
    self.on_grad(self)
    self.age += 1
    grads = jax.tree_util.tree_map(np.zeros_like, theta)
    metrics = {"num_good": 2.0, "num_nonfinite": 0.0, "num_diverged": 0.0,
               "num_resets": 0.0, "meta_loss": 0.5, "grad_weight": 1.0}
    return grads, metrics, 10


class _Exited(BaseException):
  """What the injected exit raises (not an Exception: the worker must not
  catch it as a group error)."""


class _FakeTime:

  def __init__(self):
    self.now, self.codes = 0.0, []

  def clock(self):
    return self.now

  def exit(self, code):
    self.codes.append(code)
    raise _Exited(code)


def _worker(monkeypatch, on_grad, fake, lines, limit=60.0, groups=1):
  monkeypatch.setattr(meta_step.TaskGroup, "sample", classmethod(
      lambda cls, *a, **k: _FakeGroup(on_grad)))
  cfg = config.load("tiny", ['tasks.families=["quadratic"]',
                             f"tasks.num_groups={groups}",
                             "worker.stall_timeout_s=0"])
  w = worker.UnrollWorker(0, config.to_dict(cfg), seed=0)
  # The worker's own watchdog, with the test's clock and exit, no thread.
  w.watchdog = meta_step.StallWatchdog(
      limit, w.watchdog.describe, lines.append, clock=fake.clock,
      exit=fake.exit, thread=False)
  w.watchdog.stop()
  theta = {"w": np.ones(3, np.float32)}
  return w, theta


def test_the_watchdog_is_armed_only_inside_compute(monkeypatch):
  fake, lines, armed = _FakeTime(), [], []
  w, theta = _worker(monkeypatch, lambda g: armed.append(
      w.watchdog.last != float("inf")), fake, lines)
  assert w.watchdog.last == float("inf")  # not before the first call
  for step in range(2):
    mg = w.compute(theta, step)
    assert mg.theta_step == step and mg.metrics["task_steps"] == 10
    assert w.watchdog.last == float("inf")  # nor between calls
    fake.now += 1e6  # a long idle wait is no stall
    assert not w.watchdog.check()
  assert armed == [True, True]
  assert fake.codes == [] and lines == []


def test_a_group_stuck_past_the_limit_ends_the_worker(monkeypatch):
  fake, lines = _FakeTime(), []

  def stuck(group):
    del group
    fake.now += 30.0  # the watchdog thread looks while the group runs
    assert not w.watchdog.check()
    fake.now += 31.0
    w.watchdog.check()  # over the limit: exits the process
    raise AssertionError("the watchdog did not end the worker")

  w, theta = _worker(monkeypatch, stuck, fake, lines)
  with pytest.raises(_Exited):
    w.compute(theta, 0)
  assert fake.codes == [3]
  (line,) = lines
  assert line.startswith(f"STALLED: worker 0 on group 1 {CONFIG.name} (age "
                         "0) has run 61s (limit 60s)")


def test_the_worker_drops_the_group_that_raised(monkeypatch):
  calls = {"n": 0, "raise_at": None}

  def on_grad(group):
    del group
    calls["n"] += 1
    if calls["n"] == calls["raise_at"]:
      raise FloatingPointError("boom")

  w, theta = _worker(monkeypatch, on_grad, _FakeTime(), [], groups=2)
  w.compute(theta, 0)
  kept, dropped = w.groups
  calls["raise_at"] = calls["n"] + 2  # group 2 of the next call
  with pytest.raises(worker.GroupError, match=(
      rf"worker 0 group 2 {re.escape(CONFIG.name)}: FloatingPointError: "
      "boom")):
    w.compute(theta, 1)
  assert w.groups[0] is kept and w.groups[1] is None
  assert w.watchdog.last == float("inf")  # disarmed on the way out
  mg = w.compute(theta, 2)  # resamples group 2 and goes on
  assert w.groups[0] is kept and w.groups[1] not in (None, dropped)
  assert w.groups[1].age == 1 and kept.age == 3
  assert mg.theta_step == 2 and mg.metrics["task_steps"] == 20


_REAL_STALL = textwrap.dedent("""
    import threading
    import numpy as np
    from metatrain.training import config, meta_step
    from metatrain.tasks import TaskConfig
    from metatrain.distributed.worker import UnrollWorker

    class Hung:
      config = TaskConfig("quadratic", (("dim", 3), ("noise", 0.0)))
      age, label = 0, "hung"
      def meta_grad(self, *a):
        threading.Event().wait()  # like XLA never answering

    meta_step.TaskGroup.sample = classmethod(lambda cls, *a, **k: Hung())
    cfg = config.load("tiny", ["tasks.num_groups=1",
                               "worker.stall_timeout_s=1"])
    w = UnrollWorker(0, config.to_dict(cfg), seed=0)
    w.compute({"w": np.ones(3, np.float32)}, 0)
    print("computed", flush=True)
""")


def test_the_real_watchdog_thread_exits_the_process_with_code_3():
  out = subprocess.run([sys.executable, "-c", _REAL_STALL],
                       env=dict(os.environ, PYTHONPATH=ROOT),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 3, out
  assert "STALLED: worker 0 on group 1 " in out.stdout
  assert "computed" not in out.stdout


def test_a_restarted_worker_samples_new_groups(monkeypatch):
  # Ray restarts re-run __init__ with the same arguments; replaying the
  # groups of a hung incarnation would hang again.
  import time  # pylint: disable=import-outside-toplevel
  cfg = config.to_dict(config.load("tiny", []))

  def draws(restarted):
    monkeypatch.setattr(worker, "_restarted_by_ray", lambda: restarted)
    w = worker.UnrollWorker(1, cfg, seed=7)
    time.sleep(0.01)
    return [w.ensemble.sample(w.rng).name for _ in range(3)]

  first = draws(False)
  assert draws(False) == first  # a first incarnation is reproducible
  assert draws(True) != first and draws(True) != draws(True)
