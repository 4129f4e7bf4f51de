"""Buckets: one compiled program per shape key, hyperparameters as inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain import tasks
from metatrain.tasks import Bucket, TaskConfig, buckets, sum_slots

KEY = jax.random.PRNGKey(7)


def _structure(hp):
  return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), hp)


def test_every_sampled_config_has_a_bucket_shared_by_its_samples():
  ens = tasks.default_ensemble()
  rng = np.random.default_rng(0)
  seen = {}
  for _ in range(300):
    tc = ens.sample(rng)
    bucket, hp = tasks.split(tc)
    assert isinstance(bucket, Bucket), tc.name
    # Every config of a bucket feeds the program the same inputs.
    assert seen.setdefault(bucket, _structure(hp)) == _structure(hp), tc.name
  # The default ensemble's configs fall in few buckets (the old sampler
  # made one program per config and truncation-length bucket).
  assert 25 <= len(seen) <= 40, sorted(b.name for b in seen)


# Families whose bucket builds the exact task: same params, same loss.
EXACT = [
    TaskConfig("quadratic", (("dim", 20), ("noise", 0.5))),
    TaskConfig("large_quadratic", (("dim", 784), ("log10_cond", 3.0))),
    TaskConfig("bowl", (("cond", 5.0), ("angle", 0.785), ("noise", 0.1))),
    TaskConfig("sparse_bowl", (("cond", 0.1), ("angle", 0.0), ("copies", 16),
                               ("p", 0.99))),
    TaskConfig("fn2d", (("fn", "rosenbrock"), ("noise", 1.0))),
    TaskConfig("fn2d", (("fn", "logsumexp"), ("noise", 0.0))),
    TaskConfig("norm", (("dim", 22), ("noise", 0.1))),
    TaskConfig("logistic", (("dim", 10), ("sep", 1.5), ("batch", 32),
                            ("noise", 0.0))),
    TaskConfig("quadratic", (("dim", 25), ("noise", 0.0)),
               (("rescale", (("scale", 30.0),)), ("param_scale", ()),
                ("log_objective", ()))),
]


@pytest.mark.parametrize("tc", EXACT, ids=lambda t: t.name)
def test_a_bucket_builds_the_exact_task_where_nothing_is_padded(tc):
  exact = tasks.build_task(tc)
  bucket, hp = tasks.split(tc)
  task = tasks.build_bucket(bucket, hp)
  p0, d0 = exact.init(KEY)
  p1, d1 = task.init(KEY)
  for a, b in zip(jax.tree_util.tree_leaves(p0), jax.tree_util.tree_leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(task.full_loss(p1, d1), exact.full_loss(p0, d0),
                             rtol=1e-5)


def test_hyperparameters_change_the_losses_not_the_program():
  a = TaskConfig("bowl", (("cond", 5.0), ("angle", 0.0), ("noise", 0.0)))
  b = TaskConfig("bowl", (("cond", 0.1), ("angle", 0.785), ("noise", 0.5)),
                 (("log_objective", ()),))
  (ba, ha), (bb, hb) = tasks.split(a), tasks.split(b)
  assert ba == bb and _structure(ha) == _structure(hb)
  traces = []

  @jax.jit
  def loss(hp):
    traces.append(1)
    task = tasks.build_bucket(ba, hp)
    params, data = task.init(KEY)
    return task.full_loss(params, data)

  la, lb = float(loss(ha)), float(loss(hb))
  assert len(traces) == 1  # one program for both samples
  x = tasks.build_task(a).init(KEY)[0]["x"]
  np.testing.assert_allclose(la, 0.5 * (5.0 * x[0] ** 2 + x[1] ** 2),
                             rtol=1e-5)
  xb = tasks.build_task(b).init(KEY)[0]
  np.testing.assert_allclose(lb, tasks.build_task(b).full_loss(xb, {}),
                             rtol=1e-5)
  assert la != lb


def _masked_zero(grads, params_pad, keep):
  """Gradient entries outside ``keep`` (a dict of boolean masks) are 0."""
  for k, g in grads.items():
    assert np.all(np.asarray(g)[~keep[k]] == 0), k
    assert np.all(np.asarray(params_pad[k])[~keep[k]] == 0), k


def test_a_padded_mlp_is_the_mlp_and_its_padding_gets_no_gradient():
  tc = TaskConfig("mlp", (("dim", 5), ("hidden", (4, 16)), ("act", "tanh"),
                          ("batch", 20)))
  bucket, hp = tasks.split(tc)
  assert bucket.get("pad_hidden") == (8, 32) and bucket.get("pad_dim") == 12
  task = tasks.build_bucket(bucket, hp)
  params, data = task.init(KEY)
  # The same weights in the unpadded MLP give the same loss.
  real = {"w0": params["w0"][:5, :4], "b0": params["b0"][:4],
          "w1": params["w1"][:4, :16], "b1": params["b1"][:16],
          "w2": params["w2"][:16], "b2": params["b2"]}
  exact = tasks.build_task(tc)
  exact_data = {"x": data["task"]["x"][:, :5], "y": data["task"]["y"]}
  np.testing.assert_allclose(exact.full_loss(real, exact_data),
                             task.full_loss(params, data), rtol=1e-5)
  grads = jax.grad(task.full_loss)(params, data)
  keep = {k: np.zeros(v.shape, bool) for k, v in params.items()}
  keep["w0"][:5, :4] = keep["b0"][:4] = True
  keep["w1"][:4, :16] = keep["b1"][:16] = True
  keep["w2"][:16] = keep["b2"][:] = True
  _masked_zero(grads, params, keep)
  assert np.all(np.asarray(grads["w1"])[:4, :16] != 0)


def test_a_padded_matmul_is_the_matmul_and_its_padding_gets_no_gradient():
  tc = TaskConfig("matmul_algorithm", (("n", 2), ("k", 6), ("batch", 8)))
  bucket, hp = tasks.split(tc)
  task = tasks.build_bucket(bucket, hp)
  params, data = task.init(KEY)
  real = {"u": params["u"][:6], "v": params["v"][:6], "w": params["w"][:, :6]}
  exact = tasks.build_task(tc)
  np.testing.assert_allclose(exact.full_loss(real, {}),
                             task.full_loss(params, data), rtol=1e-5)
  grads = jax.grad(task.loss)(params, data, KEY)
  keep = {"u": np.arange(8)[:, None] < 6 + np.zeros((1, 4), int),
          "v": np.arange(8)[:, None] < 6 + np.zeros((1, 4), int),
          "w": np.arange(8)[None, :] < 6 + np.zeros((4, 1), int)}
  _masked_zero(grads, params, keep)


def test_a_sum_bucket_is_the_sum_with_its_parts_in_uniform_slots():
  parts = (TaskConfig("bowl", (("cond", 5.0), ("angle", 0.785),
                               ("noise", 0.0))),
           TaskConfig("fn2d", (("fn", "booth"), ("noise", 0.0))),
           TaskConfig("norm", (("dim", 18), ("noise", 0.0))),
           TaskConfig("quadratic", (("dim", 7), ("noise", 0.0))))
  tc = TaskConfig("sum", (("parts", parts),))
  bucket, hp = tasks.split(tc)
  assert bucket == Bucket("sum", (("parts", 4),
                                  ("slot_dim", sum_slots.SLOT_DIM)))
  task = tasks.build_bucket(bucket, hp)
  params, data = task.init(KEY)
  exact = tasks.build_task(tc)
  # The exact parts at the slots' values: the same sum.
  p, d = {}, {}
  for name, part, size in zip("abcd", parts, (2, 2, 18, 7)):
    p[name] = {"x": params[name]["x"][:size]}
    slot = data["task"][name]
    if part.family == "norm":
      d[name] = {"w": slot["w"][:18, :18], "y": slot["y"][:18],
                 "p": slot["p"]}
    elif part.family == "quadratic":
      d[name] = {"w": slot["w"][:7, :7], "y": slot["y"][:7]}
    else:
      d[name] = {}
  np.testing.assert_allclose(exact.full_loss(p, d),
                             task.full_loss(params, data), rtol=1e-5)
  grads = jax.grad(task.full_loss)(params, data)
  for name, size in zip("abcd", (2, 2, 18, 7)):
    g = np.asarray(grads[name]["x"])
    assert np.all(g[size:] == 0) and np.any(g[:size] != 0), name
    assert np.all(np.asarray(params[name]["x"])[size:] == 0), name


def test_transform_switches_are_off_where_the_sample_has_none():
  tc = TaskConfig("quadratic", (("dim", 20), ("noise", 0.0)),
                  (("gradient_noise", (("stdev", 0.3),)),
                   ("sparse", (("p", 0.99),))))
  _, hp = tasks.split(tc)
  assert {k: float(v) for k, v in hp["transforms"].items()} == pytest.approx(
      {"rescale": 1.0, "param_scale": 0.0, "log_objective": 0.0,
       "gradient_noise": 0.3, "sparse": 0.99})
  # With every switch off, a bucket's gradient is the task's own.
  clean = TaskConfig("quadratic", (("dim", 20), ("noise", 0.0)))
  task = tasks.build_bucket(*tasks.split(clean))
  params, data = task.init(KEY)
  _, g = task.loss_and_grad(params, data, KEY)
  ref = jax.grad(tasks.build_task(clean).full_loss)(params, data["task"])
  np.testing.assert_allclose(g["x"], ref["x"], rtol=1e-6)


def test_a_bucket_needs_its_hyperparameters():
  bucket, _ = tasks.split(EXACT[0])
  with pytest.raises(ValueError, match="needs its hyperparameters"):
    buckets.make_task(bucket)
  assert jnp.ndim(tasks.split(EXACT[0])[1]["task"]["noise"]) == 0
