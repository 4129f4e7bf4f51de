"""PES meta-gradients: agreement with BPTT, accumulators, pairs, mixing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain.optimizer import hrnn
from metatrain.tasks import TaskConfig
from metatrain.training import config as config_lib
from metatrain.training import local_train, meta_step, pes, unroll

HCFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), HCFG)
# One task config, group size and truncation bucket for every test: each
# distinct one is another compiled program (~10 s each on 2 cores). The
# minibatch noise is a fixed function of the run keys, so the loss is smooth
# in theta for given keys.
QUAD = TaskConfig("quadratic", (("dim", 4), ("noise", 0.5)))
UCFG = unroll.UnrollConfig(tasks_per_group=4, truncations_mean=2.0,
                           min_steps=4, max_steps=8)
STD = 0.01
PAIRS = 64


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x))
                         for x in jax.tree_util.tree_leaves(tree)])


def _pes(state, key=0, eps_key=100, std=STD, theta=THETA, keys=None):
  if keys is None:
    keys = jax.random.split(jax.random.PRNGKey(key), pes.num_pairs(state))
  return pes.pes_meta_grad(theta, state, keys, jax.random.PRNGKey(eps_key),
                           4, std, task_config=QUAD, hcfg=HCFG, ucfg=UCFG,
                           scan_len=4)


def _init():
  return pes.init_pes_states(THETA, jax.random.PRNGKey(1), task_config=QUAD,
                             hcfg=HCFG, ucfg=UCFG, num_pairs=PAIRS)


def test_accumulators_persist_and_reset_with_their_pair():
  s0 = _init()
  assert np.all(np.asarray(s0.tasks.truncs_left) == -1)
  _, s1, m1 = _pes(s0, key=0, eps_key=10)
  eps1 = pes.perturbations(THETA, jax.random.PRNGKey(10), PAIRS, STD)
  # Tasks start on the first call (with their perturbed theta): not resets.
  assert int(m1["num_resets"]) == 0
  np.testing.assert_allclose(_flat(s1.accum), _flat(eps1), rtol=1e-6)
  # Pair 1's minus member alone is used up: the whole pair resets.
  tl = np.full(2 * PAIRS, 5, np.int32)
  tl[3] = 0
  s1 = s1.replace(tasks=s1.tasks.replace(truncs_left=jnp.asarray(tl)))
  _, s2, m2 = _pes(s1, key=1, eps_key=11)
  eps2 = pes.perturbations(THETA, jax.random.PRNGKey(11), PAIRS, STD)
  assert int(m2["num_resets"]) == 2
  for a, e1, e2 in zip(*(map(np.asarray, jax.tree_util.tree_leaves(t))
                         for t in (s2.accum, eps1, eps2))):
    keep = np.arange(PAIRS) != 1
    np.testing.assert_allclose(a[keep], (e1 + e2)[keep], rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(a[1], e2[1], rtol=1e-6)
  seeds1, seeds2 = np.asarray(s1.tasks.seed), np.asarray(s2.tasks.seed)
  np.testing.assert_array_equal(seeds2[2], seeds2[3])
  assert not np.array_equal(seeds2[2], seeds1[2])
  others = np.r_[0, 1, 4:2 * PAIRS]
  np.testing.assert_array_equal(seeds2[others], seeds1[others])
  step = np.asarray(s2.tasks.step)
  assert list(step[:6]) == [8, 8, 4, 4, 8, 8]
  np.testing.assert_array_equal(np.asarray(s2.tasks.truncs_left)[0::2],
                                np.asarray(s2.tasks.truncs_left)[1::2])


def test_pes_agrees_with_bptt_on_a_smooth_problem():
  # (Runs after a test that compiled the PES program: each is ~15 s here.)
  # The same task states for both estimators, no resets: PES pair i and
  # BPTT task i share an instance, its state and its minibatch keys.
  pstate = _init()
  pstate = pstate.replace(tasks=pstate.tasks.replace(
      truncs_left=jnp.full((2 * PAIRS,), 5, jnp.int32)))
  keys = jax.random.split(jax.random.PRNGKey(0), PAIRS)
  states = jax.tree_util.tree_map(lambda x: x[0::2], pstate.tasks)
  g_bptt, _, _ = unroll.group_meta_grad(THETA, states, keys, 4,
                                        task_config=QUAD, hcfg=HCFG,
                                        ucfg=UCFG, scan_len=4)
  g_bptt = _flat(g_bptt)
  draws = 64  # 4096 antithetic pairs in all
  total = 0.0
  for r in range(draws):
    g, _, m = _pes(pstate, eps_key=1000 + r, keys=keys)
    assert int(m["num_good"]) == 2 * PAIRS and int(m["num_resets"]) == 0
    total = total + _flat(g)
  g_pes = total / draws
  cos = g_pes @ g_bptt / np.linalg.norm(g_pes) / np.linalg.norm(g_bptt)
  # Unbiased: the projection on the BPTT gradient is ~1 (this checks the
  # 1 / (2 N std^2) normalisation); the cosine is limited by ES noise in
  # ~8k dimensions (0.5 with 8192 pairs).
  proj = g_pes @ g_bptt / (g_bptt @ g_bptt)
  print(f"cosine {cos:.3f} projection {proj:.3f}")
  assert cos > 0.15, cos
  assert 0.7 < proj < 1.3, proj


def test_sign_estimate_weighs_each_pair_by_the_sign_of_its_difference():
  # On the first call the accumulators are the perturbations, so the sign
  # estimate is sum_i eps_i s_i / (N std) with every s_i = +-1: solved for
  # the s_i from the 64 known perturbations (independent in ~8k dims).
  s0 = _init()
  keys = jax.random.split(jax.random.PRNGKey(0), PAIRS)
  g, _, m = pes.pes_meta_grad(THETA, s0, keys, jax.random.PRNGKey(10), 4, STD,
                              task_config=QUAD, hcfg=HCFG, ucfg=UCFG,
                              scan_len=4, loss_diff="sign")
  assert int(m["num_good"]) == 2 * PAIRS
  eps = pes.perturbations(THETA, jax.random.PRNGKey(10), PAIRS, STD)
  e = np.stack([_flat(jax.tree_util.tree_map(lambda x, i=i: x[i], eps))
                for i in range(PAIRS)])
  s, *_ = np.linalg.lstsq(e.T, _flat(g) * PAIRS * STD, rcond=None)
  np.testing.assert_allclose(np.abs(s), 1.0, atol=1e-3)
  # Its signs are the raw estimate's: the raw coefficients have them.
  g_raw, _, _ = pes.pes_meta_grad(THETA, s0, keys, jax.random.PRNGKey(10), 4,
                                  STD, task_config=QUAD, hcfg=HCFG,
                                  ucfg=UCFG, scan_len=4)
  raw, *_ = np.linalg.lstsq(e.T, _flat(g_raw), rcond=None)
  np.testing.assert_array_equal(np.sign(raw), np.sign(s))


def test_normalized_estimate_weighs_pairs_by_their_difference_over_its_rms():
  # "normalized": sum_i eps_i (d_i / rms(d)) / (N std). Solved for the
  # coefficients as above: they are the raw estimate's up to one positive
  # factor (the pairs keep their relative sizes) with mean square 1 (the
  # task's loss scale is gone, as with "sign").
  s0 = _init()
  keys = jax.random.split(jax.random.PRNGKey(0), PAIRS)
  eps = pes.perturbations(THETA, jax.random.PRNGKey(10), PAIRS, STD)
  e = np.stack([_flat(jax.tree_util.tree_map(lambda x, i=i: x[i], eps))
                for i in range(PAIRS)])
  coef = {}
  for mode in ("raw", "normalized"):
    g, _, m = pes.pes_meta_grad(THETA, s0, keys, jax.random.PRNGKey(10), 4,
                                STD, task_config=QUAD, hcfg=HCFG, ucfg=UCFG,
                                scan_len=4, loss_diff=mode)
    assert int(m["num_good"]) == 2 * PAIRS
    coef[mode], *_ = np.linalg.lstsq(e.T, _flat(g), rcond=None)
  s = coef["normalized"] * PAIRS * STD
  np.testing.assert_allclose(np.mean(s**2), 1.0, rtol=1e-3)
  ratio = s / coef["raw"]
  assert np.all(ratio > 0)
  np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-3)
  with pytest.raises(ValueError, match="normalized"):
    pes.pes_meta_grad(THETA, s0, keys, jax.random.PRNGKey(10), 4, STD,
                      task_config=QUAD, hcfg=HCFG, ucfg=UCFG, scan_len=4,
                      loss_diff="rank")


def test_divergence_resets_both_members_and_estimates_stay_finite():
  # Learning rates ~e^21 explode (a float32 leaf: no new compile).
  theta = dict(THETA, stepsize_offset=jnp.asarray(30.0, jnp.float32))
  g, s1, m = _pes(_init(), theta=theta)
  assert int(m["num_diverged"]) == 2 * PAIRS
  np.testing.assert_allclose(float(m["meta_loss"]),
                             np.log(UCFG.divergence_factor), rtol=1e-6)
  assert np.all(np.isfinite(_flat(g)))
  assert np.all(np.asarray(s1.tasks.truncs_left) == 0)


def test_antithetic_members_share_tasks_and_minibatches():
  s0 = _init()
  _, s1, _ = _pes(s0)
  for field in ("seed", "f0", "step"):
    a = np.asarray(getattr(s1.tasks, field))
    np.testing.assert_array_equal(a[0::2], a[1::2])
  w = np.asarray(s1.tasks.data["w"])
  np.testing.assert_array_equal(w[0::2], w[1::2])
  assert not np.array_equal(w[0], w[2])  # pairs are different instances
  x = np.asarray(s1.tasks.params["x"])
  assert not np.allclose(x[0], x[1])  # +eps vs -eps
  # Without perturbations the members' runs are identical on this noisy
  # task: same instance, same minibatch noise. The estimate is 0, not 0/0.
  g0, s0b, _ = _pes(s0, std=0.0)
  x0 = np.asarray(s0b.tasks.params["x"])
  np.testing.assert_array_equal(x0[0::2], x0[1::2])
  assert np.all(_flat(g0) == 0)


def test_mix_samples_both_kinds_of_groups():
  mix = config_lib.MetaGradConfig(estimator="mix", mix_pes_fraction=0.25)
  seeds = np.random.default_rng(0).integers(2**31, size=400)
  kinds = [meta_step.group_estimator(int(s), mix) for s in seeds]
  assert set(kinds) == {"pes", "bptt"}
  assert 0.18 < kinds.count("pes") / 400 < 0.32
  for est in ("bptt", "pes"):
    assert meta_step.group_estimator(
        5, config_lib.MetaGradConfig(estimator=est)) == est


def test_groups_of_both_kinds_weigh_the_same():
  one = {k: 0.0 for k in ("num_nonfinite", "num_diverged", "num_resets",
                          "meta_loss")}
  bptt = ({"a": np.ones(2)}, dict(one, num_good=2.0, grad_weight=1.0))
  pes_ = ({"a": 3 * np.ones(2)}, dict(one, num_good=16.0, grad_weight=1.0))
  grad, m = meta_step.average_grads([bptt, pes_])
  np.testing.assert_allclose(grad["a"], [2.0, 2.0])
  assert m["num_good"] == 18


def _tiny(*sets):
  return config_lib.load("tiny", [
      'tasks.families=["bowl"]', "tasks.num_groups=1", "unroll.min_steps=5",
      "unroll.max_steps=5", "unroll.steps_mean=0", "meta_grad.pes_pairs=2",
      *sets])


def test_short_pes_training_keeps_theta_finite():
  cfg = _tiny("meta_grad.estimator=pes", "steps=4", "log_every=1")
  lines, seen = [], []
  trainer = local_train.train(cfg, log=lines.append,
                              on_step=lambda t, s: seen.append(t.step))
  assert trainer.step == 4 and seen == [1, 2, 3, 4]
  assert all(g.estimator == "pes" for g in trainer.groups)
  assert any("[pes]" in line for line in lines)
  # 1 group x 2 pairs x 2 members x 5 steps per meta-step.
  assert trainer.counters["task_steps"] == 4 * 4 * 5
  assert trainer.counters["num_nonfinite"] == 0
  assert trainer.counters["skipped_updates"] == 0
  assert np.all(np.isfinite(_flat(trainer.theta)))
  assert not np.allclose(_flat(trainer.theta),
                         _flat(local_train.MetaTrainer(cfg).theta))


def test_mixed_trainer_holds_both_kinds_of_groups():
  # Group creation only: a mixed meta-step is a BPTT group's (test_unroll)
  # plus a PES group's (above), averaged as tested above.
  cfg = _tiny("meta_grad.estimator=mix", "tasks.num_groups=2", "seed=0")
  trainer = local_train.MetaTrainer(cfg)
  kinds = {g.estimator: g for g in trainer.groups}
  assert set(kinds) == {"pes", "bptt"}
  assert isinstance(kinds["pes"].states, pes.PESState)
  assert pes.num_pairs(kinds["pes"].states) == 2
  assert kinds["bptt"].states.step.shape == (cfg.unroll.tasks_per_group,)
  # The coin draws nothing from the trainer's rng: same configs as BPTT.
  bptt = local_train.MetaTrainer(_tiny("tasks.num_groups=2", "seed=0"))
  assert ([g.config for g in bptt.groups] ==
          [g.config for g in trainer.groups])


@pytest.mark.parametrize("override,message", [
    ("meta_grad.estimator=sgd", "meta_grad.estimator must be one of"),
    ("meta_grad.pes_std=0", "meta_grad.pes_std must be"),
    ("meta_grad.pes_std=-0.1", "meta_grad.pes_std must be"),
    ("meta_grad.pes_pairs=0", "meta_grad.pes_pairs must be >= 1"),
    ("meta_grad.mix_pes_fraction=1.5", "mix_pes_fraction must be in"),
    ("meta_grad.pes_pairs=2.5", "must be an integer"),
    ("meta_grad.antithetic=true", "unknown config key"),
    ("meta_grad.normalize_groups=yes", "must be true/false"),
])
def test_config_validation(override, message):
  with pytest.raises(ValueError, match=message):
    config_lib.load("tiny", [override])


def test_presets_pick_their_estimator():
  # "default" is the shipped optimizer's recipe (PES); the small and the
  # paper's presets keep truncated BPTT, the dataclass default.
  for name in ("tiny", "paper"):
    cfg = config_lib.load(name)
    assert cfg.meta_grad == config_lib.MetaGradConfig()
    assert cfg.meta_grad.estimator == "bptt"
  # "default" (= v1, hrnn-v1's recipe) uses PES; v2 sign-of-difference PES.
  assert config_lib.load("default").meta_grad == config_lib.MetaGradConfig(
      estimator="pes")
  cfg = config_lib.load("v2")
  assert cfg.meta_grad == config_lib.MetaGradConfig(estimator="pes",
                                                    pes_loss_diff="sign")
  assert cfg.meta_opt.learning_rate == 3e-4
  assert config_lib.load("default").meta_opt.learning_rate == 1e-3
  cfg = config_lib.load("tiny", ["meta_grad.estimator=pes",
                                 "meta_grad.pes_std=0.02"])
  assert dataclasses.replace(cfg.meta_grad, pes_std=0.01) == \
      config_lib.MetaGradConfig(estimator="pes")
