"""Task groups: a new group of a compiled bucket compiles nothing."""

import json

import jax
import numpy as np
import pytest

from metatrain.optimizer import hrnn
from metatrain.tasks import TaskConfig
from metatrain.training import config, meta_step, programs

A = TaskConfig("quadratic", (("dim", 5), ("noise", 0.0)))
# Same bucket (dim 5), other hyperparameters and two transforms.
B = TaskConfig("quadratic", (("dim", 5), ("noise", 2.0)),
               (("rescale", (("scale", 30.0),)), ("log_objective", ())))


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_resampling_a_compiled_bucket_compiles_nothing(estimator):
  cfg = config.load("tiny", [f"meta_grad.estimator={estimator}",
                             "meta_grad.pes_pairs=1"])
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn)
  first = meta_step.TaskGroup.of(A, 1, cfg, theta)
  assert first.bucket.name == "quadratic[dim=5]"
  _, m_a, _ = first.meta_grad(theta, np.random.default_rng(0), cfg)
  first.meta_grad(theta, np.random.default_rng(1), cfg)  # carried states
  before = programs.compile_counts()
  group = meta_step.TaskGroup.of(B, 1, cfg, theta)
  assert group.bucket == first.bucket
  _, m_b, n = group.meta_grad(theta, np.random.default_rng(0), cfg)
  group.meta_grad(theta, np.random.default_rng(1), cfg)
  assert programs.compile_counts() == before
  # The same program, other hyperparameters: other losses.
  assert float(m_a["meta_loss"]) != float(m_b["meta_loss"])
  # Every task started inside the first truncation, not counted as reset.
  assert float(m_b["num_resets"]) == 0 and float(m_b["num_good"]) > 0
  assert n == cfg.unroll.min_steps * (2 if estimator == "pes" else
                                      cfg.unroll.tasks_per_group)


def test_a_group_starts_its_tasks_in_the_first_truncation():
  cfg = config.load("tiny", ["meta_grad.estimator=bptt"])
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn)
  g = meta_step.TaskGroup.of(A, 1, cfg, theta)
  assert np.all(np.asarray(g.states.truncs_left) == -1)  # pending
  assert np.all(np.asarray(g.states.params["x"]) == 0)
  g.meta_grad(theta, np.random.default_rng(0), cfg)
  assert np.all(np.asarray(g.states.step) == cfg.unroll.min_steps)
  x = np.asarray(g.states.params["x"])
  assert np.all(x != 0) and not np.allclose(x[0], x[1])  # own instances


def test_unit_norm_scales_to_norm_one_and_passes_bad_gradients_through():
  g, n = meta_step.unit_norm({"a": np.array([3.0, 0.0]),
                              "b": np.array([[4.0]])})
  np.testing.assert_allclose(g["a"], [0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(g["b"], [[0.8]], rtol=1e-6)
  assert float(n) == pytest.approx(5.0)
  # Its squared norm overflows float32; the result is still the unit vector.
  g, n = meta_step.unit_norm({"a": np.array([3e20, 4e20], np.float32)})
  np.testing.assert_allclose(g["a"], [0.6, 0.8], rtol=1e-6)
  assert float(n) == pytest.approx(5e20, rel=1e-6)
  g, n = meta_step.unit_norm({"a": np.zeros(3)})
  assert np.all(np.asarray(g["a"]) == 0) and float(n) == 0
  g, n = meta_step.unit_norm({"a": np.array([1.0, np.nan])})
  assert np.isnan(np.asarray(g["a"])[1]) and not np.isfinite(float(n))


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_normalize_groups_gives_the_group_gradient_over_its_norm(estimator):
  sets = [f"meta_grad.estimator={estimator}", "meta_grad.pes_pairs=1"]
  plain = config.load("tiny", sets)
  unit = config.load("tiny", [*sets, "meta_grad.normalize_groups=true"])
  theta = hrnn.init_theta(jax.random.PRNGKey(0), plain.hrnn)
  out = {}
  for name, cfg in (("plain", plain), ("unit", unit)):
    group = meta_step.TaskGroup.of(B, 1, cfg, theta)
    out[name] = group.meta_grad(theta, np.random.default_rng(0), cfg)[:2]
  (g0, m0), (g1, m1) = out["plain"], out["unit"]
  flat0, flat1 = _flat(g0), _flat(g1)
  norm = np.linalg.norm(flat0)
  assert norm > 0
  np.testing.assert_allclose(flat1, flat0 / norm, rtol=1e-4, atol=1e-7)
  assert float(m1["meta_loss"]) == float(m0["meta_loss"])


READOUTS = ["w_lr", "w_update", "shortcut"]


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_train_only_every_entry_is_plain_training(estimator):
  sets = [f"meta_grad.estimator={estimator}", "meta_grad.pes_pairs=2"]
  plain = config.load("tiny", sets)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), plain.hrnn)
  every = config.load("tiny", [
      *sets, f"meta_grad.train_only={json.dumps(list(theta))}"])
  out = []
  for cfg in (plain, every):
    group = meta_step.TaskGroup.of(B, 1, cfg, theta)
    out.append(group.meta_grad(theta, np.random.default_rng(0), cfg)[:2])
  (g0, m0), (g1, m1) = out
  np.testing.assert_array_equal(_flat(g1), _flat(g0))
  assert float(m1["meta_loss"]) == float(m0["meta_loss"])


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_train_only_perturbs_and_estimates_only_the_named_entries(estimator):
  sets = [f"meta_grad.estimator={estimator}", "meta_grad.pes_pairs=2"]
  plain = config.load("tiny", sets)
  only = config.load("tiny", [*sets, 'meta_grad.train_only=["w_lr", '
                                     '"w_update", "shortcut"]'])
  assert only.meta_grad.train_only == tuple(READOUTS)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), plain.hrnn)
  groups = {}
  for name, cfg in (("plain", plain), ("only", only)):
    group = meta_step.TaskGroup.of(B, 1, cfg, theta)
    grad, _, _ = group.meta_grad(theta, np.random.default_rng(0), cfg)
    groups[name] = (group, grad)
  grad = groups["only"][1]
  for k, v in grad.items():
    if k in READOUTS:
      continue
    assert np.all(_flat(v) == 0), k  # exactly: not estimated
  assert np.any(_flat({k: grad[k] for k in READOUTS}) != 0)
  if estimator == "pes":
    # The same noise draw, masked: the particles differ from theta only in
    # the named entries, by the plain run's perturbations of them.
    acc, acc0 = groups["only"][0].states.accum, groups["plain"][0].states.accum
    for k in acc:
      if k in READOUTS:
        np.testing.assert_array_equal(_flat(acc[k]), _flat(acc0[k]))
        assert np.any(_flat(acc[k]) != 0)
      else:
        assert np.all(_flat(acc[k]) == 0), k


def test_train_only_names_are_checked_against_theta():
  with pytest.raises(ValueError, match="'w_lrr' is not an entry of this "
                     "optimizer's theta .*w_lr"):
    config.load("tiny", ['meta_grad.train_only=["w_lrr"]'])
  # An entry that only exists with a feature on.
  with pytest.raises(ValueError, match="'global_rnn' is not an entry"):
    config.load("tiny", ['meta_grad.train_only=["global_rnn"]',
                         "hrnn.use_global_rnn=false"])
  with pytest.raises(ValueError, match="names an entry twice"):
    config.load("tiny", ['meta_grad.train_only=["w_lr", "w_lr"]'])
  with pytest.raises(ValueError, match="'nope' is not an entry of theta"):
    meta_step.trainable_mask({"w_lr": np.zeros(3)}, ["nope"])
