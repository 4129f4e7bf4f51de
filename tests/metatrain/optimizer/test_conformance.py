"""The learned optimizer follows optax's conventions (issue 23, item 7).

A learning rate (float, schedule, ``inject_hyperparams``), ``tree_map_params``
and ``tree_get(state, "count")`` on its state, stable dtypes under float64,
a clear refusal of complex params, and the fixed-global-step config.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metatrain
from metatrain.optimizer import hrnn

CFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), CFG)
TARGET = jnp.arange(6.0).reshape(2, 3)


def _loss(p):
  return jnp.sum((p["w"] - TARGET) ** 2) + jnp.sum(jnp.sin(p["b"]))


def _params():
  return {"w": jnp.zeros((2, 3)), "b": jnp.linspace(-1.0, 1.0, 5)}


def _updates(tx, steps, params=None):
  """The update of every step of ``tx`` on ``_loss`` (a list of pytrees)."""
  p = _params() if params is None else params
  state = tx.init(p)
  out = []
  for _ in range(steps):
    u, state = tx.update(jax.grad(_loss)(p), state, p)
    out.append(u)
    p = optax.apply_updates(p, u)
  return out, state


def _close(a, b, rtol=1e-5, atol=1e-10):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def test_a_schedule_scales_the_step_as_adams_does():
  # The untrained optimizer is Adam(init_lr), so under a schedule it must
  # be optax.adam(schedule), step by step.
  sched = optax.linear_schedule(3e-3, 1e-4, transition_steps=10)
  ours, _ = _updates(metatrain.hrnn_optax(CFG, THETA, learning_rate=sched), 12)
  adam, _ = _updates(optax.adam(sched), 12)
  _close(ours, adam)


def test_inject_hyperparams_sets_and_changes_the_rate():
  factory = lambda learning_rate: metatrain.hrnn_optax(
      CFG, THETA, learning_rate=learning_rate)
  tx = optax.inject_hyperparams(factory)(learning_rate=2e-3)
  p = _params()
  state = tx.init(p)
  g = jax.grad(_loss)(p)
  u1, state = jax.jit(tx.update)(g, state, p)
  _close(u1, _updates(optax.adam(2e-3), 1)[0][0])
  state.hyperparams["learning_rate"] = jnp.asarray(5e-4)
  p2 = optax.apply_updates(p, u1)
  u2, _ = jax.jit(tx.update)(jax.grad(_loss)(p2), state, p2)
  adam = optax.adam(2e-3)
  a_state = adam.init(p)
  a1, a_state = adam.update(g, a_state, p)
  a2, _ = adam.update(jax.grad(_loss)(p2), a_state, p2)  # Adam's rate 2e-3
  _close(u2, jax.tree_util.tree_map(lambda x: x * 0.25, a2))


def test_pretrained_takes_a_rate_and_works_under_inject_hyperparams():
  base, _ = _updates(metatrain.pretrained(), 3)
  double, _ = _updates(metatrain.pretrained(learning_rate=2e-3), 1)
  _close(double[0], jax.tree_util.tree_map(lambda x: 2 * x, base[0]))
  tx = optax.inject_hyperparams(metatrain.pretrained)(learning_rate=1e-3)
  injected, _ = _updates(tx, 3)
  _close(injected, base)


@pytest.mark.parametrize("attention", [False, True])
def test_tree_map_params_maps_the_params_shaped_part(attention):
  cfg = dataclasses.replace(CFG, use_attention=attention)
  tx = metatrain.hrnn_optax(cfg, hrnn.init_theta(jax.random.PRNGKey(0), cfg))
  _, state = _updates(tx, 2)
  specs = optax.tree_utils.tree_map_params(
      tx, lambda p: ("spec", p.shape), state,
      transform_non_params=lambda _: None)
  assert specs.h is None and specs.count is None
  if attention:
    assert specs.true_params == {"w": ("spec", (2, 3)), "b": ("spec", (5,))}
  else:
    assert specs.true_params is None


def test_count_is_reachable_by_tree_get():
  _, state = _updates(metatrain.hrnn_optax(CFG, THETA), 4)
  assert int(optax.tree_utils.tree_get(state, "count")) == 4
  chained = optax.chain(optax.clip(1.0), metatrain.hrnn_optax(CFG, THETA))
  _, state = _updates(chained, 3)
  assert int(optax.tree_utils.tree_get(state, "count")) == 3


def test_state_dtypes_are_stable_under_float64():
  with jax.enable_x64(True):
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64),
                                    _params())
    tx = metatrain.hrnn_optax(CFG, THETA, kernel=False)
    state = tx.init(params)
    before = jax.tree_util.tree_map(lambda x: x.dtype, state)
    g = jax.grad(_loss)(params)
    _, new = tx.update(g, state, params)
    assert jax.tree_util.tree_map(lambda x: x.dtype, new) == before
    # So lax.cond-based wrappers (a skipped step keeps the old state) work.
    skip = optax.apply_if_finite(tx, max_consecutive_errors=3)
    s = skip.init(params)
    s, _ = jax.jit(lambda s: skip.update(g, s, params)[::-1])(s)
    assert int(optax.tree_utils.tree_get(s, "count")) == 1


def test_complex_params_are_refused_with_a_clear_error():
  tx = metatrain.hrnn_optax(CFG, THETA)
  with pytest.raises(TypeError, match="split_real_and_imaginary"):
    tx.init({"z": jnp.ones(3, jnp.complex64)})
  # The suggested wrapper works.
  split = optax.contrib.split_real_and_imaginary(tx)
  z = {"z": jnp.full((3,), 1 + 2j, jnp.complex64)}
  u, _ = split.update(z, split.init(z), z)
  assert u["z"].dtype == jnp.complex64
  assert np.all(np.real(np.asarray(u["z"])) < 0)
  assert np.all(np.imag(np.asarray(u["z"])) < 0)


FIXED = dataclasses.replace(CFG, global_step="fixed")


def _trained_like(cfg, b_lr):
  """A theta whose learned parts are far from zero (not Adam any more)."""
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  k1, k2 = jax.random.split(jax.random.PRNGKey(5))
  theta["w_update"] = 0.5 * jax.random.normal(k1, theta["w_update"].shape)
  theta["w_lr"] = 0.3 * jax.random.normal(k2, theta["w_lr"].shape)
  theta["b_lr"] = jnp.asarray(b_lr)
  theta["stepsize_offset"] = jnp.asarray(1.5)
  return theta


def _rms(tree):
  leaves = jax.tree_util.tree_leaves(tree)
  return float(np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in leaves) /
                       sum(np.size(x) for x in leaves)))


def test_fixed_global_step_untrained_is_adam():
  ours, _ = _updates(metatrain.hrnn_optax(FIXED, hrnn.init_theta(
      jax.random.PRNGKey(0), FIXED), learning_rate=3e-3), 10)
  _close(ours, _updates(optax.adam(3e-3), 10)[0])


def test_fixed_global_step_has_adams_rms_whatever_theta_says():
  adam, _ = _updates(optax.adam(2e-3), 1)
  for b_lr in (-0.8, 0.0, 0.8):
    theta = _trained_like(FIXED, b_lr)
    ours, _ = _updates(metatrain.hrnn_optax(FIXED, theta, learning_rate=2e-3),
                       1)
    assert _rms(ours[0]) == pytest.approx(_rms(adam[0]), rel=1e-5)
    # ... while the learned parts change where the step goes.
    assert not np.allclose(np.asarray(ours[0]["w"]),
                           np.asarray(adam[0]["w"]), rtol=1e-2)
  # With the learned global step, the same thetas move its size.
  sizes = [_rms(_updates(metatrain.hrnn_optax(CFG, _trained_like(CFG, b)),
                         1)[0][0]) for b in (-0.8, 0.8)]
  assert sizes[1] > 2 * sizes[0]


CAPPED = dataclasses.replace(CFG, global_step="capped")


def test_capped_global_step_untrained_is_adam():
  ours, _ = _updates(metatrain.hrnn_optax(CAPPED, hrnn.init_theta(
      jax.random.PRNGKey(0), CAPPED), learning_rate=3e-3), 10)
  _close(ours, _updates(optax.adam(3e-3), 10)[0])


def test_capped_global_step_keeps_smaller_steps_and_caps_larger_ones():
  # The user's rate is a ceiling: a learned step larger than Adam's at the
  # rate is scaled to Adam's RMS; a smaller one is the learned step itself.
  adam = _rms(_updates(optax.adam(2e-3), 1)[0][0])
  sides = set()
  for b_lr in (-3.0, -0.8, 0.8):
    theta = _trained_like(CAPPED, b_lr)
    learned, _ = _updates(metatrain.hrnn_optax(CFG, theta,
                                               learning_rate=2e-3), 1)
    capped, _ = _updates(metatrain.hrnn_optax(CAPPED, theta,
                                              learning_rate=2e-3), 1)
    if _rms(learned[0]) > adam:
      sides.add("capped")
      assert _rms(capped[0]) == pytest.approx(adam, rel=1e-5)
      # Scaled, not redirected: the same direction as the learned step.
      np.testing.assert_allclose(
          np.asarray(capped[0]["w"]) * _rms(learned[0]) / adam,
          np.asarray(learned[0]["w"]), rtol=1e-4, atol=1e-9)
    else:
      sides.add("kept")
      _close(capped, learned)
  assert sides == {"capped", "kept"}


def test_fixed_global_step_needs_nominal_adam():
  with pytest.raises(ValueError, match="global_step='fixed' needs"):
    hrnn.HRNNConfig.paper(global_step="fixed")
  with pytest.raises(ValueError, match="global_step='capped' needs"):
    hrnn.HRNNConfig.paper(global_step="capped")
  with pytest.raises(ValueError, match="global_step must be"):
    hrnn.HRNNConfig(global_step="auto")
