"""Exceptions inside workers and evaluators never end a run (real Ray)."""

import time

import jax
import numpy as np
import optax
import pytest

from metatrain import config, hrnn, learner, meta_step, worker
from metatrain.worker import GroupError, MetaGrad

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
  import ray  # pylint: disable=import-outside-toplevel
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  yield ray
  ray.shutdown()


def test_a_worker_that_raises_once_is_counted_and_the_run_goes_on(
    ray_local, capsys):
  ray = ray_local

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
  state = learner.run(state, workers, opt, steps=6, max_staleness=10,
                      batch_size=2, on_step=lambda s, m: None)
  out = capsys.readouterr().out
  assert state.step == 6
  assert state.counters["worker_errors"] == 1
  assert state.counters["worker_failures"] == 0  # not an actor loss
  assert ("worker 0 raised GroupError: worker 0 group 1 quadratic(dim=4): "
          "FloatingPointError: boom") in out
  # Both workers kept contributing after the error.
  assert ray.get(workers[0].compute.remote(None, 0)).seq > 2
  np.testing.assert_allclose(np.asarray(state.theta["w"]), -0.6, rtol=1e-6)


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
                       poll_s=1.0, actor_cls=FlakyEvaluator)
  try:
    t0 = time.time()
    while pool.counters["evaluator_errors"] < 2 and time.time() - t0 < 60:
      pool.poll(timeout=0.5)
    assert pool.counters["evaluator_errors"] == 2
    assert pool.finish(7, timeout_s=60)
    assert pool.finished == {0, 1}
  finally:
    pool.shutdown()


def test_the_worker_drops_the_group_that_raised(monkeypatch):
  cfg = config.load("tiny", ['tasks.families=["quadratic"]',
                             "tasks.num_groups=2",
                             "worker.stall_timeout_s=0"])
  w = worker.UnrollWorker(0, config.to_dict(cfg), seed=0)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn)
  w.compute(theta, 0)
  real = meta_step.TaskGroup.meta_grad
  calls = {"n": 0}

  def flaky(self, *a, **k):
    calls["n"] += 1
    if calls["n"] == 2:
      raise FloatingPointError("boom")
    return real(self, *a, **k)

  monkeypatch.setattr(meta_step.TaskGroup, "meta_grad", flaky)
  kept = w.groups[0]
  with pytest.raises(GroupError,
                     match=r"worker 0 group 2 .*quadratic.*FloatingPointError: boom"):
    w.compute(theta, 1)
  assert w.groups[0] is kept and w.groups[1] is None
  mg = w.compute(theta, 2)  # resamples group 2 and goes on
  assert w.groups[1] is not None and w.groups[1].age == 1
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(
      mg.grads))
