"""The new families and transforms: param_scale, sums of 2-11 parts."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain import tasks
from metatrain.tasks import TaskConfig, build_task, transforms


def _cfg(family, transforms_=(), **params):
  return TaskConfig(family, tuple(params.items()), transforms_)


MLP = _cfg("mlp", dim=5, hidden=(4,), act="tanh", batch=20)  # 4 tensors
BOWLS = _cfg("sum", parts=(_cfg("bowl", cond=1.0, angle=0.0, noise=0.0),
                           _cfg("bowl", cond=5.0, angle=0.0, noise=0.0)))
SUM11 = _cfg("sum", parts=tuple(
    [_cfg("fn2d", fn=f, noise=n) for f, n in (
        ("rosenbrock", 0.0), ("ackley", 1.0), ("beale", 0.0),
        ("styblinski_tang", 0.0), ("logsumexp", 1.0))] +
    [_cfg("norm", dim=18, noise=0.1), _cfg("norm", dim=22, noise=0.0),
     _cfg("bowl", cond=0.1, angle=math.pi / 4, noise=0.1),
     _cfg("quadratic", dim=3, noise=0.0), _cfg("quadratic", dim=13, noise=1.0),
     _cfg("quadratic", dim=7, noise=0.0)]))
PARAM_SCALE = (("param_scale", ()),)
# Every new family and transform, at sizes the ensemble samples.
NEW = [
    _cfg("norm", dim=27, noise=0.1),
    BOWLS,
    _cfg("sparse_bowl", cond=0.1, angle=0.0, copies=64, p=0.99),
    SUM11,
    TaskConfig(MLP.family, MLP.params, PARAM_SCALE),
    TaskConfig("sum", (("parts", SUM11.get("parts")[3:8]),),
               (("rescale", (("scale", 10.0),)),) +
               PARAM_SCALE + (("log_objective", ()),
                              ("gradient_noise", (("stdev", 0.1),)),
                              ("sparse", (("p", 0.99),)))),
]


@pytest.mark.parametrize("cfg", NEW, ids=lambda c: c.name)
def test_new_tasks_jit_vmap_finite_and_nonnegative(cfg):
  task = build_task(cfg)

  @jax.jit
  @jax.vmap
  def run(key):
    params, data = task.init(key)
    loss, grads = task.loss_and_grad(params, data, key)
    # Far from the init as well (a diverging optimizer's params).
    far = jax.tree_util.tree_map(lambda p, z: p + 10 * z * (1 + jnp.abs(p)),
                                 params, tasks.base.tree_random_like(
                                     jax.random.fold_in(key, 1), params))
    return (params, grads, (loss, task.loss(params, data, key)),
            jax.grad(task.loss)(params, data, key), task.full_loss(params, data),
            task.loss(far, data, key), task.full_loss(far, data))

  params, grads, (loss, plain), autodiff, *losses = run(
      jax.random.split(jax.random.PRNGKey(0), 3))
  # loss_and_grad is the loss and its gradient, except where the task or a
  # transform makes the gradient noisy or sparse on purpose.
  np.testing.assert_allclose(np.asarray(loss), np.asarray(plain), rtol=1e-6)
  if not re.search(r"noise=(?!0[,)])|sparse|gradient_noise", cfg.name):
    for g, a in zip(jax.tree_util.tree_leaves(grads),
                    jax.tree_util.tree_leaves(autodiff)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(a), rtol=1e-4,
                                 atol=1e-6 * float(np.max(np.abs(a)) + 1))
  for value in [loss] + losses:
    value = np.asarray(value)
    assert value.shape == (3,) and np.all(np.isfinite(value)), cfg.name
    assert np.all(value >= 0), cfg.name
  assert (jax.tree_util.tree_structure(params) ==
          jax.tree_util.tree_structure(grads))
  for p, g in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(grads)):
    assert p.shape == g.shape and p.dtype == g.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(g)))
  flat = np.concatenate([np.asarray(p).reshape(3, -1)
                         for p in jax.tree_util.tree_leaves(params)], 1)
  assert not np.allclose(flat[0], flat[1])  # one instance per seed


def test_param_scale_reparameterizes_each_tensor():
  base = build_task(MLP)
  scaled = build_task(TaskConfig(MLP.family, MLP.params, PARAM_SCALE))

  @jax.jit
  def run(key):
    params, data = base.init(key)
    q, sdata = scaled.init(key)
    return ((params, data, base.loss_and_grad(params, data, key),
             base.full_loss(params, data)),
            (q, sdata, scaled.loss_and_grad(q, sdata, key),
             scaled.full_loss(q, sdata), scaled.loss(q, sdata, key),
             jax.grad(scaled.loss)(q, sdata, key)))

  ((params, data, (l0, g0), f0),
   (q, sdata, (l1, g1), f1, l1_plain, g_auto)) = run(jax.random.PRNGKey(5))
  for a, b in zip(jax.tree_util.tree_leaves(sdata["task"]),
                  jax.tree_util.tree_leaves(data)):  # the same instance
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  s = {k: float(v) for k, v in sdata["scale"].items()}
  assert set(s) == set(params) and len(set(s.values())) == len(s)
  assert all(1e-3 <= v <= 1e3 for v in s.values())
  for k in params:  # the optimizer sees p' = p / s
    np.testing.assert_allclose(np.asarray(q[k]) * s[k],
                               np.asarray(params[k]), rtol=1e-5, atol=1e-7)
  for value in (l1, l1_plain):  # loss(p') is the base loss at p = s p'
    assert float(value) == pytest.approx(float(l0), rel=1e-5)
  assert float(f1) == pytest.approx(float(f0), rel=1e-5)
  for k in params:  # and gradients are s times the base task's
    np.testing.assert_allclose(np.asarray(g1[k]), s[k] * np.asarray(g0[k]),
                               rtol=1e-4, atol=1e-6 * s[k])
    np.testing.assert_allclose(np.asarray(g_auto[k]), np.asarray(g1[k]),
                               rtol=1e-4, atol=1e-6 * s[k])


def test_param_scales_are_log_uniform_and_independent():
  task = build_task(TaskConfig(BOWLS.family, BOWLS.params, PARAM_SCALE))
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  scales = jax.jit(jax.vmap(task.init))(keys)[1]["scale"]
  logs = np.log10(np.stack([np.asarray(scales[k]["x"]) for k in ("a", "b")]))
  lo, hi = np.log10(transforms.PARAM_SCALE_RANGE)
  assert logs.min() >= lo - 1e-5 and logs.max() <= hi + 1e-5
  assert logs.min() < lo + 0.05 and logs.max() > hi - 0.05
  for row in logs:  # uniform in log10 s over [-3, 3]
    assert abs(row.mean()) < 0.15 and abs(row.std() - 6 / math.sqrt(12)) < 0.1
  assert abs(np.corrcoef(logs)[0, 1]) < 0.1  # one scale per tensor


def test_sum_part_counts_and_parts():
  fam = tasks.FAMILIES["sum"]
  rng = np.random.default_rng(0)
  counts, families, dims = set(), set(), set()
  for _ in range(300):
    cfg = fam.sample(rng)
    parts = cfg.get("parts")
    counts.add(len(parts))
    for p in parts:
      assert isinstance(p, TaskConfig) and not p.transforms
      families.add(p.family)
      if p.family == "quadratic":
        dims.add(p.get("dim"))
  assert counts == set(transforms.SUM_PARTS) == {2, 3, 5, 8, 11}
  assert families == set(tasks.registry.SUM_PART_FAMILIES)
  assert dims == set(range(3, 14))
  assert "2/3/5/8/11" in fam.description


def test_sum_keeps_the_parts_in_order():
  task = build_task(SUM11)
  params, data = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  assert list(params) == list("abcdefghijk")
  sizes = [sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(p))
           for p in params.values()]
  assert sizes == [2] * 5 + [18, 22, 2, 3, 13, 7]
  # A 2-part sum is what it was: parts "a" and "b", the same instances.
  two = build_task(BOWLS)
  key = jax.random.PRNGKey(3)
  p, _ = two.init(key)
  ka, kb = jax.random.split(key)
  for k, sub, part in (("a", ka, 0), ("b", kb, 1)):
    ref, _ = build_task(BOWLS.get("parts")[part]).init(sub)
    np.testing.assert_array_equal(np.asarray(p[k]["x"]), np.asarray(ref["x"]))
  with pytest.raises(ValueError, match="1 to 26 parts"):
    build_task(_cfg("sum", parts=()))
