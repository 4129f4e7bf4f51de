"""Truncated unrolls: resets, meta-gradients, divergence handling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain.optimizer import hrnn
from metatrain.tasks import TaskConfig
from metatrain.training import unroll

HCFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), HCFG)
QUAD = TaskConfig("quadratic", (("dim", 4), ("noise", 0.0)))
UCFG = unroll.UnrollConfig(tasks_per_group=3, truncations_mean=2.0,
                           min_steps=4, max_steps=8)


def _call(theta, states, length=4, key=0, ucfg=UCFG, task=QUAD):
  keys = jax.random.split(jax.random.PRNGKey(key), ucfg.tasks_per_group)
  return unroll.group_meta_grad(theta, states, keys, length,
                                task_config=task, hcfg=HCFG, ucfg=ucfg,
                                scan_len=unroll.bucket(length, ucfg))


def _states(n=3, ucfg=UCFG):
  return unroll.init_group_states(THETA, jax.random.PRNGKey(1),
                                  task_config=QUAD, hcfg=HCFG, ucfg=ucfg,
                                  num_tasks=n)


def test_bucket_and_lengths():
  assert [unroll.bucket(n, UCFG) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 8]
  rng = np.random.default_rng(0)
  lengths = [unroll.sample_length(rng, UCFG) for _ in range(200)]
  assert min(lengths) >= UCFG.min_steps and max(lengths) <= UCFG.max_steps


def test_reset_happens_exactly_when_length_is_reached():
  states = _states().replace(truncs_left=jnp.array([1, 2, 3], jnp.int32))
  seeds0 = np.asarray(states.seed)
  resets = []
  for call in range(4):
    _, states, m = _call(THETA, states, key=call)
    resets.append(int(m["num_resets"]))
    if call == 0:
      assert list(np.asarray(states.step)) == [4, 4, 4]
  # Task i lives i+1 truncations, so it resets at the start of call i+1.
  assert resets == [0, 1, 1, 2]  # call 3 resets task 2 and task 0 again
  assert not np.array_equal(np.asarray(states.seed)[0], seeds0[0])


def test_masked_steps_beyond_length_do_nothing():
  s = _states()
  _, s5, _ = _call(THETA, s, length=5)  # compiled as 8, masked after 5
  assert list(np.asarray(s5.step)) == [5, 5, 5]
  assert int(s5.opt_state.step[0]) == 5


def test_vmap_over_tasks_matches_single_tasks():
  ucfg1 = dataclasses.replace(UCFG, tasks_per_group=1)
  states = _states()
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  g, _, m = unroll.group_meta_grad(THETA, states, keys, 4, task_config=QUAD,
                                   hcfg=HCFG, ucfg=UCFG, scan_len=4)
  singles = []
  for i in range(3):
    si = jax.tree_util.tree_map(lambda x: x[i:i + 1], states)
    gi, _, _ = unroll.group_meta_grad(THETA, si, keys[i:i + 1], 4,
                                      task_config=QUAD, hcfg=HCFG, ucfg=ucfg1,
                                      scan_len=4)
    singles.append(gi)
  mean = jax.tree_util.tree_map(lambda *x: sum(x) / 3, *singles)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(mean)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-8)


def test_bptt_meta_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    theta = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), THETA)
    ucfg = dataclasses.replace(UCFG, tasks_per_group=1)
    states = unroll.init_group_states(theta, jax.random.PRNGKey(1),
                                      task_config=QUAD, hcfg=HCFG, ucfg=ucfg,
                                      num_tasks=1)
    states = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating)
        else x, states)

    def f(th):
      _, _, m = _call(th, states, length=6, ucfg=ucfg)
      return m["meta_loss"]

    g, _, _ = _call(theta, states, length=6, ucfg=ucfg)
    rng = np.random.default_rng(0)
    d = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)),
                               theta)
    eps = 1e-5
    fd = (float(f(jax.tree_util.tree_map(lambda t, v: t + eps * v, theta, d)))
          - float(f(jax.tree_util.tree_map(lambda t, v: t - eps * v, theta,
                                           d)))) / (2 * eps)
    an = sum(float(jnp.vdot(a, b)) for a, b in zip(
        jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d)))
    assert abs(fd) > 1e-7
    np.testing.assert_allclose(an, fd, rtol=1e-4)


def test_stop_second_derivatives_changes_the_gradient():
  ucfg = dataclasses.replace(UCFG, stop_second_derivatives=True)
  theta = dict(THETA, stepsize_offset=jnp.asarray(5.0))  # params must move
  g1, _, _ = _call(theta, _states())
  g2, _, _ = _call(theta, _states(), ucfg=ucfg)
  assert not np.allclose(np.asarray(g1["w_lr"]), np.asarray(g2["w_lr"]),
                         rtol=1e-3)
  assert np.all(np.isfinite(np.asarray(g2["w_lr"])))


def test_diverging_task_is_counted_and_theta_gradient_stays_finite():
  theta = dict(THETA)
  theta["stepsize_offset"] = jnp.asarray(30.0)  # learning rates ~ e^21
  states = _states()
  g, new, m = _call(theta, states, length=8)
  assert int(m["num_diverged"]) == 3
  # Diverging is penalized, never dropped: every step of every task pays
  # the cap log(divergence_factor), which no finite outcome exceeds.
  np.testing.assert_allclose(float(m["meta_loss"]),
                             np.log(UCFG.divergence_factor), rtol=1e-6)
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree_util.tree_leaves(g))
  # Diverged tasks are reset on the next call.
  assert list(np.asarray(new.truncs_left)) == [0, 0, 0]
  _, _, m2 = _call(THETA, new)
  assert int(m2["num_resets"]) == 3 and int(m2["num_good"]) == 3


def test_minibatch_meta_loss_is_the_full_loss_one_step_behind():
  # QUAD has no noise, so its minibatch loss is its full loss: the
  # minibatch objective of 4 steps is the full one of 3 plus the first
  # step's term, log(f_0 / (f_0 + 1e-6) + 1e-6) ~ 0, which no theta
  # changes.
  mb = dataclasses.replace(UCFG, meta_loss="minibatch")
  theta = dict(THETA, stepsize_offset=jnp.asarray(2.0))  # params must move
  g3, s3, m3 = _call(theta, _states(), length=3)
  g4, s4, m4 = _call(theta, _states(), length=4, ucfg=mb)
  np.testing.assert_allclose(4 * float(m4["meta_loss"]),
                             3 * float(m3["meta_loss"]), atol=1e-5)
  assert float(m3["meta_loss"]) < -0.01  # the loss did fall
  for a, b in zip(jax.tree_util.tree_leaves(g3),
                  jax.tree_util.tree_leaves(g4)):
    np.testing.assert_allclose(4 * np.asarray(b), 3 * np.asarray(a),
                               rtol=1e-4, atol=1e-7)
  assert list(np.asarray(s4.step)) == [4, 4, 4]


def test_minibatch_meta_loss_still_catches_divergence():
  mb = dataclasses.replace(UCFG, meta_loss="minibatch")
  theta = dict(THETA, stepsize_offset=jnp.asarray(30.0))
  g, new, m = _call(theta, _states(), length=8, ucfg=mb)
  assert int(m["num_diverged"]) == 3
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree_util.tree_leaves((g, new.params)))
  assert list(np.asarray(new.truncs_left)) == [0, 0, 0]


def test_meta_loss_ramp_weighs_early_steps_less():
  theta = dict(THETA, stepsize_offset=jnp.asarray(2.0))  # params must move
  # QUAD has no noise: each step's term is the same in every call, so the
  # uniform objectives of lengths 1-4 give the terms one by one.
  sums = [0.0] + [n * float(_call(theta, _states(), length=n)[2]["meta_loss"])
                  for n in range(1, 5)]
  terms = np.diff(sums)
  assert np.all(terms < 0)
  ramp8 = dataclasses.replace(UCFG, meta_loss_ramp_steps=8)
  live = _states().replace(truncs_left=jnp.array([5, 5, 5], jnp.int32))
  _, s1, m = _call(theta, live, length=4, ucfg=ramp8)
  np.testing.assert_allclose(float(m["meta_loss"]),
                             np.sum(terms * np.arange(1, 5) / 8) / 4,
                             rtol=1e-4)
  # Past the ramp (the next truncation starts at step 4 of the same tasks:
  # none resets) every step weighs 1, as with no ramp.
  ramp4 = dataclasses.replace(UCFG, meta_loss_ramp_steps=4)
  _, s_uni, _ = _call(theta, live, length=4)
  m_uni = _call(theta, s_uni, length=4, key=1)[2]
  m_ramp = _call(theta, s1, length=4, key=1, ucfg=ramp4)[2]
  np.testing.assert_allclose(float(m_ramp["meta_loss"]),
                             float(m_uni["meta_loss"]), rtol=1e-5)
  # Diverging early still pays the full cap.
  big = dataclasses.replace(UCFG, meta_loss_ramp_steps=10**6)
  m = _call(dict(THETA, stepsize_offset=jnp.asarray(30.0)), _states(),
            length=8, ucfg=big)[2]
  assert int(m["num_diverged"]) == 3
  assert float(m["meta_loss"]) > 0.5 * np.log(UCFG.divergence_factor)
  with pytest.raises(ValueError, match="meta_loss_ramp_steps must be >= 0"):
    unroll.UnrollConfig(meta_loss_ramp_steps=-1)


def test_unknown_meta_loss_is_refused():
  with pytest.raises(ValueError, match="meta_loss must be 'full' or"):
    unroll.UnrollConfig(meta_loss="train")


def test_evaluate_reports_meta_objective_per_task():
  obj, final, diverged = unroll.evaluate(
      THETA, jax.random.PRNGKey(0), task_config=QUAD, hcfg=HCFG, num_tasks=2,
      steps=10)
  assert obj.shape == (2,) and final.shape == (2,)
  assert np.all(np.isfinite(np.asarray(obj)))
  assert not np.any(np.asarray(diverged))


def test_evaluate_reports_an_exploding_optimizer_as_diverged():
  # exp(60) step sizes: the HRNN blows up at its first step. This used to
  # report a final loss of 0, as if it had solved the task.
  theta = dict(THETA, stepsize_offset=jnp.asarray(60.0))
  obj, final, diverged = unroll.evaluate(
      theta, jax.random.PRNGKey(0), task_config=QUAD, hcfg=HCFG, num_tasks=2,
      steps=10)
  assert np.all(np.asarray(diverged))
  assert np.all(np.isinf(np.asarray(final))) and np.all(np.asarray(final) > 0)
  assert np.all(np.isinf(np.asarray(obj)))


def test_each_task_runs_at_its_sampled_nominal_rate():
  # Untrained, the optimizer is Adam at the task's rate, whose first step
  # moves every coordinate by exactly the rate (sign of the gradient).
  moved = {}
  for rate in (1e-3, 1e-2):
    ucfg = dataclasses.replace(UCFG, lr_range=(rate, rate))
    s0 = _states(ucfg=ucfg)
    np.testing.assert_allclose(np.asarray(s0.lr), rate, rtol=1e-6)
    s0 = s0.replace(truncs_left=jnp.full((3,), 5, jnp.int32))
    _, s1, _ = _call(THETA, s0, length=1, ucfg=ucfg)
    moved[rate] = np.abs(np.asarray(s1.params["x"]) -
                         np.asarray(s0.params["x"]))
    np.testing.assert_allclose(moved[rate], rate, rtol=1e-4)
  wide = dataclasses.replace(UCFG, lr_range=(1e-4, 1e-2))
  rates = np.asarray(_states(n=64, ucfg=wide).lr)
  assert rates.min() >= 1e-4 * (1 - 1e-6) and rates.max() <= 1e-2 * (1 + 1e-6)
  assert len(set(rates.tolist())) == 64  # per task instance
  # Log-uniform: about half below the geometric midpoint 1e-3.
  assert 20 <= int(np.sum(rates < 1e-3)) <= 44
  with pytest.raises(ValueError, match="lr_range"):
    unroll.UnrollConfig(lr_range=(1e-2, 1e-3))


def test_log_uniform_task_lives_start_at_random_offsets():
  ucfg = dataclasses.replace(UCFG, task_steps_range=(100.0, 2000.0))
  n = unroll.sample_num_truncations(jax.random.PRNGKey(0), ucfg, (4000,))
  n = np.asarray(n)
  # Whole truncations of max_steps (8): ceil(100/8) = 13 to 250.
  assert n.min() >= 13 and n.max() <= 250
  # Log-uniform steps: the median life is about sqrt(100 * 2000) = 447.
  assert 50 <= np.median(n) <= 62
  # Pending tasks (a new group) start with a uniform fraction of a life.
  pending = unroll.pending_group_states(
      THETA, jax.random.PRNGKey(2), task_config=QUAD, hcfg=HCFG, ucfg=ucfg,
      num_tasks=3)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  _, s1, m = unroll.group_meta_grad(THETA, pending, keys, 8,
                                    task_config=QUAD, hcfg=HCFG, ucfg=ucfg,
                                    scan_len=8)
  left = np.asarray(s1.truncs_left)
  assert int(m["num_resets"]) == 0
  assert np.all(left >= 0) and np.all(left <= 249)
  assert len(set(left.tolist())) == 3
  with pytest.raises(ValueError, match="task_steps_range"):
    unroll.UnrollConfig(task_steps_range=(0.5, 10.0))


LOGISTIC = TaskConfig("logistic", (("dim", 64), ("sep", 2), ("batch", 100),
                                   ("noise", 0.5)))


def test_remat_gives_the_same_meta_gradient_with_less_memory():
  # Exact to float64 rounding: recomputing each step in the backward pass
  # is the same arithmetic; XLA's own analysis of the two programs says
  # what the heap must hold.
  with jax.enable_x64(True):
    theta = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), THETA)
    theta = dict(theta, w_update=jnp.full((HCFG.param_units,), 0.1))
    out, mem = {}, {}
    for remat in (False, True):
      ucfg = dataclasses.replace(UCFG, remat=remat)
      states = unroll.init_group_states(theta, jax.random.PRNGKey(1),
                                        task_config=LOGISTIC, hcfg=HCFG,
                                        ucfg=ucfg, num_tasks=3)
      keys = jax.random.split(jax.random.PRNGKey(0), 3)
      kw = dict(task_config=LOGISTIC, hcfg=HCFG, ucfg=ucfg, scan_len=8)
      compiled = unroll.group_meta_grad.lower(theta, states, keys, 8,
                                              **kw).compile()
      mem[remat] = compiled.memory_analysis().temp_size_in_bytes
      out[remat] = compiled(theta, states, keys, 8)
  (g0, s0, m0), (g1, s1, m1) = out[False], out[True]
  assert float(m0["num_good"]) == 3
  for a, b in zip(jax.tree_util.tree_leaves((g0, s0)),
                  jax.tree_util.tree_leaves((g1, s1))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9,
                               atol=1e-12)
  assert float(m1["meta_loss"]) == pytest.approx(float(m0["meta_loss"]),
                                                 rel=1e-12)
  assert np.any(np.asarray(g0["w_update"]) != 0)
  assert mem[True] < 0.7 * mem[False]  # 0.51 measured
