"""Behavioural tests of the hierarchical RNN optimizer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatrain import hrnn
from metatrain.hrnn import HRNNConfig

CFG = HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), CFG)


def _quadratic(key, dim=8):
  k1, k2 = jax.random.split(key)
  a = jax.random.normal(k1, (dim, dim)) / np.sqrt(dim) + jnp.eye(dim)
  y = jax.random.normal(k2, (dim,))

  def loss(p):
    return 0.5 * jnp.sum((a @ p["w"] - y) ** 2) + 0.5 * jnp.sum(p["b"] ** 2)

  params = {"w": jnp.zeros((dim,)), "b": jnp.full((2, 2), 1.5)}
  return loss, params


def _run(cfg, theta, loss, params, steps, key=None, scale=1.0):
  """Runs ``steps`` HRNN steps with lax.scan; returns (losses, updates)."""
  state = hrnn.init_state(cfg, theta, params, key)

  def body(carry, _):
    p, s = carry
    l, g = jax.value_and_grad(lambda q: scale * loss(q))(p)
    u, s = hrnn.update(cfg, theta, s, g, p)
    return (optax.apply_updates(p, u), s), (l / scale, u)

  (p, s), (losses, ups) = jax.lax.scan(body, (params, state), None, steps)
  return losses, ups, p, s


def _assert_steadily_decreasing(losses):
  # The reference initial learning rates are small (about 4e-5 per step), so
  # the untrained optimizer is slow but must descend steadily.
  losses = np.asarray(losses)
  assert np.all(np.isfinite(losses))
  windows = losses.reshape(4, -1).mean(axis=1)
  assert np.all(np.diff(windows) < 0), windows
  assert losses[-1] < 0.998 * losses[0]


def test_meta_param_count_matches_paper():
  # The paper's optimizer has about 8.3k meta-parameters.
  assert 8000 < hrnn.num_meta_params(THETA) < 8700


def test_odd_pytrees_shapes_and_dtypes():
  params = {
      "scalar": jnp.asarray(0.5, jnp.float32),
      "empty": jnp.zeros((0, 3), jnp.float32),
      "bf16": jnp.ones((3, 4), jnp.bfloat16),
      "nested": [jnp.ones((2,), jnp.float16), jnp.ones((5, 1, 2))],
      "count": jnp.asarray(3, jnp.int32),
  }
  grads = jax.tree_util.tree_map(
      lambda p: (jnp.ones_like(p) * 0.3 if jnp.issubdtype(p.dtype, jnp.inexact)
                 else jnp.zeros_like(p)), params)
  state = hrnn.init_state(CFG, THETA, params)
  step = jax.jit(lambda s, g: hrnn.update(CFG, THETA, s, g))
  for _ in range(3):
    ups, state = step(state, grads)
  assert jax.tree_util.tree_structure(ups) == jax.tree_util.tree_structure(
      params)
  for u, p in zip(jax.tree_util.tree_leaves(ups),
                  jax.tree_util.tree_leaves(params)):
    assert u.shape == p.shape and u.dtype == p.dtype
    assert np.all(np.isfinite(np.asarray(u, np.float32)))
  assert ups["bf16"].dtype == jnp.bfloat16
  assert np.all(np.asarray(ups["count"]) == 0)
  # A positive gradient gives a negative step on every scalar.
  assert float(ups["scalar"]) < 0
  assert np.all(np.asarray(ups["bf16"], np.float32) < 0)
  assert int(state.step) == 3


def test_mismatched_grads_raise():
  state = hrnn.init_state(CFG, THETA, {"a": jnp.ones(3)})
  with pytest.raises(ValueError, match="leaves"):
    hrnn.update(CFG, THETA, state, {"a": jnp.ones(3), "b": jnp.ones(2)})
  with pytest.raises(ValueError, match="elements"):
    hrnn.update(CFG, THETA, state, {"a": jnp.ones(4)})


def test_untrained_reduces_quadratic_loss():
  loss, params = _quadratic(jax.random.PRNGKey(3))
  losses, _, _, _ = jax.jit(
      lambda: _run(CFG, THETA, loss, params, 200))()
  _assert_steadily_decreasing(losses)


def test_untrained_reduces_logistic_regression_loss():
  kx, kw = jax.random.split(jax.random.PRNGKey(4))
  x = jax.random.normal(kx, (200, 10))
  y = (x @ jax.random.normal(kw, (10,)) > 0).astype(jnp.float32)

  def loss(p):
    logits = x @ p["w"] + p["b"]
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))

  params = {"w": jnp.zeros((10,)), "b": jnp.zeros(())}
  losses, _, _, _ = jax.jit(lambda: _run(CFG, THETA, loss, params, 200))()
  _assert_steadily_decreasing(losses)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_dynamic_input_scaling_makes_updates_scale_invariant(scale):
  loss, params = _quadratic(jax.random.PRNGKey(5))
  run = jax.jit(lambda s: _run(CFG, THETA, loss, params, 5, scale=s)[1])
  base = run(1.0)
  scaled = run(scale)
  for a, b in zip(jax.tree_util.tree_leaves(base),
                  jax.tree_util.tree_leaves(scaled)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-3,
                               atol=1e-9)
  # Without dynamic input scaling the updates do depend on the scale.
  cfg = dataclasses.replace(CFG, dynamic_input_scaling=False)
  run2 = jax.jit(lambda s: _run(cfg, THETA, loss, params, 5, scale=s)[1])
  a, b = run2(1.0)["w"], run2(scale)["w"]
  assert not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-2)


ABLATIONS = {
    "use_tensor_rnn": False,
    "use_global_rnn": False,
    "dynamic_input_scaling": False,
    "use_grad_products": False,
    "use_log_ms": False,
    "use_relative_lr": False,
    "learnable_decay": False,
    "use_gradient_shortcut": False,
    "use_attention": True,
    "num_timescales": 1,
}


@pytest.mark.parametrize("field", sorted(ABLATIONS))
def test_each_ablation_changes_behaviour_and_runs(field):
  changes = {field: ABLATIONS[field]}
  if field == "use_tensor_rnn":
    changes["use_global_rnn"] = False
  cfg = dataclasses.replace(CFG, **changes)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  loss, params = _quadratic(jax.random.PRNGKey(6))
  run = jax.jit(lambda c, t: _run(c, t, loss, params, 10)[:3],
                static_argnums=0)
  losses, ups, _ = run(cfg, theta)
  _, base_ups, _ = run(CFG, THETA)
  assert np.all(np.isfinite(np.asarray(losses)))
  assert np.all(np.isfinite(np.asarray(ups["w"])))
  assert not np.array_equal(np.asarray(ups["w"]), np.asarray(base_ups["w"]))


def test_dynamic_output_scale_off_runs():
  cfg = dataclasses.replace(CFG, dynamic_output_scale=False,
                            use_relative_lr=False)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  loss, params = _quadratic(jax.random.PRNGKey(7))
  losses, _, _, state = jax.jit(lambda: _run(cfg, theta, loss, params, 20))()
  assert np.all(np.isfinite(np.asarray(losses)))
  assert state.log_lr.shape == (0,)


def test_invalid_config_is_rejected():
  with pytest.raises(ValueError, match="use_relative_lr needs"):
    HRNNConfig(dynamic_output_scale=False)
  with pytest.raises(ValueError, match="use_global_rnn needs"):
    HRNNConfig(use_tensor_rnn=False)
  with pytest.raises(ValueError, match="init_lr_range"):
    HRNNConfig(init_lr_range=(1e-2, 1e-6))


def test_attention_keeps_true_params_in_state():
  cfg = dataclasses.replace(CFG, use_attention=True)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  loss, params = _quadratic(jax.random.PRNGKey(8))
  state = hrnn.init_state(cfg, theta, params)
  with pytest.raises(ValueError, match="needs `params`"):
    hrnn.update(cfg, theta, state, params)
  losses, _, p, s = jax.jit(lambda: _run(cfg, theta, loss, params, 50))()
  true = hrnn.true_params(s, p)
  # The optimizer's params are the attended point, not the true params.
  assert not np.allclose(np.asarray(true["w"]), np.asarray(p["w"]))
  assert float(loss(true)) < float(loss(params))


def _unroll_meta_loss(cfg, theta, steps=20):
  loss, params = _quadratic(jax.random.PRNGKey(9), dim=4)
  params = jax.tree_util.tree_map(lambda x: x.astype(theta["w_update"].dtype),
                                  params)
  losses, _, _, _ = _run(cfg, theta, loss, params, steps,
                         key=jax.random.PRNGKey(1))
  return jnp.mean(jnp.log(losses[1:] / losses[0] + 1e-6))


def test_jit_vmap_grad_through_unroll_are_finite():
  def task_meta_loss(theta, key):
    loss, params = _quadratic(key, dim=4)
    losses, _, _, _ = _run(CFG, theta, loss, params, 20)
    return jnp.mean(jnp.log(losses / losses[0] + 1e-6))

  keys = jax.random.split(jax.random.PRNGKey(10), 3)
  batched = jax.jit(jax.value_and_grad(
      lambda th: jnp.mean(jax.vmap(task_meta_loss, (None, 0))(th, keys))))
  value, grads = batched(THETA)
  assert np.isfinite(float(value))
  flat = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in flat)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in flat) > 0
  # vmap over tasks equals a Python loop over tasks.
  looped = [float(jax.jit(task_meta_loss)(THETA, k)) for k in keys]
  np.testing.assert_allclose(float(value), np.mean(looped), rtol=1e-5)


def test_meta_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    theta = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), THETA)
    f = jax.jit(lambda th: _unroll_meta_loss(CFG, th))
    g = jax.jit(jax.grad(lambda th: _unroll_meta_loss(CFG, th)))(theta)
    rng = np.random.default_rng(0)
    direction = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.normal(size=x.shape)), theta)
    eps = 1e-5
    plus = jax.tree_util.tree_map(lambda t, d: t + eps * d, theta, direction)
    minus = jax.tree_util.tree_map(lambda t, d: t - eps * d, theta, direction)
    fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
    analytic = sum(float(jnp.vdot(a, d)) for a, d in zip(
        jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(direction)))
    assert abs(fd) > 1e-6
    np.testing.assert_allclose(analytic, fd, rtol=1e-4)


def test_state_bytes_per_param():
  params = {"w": jnp.zeros((1000, 100))}
  state = hrnn.init_state(CFG, THETA, params)
  # 10 hidden + 4 averages + 4 mean squares + 2 decays + 1 log-lr floats.
  assert hrnn.state_bytes_per_param(state) == pytest.approx(21 * 4, rel=0.01)
