"""The learner's aggregation rules, with a deterministic learner step."""

import numpy as np

from metatrain.distributed.learner import GradientAggregator
from metatrain.distributed.worker import MetaGrad


def _mg(wid, seq, theta_step, value=1.0):
  return MetaGrad(wid, seq, theta_step, {"w": np.full((3,), value, np.float32)},
                  {"meta_loss": value, "task_steps": 10.0})


def test_stale_gradients_are_dropped():
  agg = GradientAggregator(max_staleness=2, batch_size=10)
  assert agg.offer(_mg(0, 0, theta_step=5), current_step=7) == "accepted"
  assert agg.offer(_mg(0, 1, theta_step=4), current_step=7) == "stale"
  assert agg.offer(_mg(1, 0, theta_step=8), current_step=7) == "stale"  # future
  assert agg.counters.stale == 2 and agg.counters.accepted == 1


def test_duplicates_are_dropped_per_worker():
  agg = GradientAggregator(max_staleness=10, batch_size=10)
  assert agg.offer(_mg(0, 3, 0), 0) == "accepted"
  assert agg.offer(_mg(0, 3, 0), 0) == "duplicate"
  assert agg.offer(_mg(1, 3, 0), 0) == "accepted"  # other worker, same seq
  assert agg.counters.duplicate == 1 and agg.counters.accepted == 2


def test_nonfinite_gradients_are_dropped():
  agg = GradientAggregator(max_staleness=10, batch_size=1)
  assert agg.offer(_mg(0, 0, 0, value=np.nan), 0) == "nonfinite"
  assert not agg.ready()


def test_batches_average_exactly_once():
  agg = GradientAggregator(max_staleness=10, batch_size=2)
  for seq, v in enumerate([1.0, 3.0, 5.0]):
    agg.offer(_mg(0, seq, 0, v), 0)
  assert agg.ready()
  grad, metrics = agg.pop_batch()
  np.testing.assert_allclose(grad["w"], 2.0)
  assert metrics["task_steps"] == 20.0 and metrics["staleness"] == 0.0
  assert not agg.ready()  # the third waits for the next batch
  agg.offer(_mg(1, 0, 0, 7.0), 0)
  grad, _ = agg.pop_batch()
  np.testing.assert_allclose(grad["w"], 6.0)


def test_work_reported_is_counted_whether_or_not_the_grad_is_used():
  agg = GradientAggregator(max_staleness=1, batch_size=2)
  work = {"task_steps": 40.0, "compiles": 2.0, "cache_hits": 1.0}
  fresh = MetaGrad(0, 1, 5, {"w": np.ones(3)}, dict(work))
  stale = MetaGrad(1, 1, 0, {"w": np.ones(3)}, dict(work, compiles=0.0))
  assert agg.offer(fresh, 5) == "accepted"
  assert agg.offer(stale, 5) == "stale"
  assert agg.offer(fresh, 5) == "duplicate"  # the same result: not again
  c = agg.counters
  assert (c.task_steps, c.compiles, c.cache_hits) == (80, 2, 2)
