"""The Norm family: the reference's p-norm of a random linear residual."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain.tasks import TaskConfig, build_task, norm


def _task(dim=5, noise=0.0):
  return build_task(TaskConfig("norm", (("dim", dim), ("noise", noise))))


def _numpy_norm(w, x, y, p):
  """The reference objective in float64 and its gradient in x."""
  r = w @ x - y
  a = np.abs(r) + norm.EPSILON
  s = np.sum(a ** p)
  grad = w.T @ (np.sign(r) * a ** (p - 1)) * s ** (1 / p - 1)
  return s ** (1 / p), grad


def test_norm_matches_numpy_reference():
  task = _task(dim=5)
  init = jax.jit(jax.vmap(task.init))
  loss_and_grad = jax.jit(jax.vmap(task.loss_and_grad))
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  params, data = init(keys)
  losses, grads = loss_and_grad(params, data, keys)
  for i in range(len(keys)):
    w, y, p = (np.asarray(data[k][i], np.float64) for k in ("w", "y", "p"))
    x = np.asarray(params["x"][i], np.float64)
    assert w.shape == (5, 5) and y.shape == (5,) and p.shape == ()
    f, g = _numpy_norm(w, x, y, float(p))
    assert float(losses[i]) == pytest.approx(f, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grads["x"][i]), g, rtol=1e-4,
                               atol=1e-5)
  # p is drawn per instance, uniform in [1, 3]; W, y and x are N(0, 1).
  ps = np.asarray(init(jax.random.split(jax.random.PRNGKey(1), 500))[1]["p"])
  assert ps.min() >= 1.0 and ps.max() <= 3.0
  assert abs(ps.mean() - 2.0) < 0.1 and ps.std() > 0.5


def test_norm_special_powers_and_no_overflow():
  r = jnp.array([3.0, -4.0, 0.0])
  assert float(norm.p_norm(r, 2.0)) == pytest.approx(5.0, rel=1e-5)
  assert float(norm.p_norm(r, 1.0)) == pytest.approx(7.0, rel=1e-5)
  # A diverging optimizer's residuals: naive |r|^3 would overflow float32.
  big = jnp.array([1e30, -2e30, 3.0])
  val, grad = jax.value_and_grad(norm.p_norm)(big, 3.0)
  ref = (1.0 + 8.0) ** (1 / 3) * 1e30
  assert float(val) == pytest.approx(ref, rel=1e-5)
  assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(np.asarray(grad)[:2],
                             [9 ** (-2 / 3), -4 * 9 ** (-2 / 3)],
                             rtol=1e-4)


def test_noisy_norm_perturbs_gradients_only():
  clean, noisy = _task(dim=6), _task(dim=6, noise=0.1)
  params, data = clean.init(jax.random.PRNGKey(2))
  key = jax.random.PRNGKey(3)
  l0, g0 = clean.loss_and_grad(params, data, key)
  l1, g1 = noisy.loss_and_grad(params, data, key)
  assert float(l0) == pytest.approx(float(l1))
  diff = np.asarray(g1["x"] - g0["x"])
  assert 0 < np.abs(diff).max() < 0.5
  assert float(noisy.full_loss(params, data)) == pytest.approx(float(l0))
