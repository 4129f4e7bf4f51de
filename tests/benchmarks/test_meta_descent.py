"""benchmarks/meta_descent.py: replayed truncations and the gradient's
first-order prediction, on real BPTT unrolls."""

import jax
import numpy as np
import pytest

from metatrain.optimizer import hrnn
from metatrain.training import config as config_lib

pytestmark = pytest.mark.xdist_group("tiny_quadratic_bptt")


def test_sign_step_moves_each_coordinate_by_eps(benchmark_module):
  mod = benchmark_module("meta_descent")
  theta = {"a": np.array([1.0, 2.0, 3.0], np.float32)}
  grad = {"a": np.array([0.5, 0.0, -7.0], np.float32)}
  moved = mod.sign_step(theta, grad, 0.25)
  np.testing.assert_array_equal(moved["a"], [0.75, 2.0, 3.25])
  signs = mod.random_signs(
      {"a": np.array([[0.5, 0.0], [-2.0, 3.0]] * 50, np.float32)},
      np.random.default_rng(0))["a"]
  np.testing.assert_array_equal(signs[0::2, 1], 0.0)  # where grad is 0
  for column in (signs[:, 0], signs[1::2, 1]):  # random signs elsewhere
    assert set(np.unique(column)) == {-1.0, 1.0}


def test_descent_replays_truncations_and_follows_the_gradient(
    benchmark_module):
  mod = benchmark_module("meta_descent")
  cfg = config_lib.load("tiny", ['tasks.families=["quadratic"]',
                                 "meta_grad.estimator=bptt"])
  theta = hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn)
  out = mod.descent(theta, cfg, groups=2, heldout=1, eps=[0.0, 1e-3],
                    seed=123, log=lambda _: None)
  assert set(out) == {(d, m) for d, m, _ in mod.ROWS}
  # eps 0 replays every truncation exactly: each change (the random-sign
  # control's included) is exactly zero.
  for key, cells in out.items():
    assert cells[0][0] == 0.0, key
  # A small step along a truncation's own exact gradient lowers that
  # truncation's meta-loss by what the gradient predicts to first order.
  predicted, _ = out[("own", "prediction")][1]
  changed, _ = out[("own", "same")][1]
  assert predicted < 0
  assert changed == pytest.approx(predicted, rel=0.1)

  # mean_only replays only the mean gradient's rows: the same groups give
  # the same figures, and the rest are left empty.
  lean = mod.descent(theta, cfg, groups=2, heldout=1, eps=[1e-3], seed=123,
                     log=lambda _: None, mean_only=True, heldout_seed=5)
  assert lean[("mean", "same")][0] == out[("mean", "same")][1]
  assert lean[("own", "prediction")][0] == out[("own", "prediction")][1]
  for key in (("own", "same"), ("own", "other"), ("random", "same")):
    assert np.isnan(lean[key][0][0]), key
