"""Every family and transform: finite non-negative losses that Adam reduces."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatrain import tasks
from metatrain.tasks import TaskConfig, build_task

# Small configs of every family (and every 2-D function), fast to compile.
SMALL = [
    TaskConfig("quadratic", (("dim", 10), ("noise", 0.5))),
    TaskConfig("large_quadratic", (("dim", 784), ("log10_cond", 2.0))),
    TaskConfig("bowl", (("cond", 5.0), ("angle", np.pi / 4), ("noise", 0.0))),
    TaskConfig("logistic", (("dim", 10), ("batch", 32), ("noise", 0.5))),
    TaskConfig("mlp", (("dim", 5), ("hidden", (8,)), ("act", "tanh"),
                       ("batch", 32))),
    TaskConfig("matmul_algorithm", (("n", 2), ("k", 8))),
    TaskConfig("sum", (("parts", (
        TaskConfig("quadratic", (("dim", 5), ("noise", 0.0))),
        TaskConfig("fn2d", (("fn", "booth"), ("noise", 0.0))))),)),
] + [TaskConfig("fn2d", (("fn", f), ("noise", 0.0)))
     for f in sorted(tasks.functions2d.FUNCTIONS)]

BASE = TaskConfig("quadratic", (("dim", 8), ("noise", 0.0)))
TRANSFORMED = [
    TaskConfig(BASE.family, BASE.params, (("gradient_noise", (("stdev", 0.1),)),)),
    TaskConfig(BASE.family, BASE.params, (("rescale", (("scale", 10.0),)),)),
    TaskConfig(BASE.family, BASE.params, (("sparse", (("p", 0.99),)),)),
    TaskConfig(BASE.family, BASE.params, (("log_objective", ()),)),
]
# Adam learning rates per family that make 150 steps a fair test.
LR = {"fn2d": 0.05, "bowl": 0.05, "matmul_algorithm": 0.01, "mlp": 0.01,
      "rescale": 0.01}


def _adam_curve(cfg, steps=150, lr=None):
  task = build_task(cfg)
  name = cfg.transforms[0][0] if cfg.transforms else cfg.family
  tx = optax.adam(lr or LR.get(name, 0.03))

  @jax.jit
  def run(key):
    params, data = task.init(key)
    f0 = task.full_loss(params, data)

    def body(carry, k):
      p, s = carry
      loss, g = task.loss_and_grad(p, data, k)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss

    (p, _), losses = jax.lax.scan(body, (params, tx.init(params)),
                                  jax.random.split(key, steps))
    return f0, task.full_loss(p, data), losses

  return run(jax.random.PRNGKey(0))


@pytest.mark.parametrize("cfg", SMALL + TRANSFORMED, ids=lambda c: c.name)
def test_finite_nonnegative_and_adam_reduces(cfg):
  f0, f1, losses = _adam_curve(cfg)
  assert np.all(np.isfinite(losses)) and np.all(np.asarray(losses) >= 0)
  assert float(f0) >= 0 and np.isfinite(float(f0))
  assert float(f1) < float(f0), (cfg.name, float(f0), float(f1))


def test_every_family_samples_and_builds():
  rng = np.random.default_rng(0)
  for name, fam in tasks.FAMILIES.items():
    cfg = fam.sample(rng)
    assert cfg.family == name
    task = build_task(cfg)
    p1, d1 = task.init(jax.random.PRNGKey(1))
    p2, d2 = task.init(jax.random.PRNGKey(2))
    assert (jax.tree_util.tree_map(jnp.shape, (p1, d1)) ==
            jax.tree_util.tree_map(jnp.shape, (p2, d2)))


def test_vmap_over_seeds_equals_python_loop():
  task = build_task(TaskConfig("logistic", (("dim", 10), ("batch", 16),
                                            ("noise", 0.0))))
  keys = jax.random.split(jax.random.PRNGKey(3), 4)

  def f(k):
    p, d = task.init(k)
    return task.loss(p, d, k), task.full_loss(p, d)

  batched = jax.vmap(f)(keys)
  looped = [f(k) for k in keys]
  np.testing.assert_allclose(np.asarray(batched[0]),
                             [float(a) for a, _ in looped], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(batched[1]),
                             [float(b) for _, b in looped], rtol=1e-5)


def test_transforms_do_what_they_say():
  key = jax.random.PRNGKey(4)
  base = build_task(BASE)
  params, data = base.init(key)
  l0, g0 = base.loss_and_grad(params, data, key)
  noisy = build_task(TRANSFORMED[0])
  l1, g1 = noisy.loss_and_grad(params, data, key)
  assert float(l1) == pytest.approx(float(l0))
  assert not np.allclose(np.asarray(g1["x"]), np.asarray(g0["x"]))
  big = build_task(TaskConfig("quadratic", (("dim", 2000), ("noise", 0.0)),
                              (("sparse", (("p", 0.99),)),)))
  bp, bd = big.init(key)
  _, g = big.loss_and_grad(bp, bd, key)
  frac_zero = float(jnp.mean(g["x"] == 0))
  assert 0.98 < frac_zero < 0.999
  resc = build_task(TRANSFORMED[1])
  q, _ = resc.init(key)  # the optimizer's coordinates: p / scale
  assert float(resc.full_loss(q, data)) == pytest.approx(
      float(base.full_loss(params, data)), rel=1e-5)
  np.testing.assert_allclose(np.asarray(q["x"]) * 10.0,
                             np.asarray(params["x"]), rtol=1e-6)
  log = build_task(TRANSFORMED[3])
  assert float(log.full_loss(params, data)) == pytest.approx(
      float(jnp.log1p(base.full_loss(params, data))), rel=1e-5)


def test_config_round_trip_and_sampling_determinism():
  ens = tasks.default_ensemble()
  a = [ens.sample(np.random.default_rng(7)) for _ in range(2)]
  assert a[0] == a[1]
  rng = np.random.default_rng(0)
  for _ in range(50):
    c = ens.sample(rng)
    assert TaskConfig.from_dict(c.to_dict()) == c
    hash(c)


def test_holdout_is_fixed_and_distinct_from_training():
  h1, h2 = tasks.holdout_configs(8), tasks.holdout_configs(8)
  assert h1 == h2
  train = {tasks.default_ensemble().sample(np.random.default_rng(s))
           for s in range(8)}
  assert len(set(h1) - train) >= 6  # a few tiny configs may coincide


def test_ensemble_without_mlps_and_bad_ensembles():
  ens = tasks.default_ensemble(include_mlps=False)
  assert "mlp" not in dict(ens.weights)
  rng = np.random.default_rng(0)
  assert all(ens.sample(rng).family != "mlp" for _ in range(100))
  with pytest.raises(ValueError, match="unknown task family"):
    tasks.Ensemble((("nope", 1.0),))
  with pytest.raises(ValueError, match="unknown task family"):
    build_task(TaskConfig("nope"))
