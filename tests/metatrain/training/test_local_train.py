"""Single-process meta-training: its exact first update, that it learns,
and its stall watchdog (clock and exit injected, no sleeping)."""

import re

import jax
import numpy as np
import pytest

from metatrain.training import config as config_lib
from metatrain.training import local_train, meta_step, unroll

QUAD_BOWL = ['tasks.families=["quadratic", "bowl"]',
             "meta_opt.learning_rate=0.03", "unroll.min_steps=10",
             "unroll.max_steps=10", "unroll.steps_mean=0"]


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def test_the_first_update_is_adams_first_step_on_the_averaged_group_grads(
    monkeypatch):
  cfg = config_lib.load("tiny", QUAD_BOWL)
  trainer = local_train.MetaTrainer(cfg)
  theta0 = _leaves(trainer.theta)
  seen = {"groups": [], "applied": None}
  real_grad, real_apply = meta_step.TaskGroup.meta_grad, trainer._apply  # pylint: disable=protected-access

  def spy_grad(self, *a, **k):
    out = real_grad(self, *a, **k)
    seen["groups"].append(out)
    return out

  def spy_apply(theta, opt_state, grad):
    seen["applied"] = grad
    return real_apply(theta, opt_state, grad)

  monkeypatch.setattr(meta_step.TaskGroup, "meta_grad", spy_grad)
  trainer._apply = spy_apply  # pylint: disable=protected-access
  m = trainer.meta_step()
  assert m["step"] == 1 and len(seen["groups"]) == cfg.tasks.num_groups
  # The applied gradient is the groups' average weighted by their good
  # fraction (every task is good here: weights 1).
  weights = np.array([g[1]["grad_weight"] for g in seen["groups"]])
  assert np.all(weights == 1.0)
  per_group = [_leaves(g[0]) for g in seen["groups"]]
  mean = [sum(w * g[i] for w, g in zip(weights, per_group)) / weights.sum()
          for i in range(len(theta0))]
  for a, b in zip(_leaves(seen["applied"]), mean):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
  # Then the meta-optimizer's first step, written out: clip elementwise,
  # clip the global norm, and Adam's bias-corrected first step, which is
  # lr * g / (|g| + eps) elementwise.
  mcfg = cfg.meta_opt
  g = [np.clip(x, -mcfg.clip_value, mcfg.clip_value) for x in mean]
  norm = np.sqrt(sum(np.sum(x * x) for x in g))
  g = [x * min(1.0, mcfg.clip_norm / norm) for x in g]
  expected = [t - mcfg.learning_rate * x / (np.abs(x) + 1e-8)
              for t, x in zip(theta0, g)]
  moved = 0
  for got, want, t0 in zip(_leaves(trainer.theta), expected, theta0):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    moved += int(np.sum(got != t0))
  assert moved > 0 and norm > 0
  assert trainer.counters["task_steps"] == (
      cfg.tasks.num_groups * cfg.unroll.tasks_per_group * 10)


def _meta_objective(theta, hcfg, task_configs):
  vals = [unroll.evaluate(theta, jax.random.PRNGKey(123), task_config=c,
                          hcfg=hcfg, num_tasks=4, steps=10)[0]
          for c in task_configs]
  return float(np.mean([np.mean(np.asarray(v)) for v in vals]))


def test_short_meta_training_lowers_the_meta_objective_of_its_tasks():
  # 25 meta-steps on the two task configs a seed draws lower the
  # meta-objective (mean log loss ratio over 10 steps) of those configs on
  # fresh problems (new init and data keys). Seeds 0-7, measured on
  # 2026-12-02: from about -0.01 to between -0.80 and -2.04 (the smallest
  # gain 0.80, seed 4); the 0.3 margin holds for every seed tried.
  cfg = config_lib.load("tiny", QUAD_BOWL + ["steps=25"])
  lines = []
  trainer = local_train.train(cfg, log=lines.append)
  own = [g.config for g in trainer.groups]
  before = _meta_objective(local_train.MetaTrainer(cfg).theta, cfg.hrnn, own)
  after = _meta_objective(trainer.theta, cfg.hrnn, own)
  assert trainer.step == 25
  assert after < before - 0.3, (before, after)
  assert any("meta_loss" in l and "task-steps/s" in l for l in lines)
  assert trainer.counters["num_nonfinite"] == 0
  assert all(np.all(np.isfinite(x)) for x in _leaves(trainer.theta))


def test_a_time_budget_alone_runs_until_it_is_spent_and_shows_the_minutes():
  # No step limit with a budget: a zero budget ends after exactly the
  # first meta-step, and the line shows the minutes, not a step count.
  cfg = config_lib.load("tiny", QUAD_BOWL + ["steps=1000", "log_every=1"])
  lines = []
  trainer = local_train.train(cfg, log=lines.append, time_budget_s=0.0)
  assert trainer.step == 1
  progress = [l for l in lines if l.startswith("step ")]
  assert len(progress) == 1 and re.match(
      r"step +1 \(\d+\.\d of 0 min\)  meta_loss", progress[0]), progress
  assert lines[-1] == "time budget of 0s reached at step 1"
  with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
    local_train.train(cfg, steps=0, log=lines.append)


def test_meta_optimizer_choices():
  for name in ("adam", "rmsprop"):
    cfg = config_lib.load("tiny", [f"meta_opt.name={name}"])
    opt = local_train.meta_optimizer(cfg.meta_opt)
    theta = {"a": np.ones(3, np.float32)}
    st = opt.init(theta)
    upd, _ = opt.update({"a": np.array([np.inf, 1e9, -1.0], np.float32)},
                        st, theta)
    assert np.all(np.isfinite(np.asarray(upd["a"])))


class _FakeTime:
  """A clock the test moves, and an exit that records instead of exiting."""

  def __init__(self):
    self.now, self.codes = 100.0, []

  def clock(self):
    return self.now

  def exit(self, code):
    self.codes.append(code)


def _dog(fake, lines, seconds=60.0):
  trainer = type("T", (), {"step": 6, "running": (1, "bowl(cond=1)", 0)})()
  return local_train.trainer_watchdog(trainer, seconds, lines.append,
                                      clock=fake.clock, exit=fake.exit,
                                      thread=False)


def test_stall_watchdog_exits_with_code_3_naming_the_step_and_group():
  fake, lines = _FakeTime(), []
  dog = _dog(fake, lines)
  for _ in range(5):  # meta-steps of 50 s each keep beating
    fake.now += 50.0
    assert not dog.check()
    dog.beat()
  fake.now += 60.0  # exactly the limit is not a stall
  assert not dog.check() and fake.codes == []
  fake.now += 1.0
  assert dog.check()
  assert fake.codes == [3]
  (line,) = lines
  assert line.startswith("STALLED: meta-step 7 on group (index, config, age) "
                         "(1, 'bowl(cond=1)', 0) has run 61s (limit 60s)")


def test_stall_watchdog_is_quiet_after_stop_and_when_disabled():
  fake, lines = _FakeTime(), []
  dog = _dog(fake, lines)
  dog.stop()
  fake.now += 1e6
  assert not dog.check()
  off = _dog(fake, lines, seconds=0.0)
  fake.now += 1e6
  assert not off.check()
  assert fake.codes == [] and lines == []


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def test_train_only_leaves_the_other_entries_exactly_at_their_start():
  readouts = ["w_lr", "w_update", "shortcut"]
  cfg = config_lib.load("tiny", [
      "meta_grad.estimator=pes", "meta_grad.pes_pairs=2", "steps=3",
      'meta_grad.train_only=["w_lr", "w_update", "shortcut"]'])
  start = local_train.MetaTrainer(cfg).theta
  trainer = local_train.train(cfg, log=lambda _: None)
  assert trainer.step == 3 and trainer.counters["skipped_updates"] == 0
  for k, v in trainer.theta.items():
    moved = np.abs(_flat(v) - _flat(start[k]))
    if k in readouts:
      assert np.all(moved > 0), k  # Adam moves every entry with a gradient
    else:
      assert np.all(moved == 0), k
