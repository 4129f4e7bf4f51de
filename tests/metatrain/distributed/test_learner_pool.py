"""``learner.WorkerPool``: timeouts, backoff, drops and resubmits, driven by a
fake clock and fake Ray calls (the real Ray path: test_learner_errors.py).

The fakes raise Ray's own exception types, so the pool's error handling is
the code that runs against a real cluster.
"""

import pytest
from ray import exceptions as rex

from metatrain.distributed import learner


class FakeRay:
  """Calls are answered by the test: ``finish(wid, value_or_exception)``."""

  lost = (rex.RayActorError, rex.ActorUnavailableError)
  raised = rex.RayTaskError

  def __init__(self, clock):
    self.clock = clock
    self.results: dict = {}  # ref -> MetaGrad or exception, when answered
    self.refs: dict = {}  # ref -> worker id
    self.submitted: list[tuple[int, float]] = []  # (wid, time)
    self.killed: list[int] = []
    self.cancelled: list = []
    self.n = 0

  def submit(self, actor, theta_ref, step):
    del theta_ref
    self.n += 1
    ref = ("ref", self.n)
    self.refs[ref] = actor
    self.submitted.append((actor, self.clock.now, step))
    return ref

  def wait(self, refs, timeout):
    ready = [r for r in refs if r in self.results][:1]
    if not ready:
      self.clock.now += timeout  # ray.wait blocks for the timeout
    return ready

  def get(self, ref):
    value = self.results.pop(ref)
    if isinstance(value, BaseException):
      raise value
    return value

  def kill(self, actor):
    self.killed.append(actor)

  def cancel(self, ref):
    self.cancelled.append(ref)

  def finish(self, wid, value):
    """Answers worker ``wid``'s oldest unanswered call."""
    ref = next(r for r, w in self.refs.items()
               if w == wid and r not in self.results)
    del self.refs[ref]
    self.results[ref] = value


class Clock:

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now

  def sleep(self, s):
    self.now += s


def _mg(wid, seq):
  """Stands for a worker's MetaGrad (the pool passes results through)."""
  return ("metagrad", wid, seq)


def _pool(n=2, **kw):
  clock = Clock()
  fake = FakeRay(clock)
  counters = learner.AggregatorCounters()
  pool = learner.WorkerPool(list(range(n)), counters, clock=clock,
                            sleep=clock.sleep, calls=fake, **kw)
  pool.resubmit_due("theta", 0, list(range(n)))
  return pool, fake, clock, counters


def _lost():
  return rex.RayActorError()


def _raised(msg="FloatingPointError: boom"):
  return rex.RayTaskError("compute", f"Traceback ...\n{msg}",
                          FloatingPointError("boom"))


def test_a_call_past_the_timeout_kills_the_worker_once(capsys):
  pool, fake, clock, counters = _pool(call_timeout_s=90.0)
  fake.finish(1, _mg(1, 0))
  assert pool.wait(1.0) == [(1, _mg(1, 0))]
  pool.resubmit_due("theta", 1, [1])
  clock.now += 89.0  # worker 0 has been pending 89 s: not yet
  fake.finish(1, _mg(1, 1))
  pool.wait(1.0)
  pool.resubmit_due("theta", 2, [1])
  assert counters.worker_timeouts == 0 and fake.killed == []
  clock.now += 1.5
  fake.finish(1, _mg(1, 2))
  pool.wait(1.0)  # 90.5 s > 90 s
  assert counters.worker_timeouts == 1 and fake.killed == [0]
  assert ("learner: worker 0 has not answered in 90s "
          "(worker.call_timeout_s=90); killing it") in capsys.readouterr().out
  clock.now += 1000.0  # the killed call is never timed out again
  pool.wait(1.0)
  assert counters.worker_timeouts == 1 and fake.killed == [0]
  # Ray fails the killed call: the worker is down, retried after a backoff.
  fake.finish(0, _lost())
  assert pool.wait(1.0) == []
  assert counters.worker_failures == 1 and 0 in pool.down_since


def test_no_timeout_when_disabled():
  pool, fake, clock, counters = _pool(call_timeout_s=0.0)
  clock.now += 1e6
  pool.wait(1.0)
  assert counters.worker_timeouts == 0 and fake.killed == []


def test_a_lost_worker_is_retried_with_a_growing_capped_backoff(capsys):
  pool, fake, clock, counters = _pool(n=1, down_limit_s=1e9)
  t_down = clock.now
  delays = []
  for _ in range(8):
    fake.finish(0, _lost())
    pool.wait(0.0)
    due = pool.retry_at[0]
    delays.append(due - clock.now)
    before = len(fake.submitted)
    clock.now = due - 0.01
    pool.resubmit_due("theta", 0, [])
    assert len(fake.submitted) == before  # not before the backoff is over
    clock.now = due
    pool.resubmit_due("theta", 0, [])
    assert len(fake.submitted) == before + 1 and 0 not in pool.retry_at
  assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
  assert counters.worker_failures == 1  # one down spell, many retries
  # It answers: back, with its retries and down time reset.
  clock.now += 3.0
  fake.finish(0, _mg(0, 7))
  assert pool.wait(0.0) == [(0, _mg(0, 7))]
  waited = clock.now - t_down
  assert f"learner: worker 0 is back after {waited:.0f}s" in (
      capsys.readouterr().out)
  assert 0 not in pool.down_since and pool.retries[0] == 0
  # A second loss is a second failure, and the backoff starts over.
  fake.submitted.clear()
  pool.resubmit_due("theta", 1, [0])
  fake.finish(0, _lost())
  pool.wait(0.0)
  assert counters.worker_failures == 2 and pool.retry_at[0] - clock.now == 0.5


def test_a_worker_down_too_often_is_dropped_and_then_none_are_left(capsys):
  pool, fake, clock, _ = _pool(n=1, max_failures=2)
  for spell in range(3):
    fake.finish(0, _lost())
    pool.wait(0.0)
    if spell < 2:  # back up between spells
      clock.now = pool.retry_at.pop(0)
      pool.submit(0, "theta", 0)
      fake.finish(0, _mg(0, spell))
      pool.wait(0.0)
      pool.resubmit_due("theta", 0, [0])
  assert pool.downs[0] == 3 and 0 not in pool.retry_at
  assert "learner: dropping worker 0 (down 3 times" in capsys.readouterr().out
  with pytest.raises(RuntimeError, match="all 1 workers are gone"):
    pool.wait(0.0)


def test_a_worker_down_longer_than_the_limit_is_dropped(capsys):
  pool, fake, clock, _ = _pool(n=1, down_limit_s=300.0)
  fake.finish(0, _lost())
  pool.wait(0.0)
  clock.now += 299.0
  pool.resubmit_due("theta", 0, [])
  fake.finish(0, _lost())
  pool.wait(0.0)
  assert 0 in pool.retry_at  # 299 s down: retried
  clock.now += 2.0
  pool.resubmit_due("theta", 0, [])
  fake.finish(0, _lost())
  pool.wait(0.0)
  assert 0 not in pool.retry_at
  assert "dropping worker 0 (down 1 times, this time for 301s)" in (
      capsys.readouterr().out)


def test_a_raising_call_is_counted_and_resubmitted_at_once(capsys):
  pool, fake, _, counters = _pool(n=1, max_errors_in_row=2)
  for i in range(3):
    fake.finish(0, _raised())
    assert pool.wait(0.0) == []
    assert counters.worker_errors == i + 1
    before = len(fake.submitted)
    pool.resubmit_due("theta", 0, [])
    resubmitted = len(fake.submitted) == before + 1
    assert resubmitted == (i < 2), i  # the third error in a row drops it
  out = capsys.readouterr().out
  assert ("learner: worker 0 raised FloatingPointError: boom; its task group "
          "is resampled") in out
  assert "dropping worker 0: 3 calls in a row raised" in out
  assert counters.worker_failures == 0  # errors are not actor losses


def test_a_success_resets_the_errors_in_a_row():
  pool, fake, _, counters = _pool(n=1, max_errors_in_row=1)
  for seq in range(3):
    fake.finish(0, _raised())
    pool.wait(0.0)
    pool.resubmit_due("theta", 0, [])
    fake.finish(0, _mg(0, seq))
    assert pool.wait(0.0) == [(0, _mg(0, seq))]
    pool.resubmit_due("theta", 0, [0])
  assert counters.worker_errors == 3 and not pool.errored


def test_idle_pool_sleeps_instead_of_spinning_and_cancel_reaches_ray():
  pool, fake, clock, _ = _pool(n=1)
  pending = list(pool.pending)
  pool.cancel()
  assert fake.cancelled == pending
  fake.finish(0, _lost())
  pool.wait(0.0)
  t = clock.now
  assert pool.wait(5.0) == [] and clock.now == t + 0.5  # only a retry due
