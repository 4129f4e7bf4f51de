"""On a real Ray instance: exceptions inside workers and evaluators never
end a run, and a frozen worker is killed, restarted and rejoins.

Light actors stand in for the unroll workers here, so nothing compiles;
``lopt train``'s own workers are killed and restarted in
test_distributed.py, and the pool's rules are unit-tested with a fake clock
in test_learner_pool.py.
"""

import os
import re
import signal
import time

import numpy as np
import optax
import pytest

from metatrain.distributed import learner
from metatrain.distributed.worker import GroupError, MetaGrad

pytestmark = pytest.mark.slow


@pytest.fixture(name="ray_local")
def _ray_local(ray_session):
  del ray_session
  import ray  # pylint: disable=import-outside-toplevel
  return ray


def test_a_worker_that_raises_once_is_counted_and_the_run_goes_on(
    ray_local, capsys, tmp_path):
  ray = ray_local
  rejoined = str(tmp_path / "worker0_rejoined")

  @ray.remote(max_restarts=-1, max_task_retries=0)
  class Flaky:
    """Returns unit gradients; worker 0 raises on its second call."""

    def __init__(self, wid):
      self.wid, self.calls = wid, 0

    def ready(self):
      return True

    def compute(self, theta, step):
      self.calls += 1
      if self.wid == 0 and self.calls == 2:
        raise GroupError("worker 0 group 1 quadratic(dim=4): "
                         "FloatingPointError: boom")
      if self.wid == 0 and self.calls == 3:
        open(rejoined, "w").close()
      # Worker 1's later calls wait until worker 0 was called again after
      # raising (a file both actors see): however the machine schedules the
      # actors, worker 1 cannot deliver every gradient of the run first.
      deadline = time.monotonic() + 120
      while (self.wid == 1 and self.calls >= 2 and
             not os.path.exists(rejoined) and time.monotonic() < deadline):
        time.sleep(0.01)
      return MetaGrad(self.wid, self.calls, step,
                      {"w": np.ones(3, np.float32)},
                      {"meta_loss": 0.5, "task_steps": 1.0})

  workers = [Flaky.remote(i) for i in range(2)]
  # Both actor processes up first: on a loaded machine worker 1 alone
  # could otherwise deliver every gradient before worker 0 starts.
  ray.get([w.ready.remote() for w in workers])
  opt = optax.sgd(0.1)
  theta = {"w": np.zeros(3, np.float32)}
  state = learner.LearnerState(theta, opt.init(theta), 0, {})
  batches = []
  try:
    state = learner.run(state, workers, opt, steps=6, max_staleness=10,
                        batch_size=2,
                        on_step=lambda s, m: batches.append(m["workers"]))
  finally:
    for w in workers:
      ray.kill(w, no_restart=True)
  out = capsys.readouterr().out
  assert state.step == 6
  assert state.counters["worker_errors"] == 1
  assert state.counters["worker_failures"] == 0  # not an actor loss
  assert ("worker 0 raised GroupError: worker 0 group 1 quadratic(dim=4): "
          "FloatingPointError: boom") in out
  # Both workers kept contributing: worker 0's second call raised, so two
  # of its gradients in the batches mean it was called again after it.
  # (No call is made after the run: learner.run cancels its pending calls,
  # and a call queued behind a cancelled one can wait 30 s in Ray 2.60.)
  assert sum(ws.count(0) for ws in batches) >= 2, batches
  assert any(1 in ws for ws in batches)
  np.testing.assert_allclose(np.asarray(state.theta["w"]), -0.6, rtol=1e-6)


def test_a_frozen_worker_is_killed_restarted_and_rejoins(ray_local, capsys,
                                                        tmp_path):
  ray = ray_local
  started = tmp_path / "started"  # one "wid pid" line per actor start

  @ray.remote(max_restarts=-1, max_task_retries=0)
  class Steady:
    """Answers every call in 20 ms with unit gradients."""

    def __init__(self, wid):
      self.wid, self.seq = wid, time.time_ns() // 1_000_000 << 20
      with open(started, "a") as f:
        f.write(f"{wid} {os.getpid()}\n")

    def pid(self):
      return os.getpid()

    def compute(self, theta, step):
      del theta
      time.sleep(0.02)
      self.seq += 1
      return MetaGrad(self.wid, self.seq, step,
                      {"w": np.ones(3, np.float32)}, {"meta_loss": 0.5})

  workers = [Steady.remote(i) for i in range(2)]
  pids = ray.get([w.pid.remote() for w in workers])
  seen = {"frozen_at": None, "back_at": None}

  def on_step(st, m):
    if st.step == 3:
      os.kill(pids[0], signal.SIGSTOP)  # answers nothing, like a hung XLA
      seen["frozen_at"] = st.step
    elif seen["frozen_at"] and 0 in m["workers"] and st.step > 5:
      seen["back_at"] = st.step

  opt = optax.sgd(0.0)
  theta = {"w": np.zeros(3, np.float32)}
  state = learner.LearnerState(theta, opt.init(theta), 0, {})
  t0 = time.time()
  try:
    # 10 s: a call takes 20 ms here, and a restarted actor answers its
    # first call within a few seconds, so only the frozen one times out.
    state = learner.run(
        state, workers, opt, steps=10**9, max_staleness=10**9, batch_size=1,
        on_step=on_step, call_timeout_s=10.0,
        should_stop=lambda: (seen["back_at"] is not None or
                             time.time() - t0 > 180))
  finally:
    for w in workers:
      ray.kill(w, no_restart=True)
  out = capsys.readouterr().out
  assert seen["back_at"] is not None, out
  assert state.counters["worker_timeouts"] == 1, out
  assert state.counters["worker_failures"] == 1, out
  assert re.search(r"learner: worker 0 has not answered in 1[01]s \(worker"
                   r"\.call_timeout_s=10\)", out), out
  assert "learner: worker 0 is back after" in out
  # A new process replaced the frozen one. (Read from the actors' own
  # record: after the learner cancelled the calls in flight, Ray 2.60 can
  # leave the handle waiting for a cancelled call's sequence number.)
  starts = [tuple(map(int, l.split())) for l in started.read_text().split(
      "\n") if l]
  assert [p for w, p in starts if w == 0][:1] == [pids[0]]
  assert len({p for w, p in starts if w == 0}) == 2, starts


def test_an_evaluator_that_raises_once_is_restarted(ray_local, tmp_path):
  from evaluators.actor import EvaluatorActor, EvaluatorPool  # pylint: disable=import-outside-toplevel

  class FlakyEvaluator(EvaluatorActor):
    """Raises in its first run(); then waits for finish() like the real one."""

    def run(self, poll_s):
      marker = tmp_path / f"ran{self.args[3]}"
      if not marker.exists():
        marker.write_text("x")
        raise RuntimeError("XLA says no")
      while self.final_step is None and not self.stop_event.is_set():
        time.sleep(0.05)
      return {"runs": 1}

  pool = EvaluatorPool(str(tmp_path), "small", [], 2, num_cpus=0.5,
                       poll_s=1.0, nice=7, actor_cls=FlakyEvaluator)
  try:
    import ray  # pylint: disable=import-outside-toplevel
    pids = ray.get([a.pid.remote() for a in pool.actors])
    # Below the driver's priority, so that evaluating never starves training.
    assert all(os.getpriority(os.PRIO_PROCESS, p) >=
               os.getpriority(os.PRIO_PROCESS, 0) + 7 for p in pids)
    t0 = time.time()
    while pool.counters["evaluator_errors"] < 2 and time.time() - t0 < 60:
      pool.poll(timeout=0.5)
    assert pool.counters["evaluator_errors"] == 2
    assert pool.finish(7, timeout_s=60)
    assert pool.finished == {0, 1}
  finally:
    pool.shutdown()
