"""Every family and transform: finite non-negative losses that Adam reduces."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatrain.tasks import TaskConfig, build_task
from metatrain.tasks import functions2d, quadratic


def _cfg(family, transforms=(), **params):
  return TaskConfig(family, tuple(params.items()), transforms)


QUAD = _cfg("quadratic", dim=20, noise=0.0)
SUM3 = _cfg("sum", parts=(_cfg("norm", dim=6, noise=0.0),
                          _cfg("bowl", cond=0.1, angle=0.0, noise=0.0),
                          _cfg("fn2d", fn="matyas", noise=0.0)))
# Small configs of every family (and every 2-D function), fast to compile.
SMALL = [
    _cfg("quadratic", dim=10, noise=0.5),
    _cfg("large_quadratic", dim=64, log10_cond=2.0),
    _cfg("bowl", cond=5.0, angle=math.pi / 4, noise=0.1),
    _cfg("logistic", dim=10, sep=1.0, batch=32, noise=0.1),
    _cfg("mlp", dim=5, hidden=(8,), act="sigmoid", batch=20),
    _cfg("matmul_algorithm", n=2, k=7, batch=16),
    _cfg("sum", parts=(_cfg("quadratic", dim=5, noise=0.0),
                       _cfg("fn2d", fn="booth", noise=1.0))),
    _cfg("fn2d", fn="rosenbrock", noise=1.0),
    _cfg("norm", dim=8, noise=0.0),
    _cfg("norm", dim=8, noise=0.1),
    _cfg("sparse_bowl", cond=5.0, angle=math.pi / 4, copies=1, p=0.9),
    SUM3,
] + [_cfg("fn2d", fn=f, noise=0.0) for f in sorted(functions2d.FUNCTIONS)]

TRANSFORMED = [
    _cfg("quadratic", (("gradient_noise", (("stdev", 0.3),)),), dim=20,
         noise=0.0),
    _cfg("quadratic", (("rescale", (("scale", 10.0),)),), dim=20, noise=0.0),
    _cfg("quadratic", (("rescale", (("scale", 0.1),)),), dim=20, noise=0.0),
    _cfg("quadratic", (("sparse", (("p", 0.99),)),), dim=20, noise=0.0),
    _cfg("quadratic", (("log_objective", ()),), dim=20, noise=0.0),
    # Every transform at once, in the ensemble's order, on a sum task.
    TaskConfig("sum", SMALL[6].params, (
        ("rescale", (("scale", 3.0),)), ("log_objective", ()),
        ("gradient_noise", (("stdev", 0.01),)), ("sparse", (("p", 0.5),)))),
]

DETERMINISTIC = {c.name for c in SMALL if c.family in ("large_quadratic",
                                                      "fn2d", "norm")
                 and c.get("noise", 0.0) == 0.0} | {SUM3.name} | {
                     TRANSFORMED[1].name, TRANSFORMED[2].name,
                     TRANSFORMED[4].name}

# Adam learning rates that make 150 steps a fair test (default 0.03).
LR = {"fn2d": 0.05, "bowl": 0.05, "sparse_bowl": 0.3, "norm": 0.1,
      "mlp": 0.1, "matmul_algorithm": 0.01,
      "rescale[scale=10]": 0.3, "rescale[scale=0.1]": 0.003,
      "sparse[p=0.99]": 0.1, "sparse[p=0.5]": 0.3}


def _lr(cfg):
  for key, lr in LR.items():
    if cfg.name.startswith(key):
      return lr
  return 0.03


def _adam(cfg, steps=150):
  """Runs Adam from a fresh instance; returns f0, f_final, losses, grads0."""
  task = build_task(cfg)
  tx = optax.adam(_lr(cfg))

  @jax.jit
  def run(key):
    k_init, k_run = jax.random.split(key)
    params, data = task.init(k_init)
    _, g0 = task.loss_and_grad(params, data, k_run)
    _, g1 = task.loss_and_grad(params, data, jax.random.fold_in(k_run, 1))

    def body(carry, k):
      p, s = carry
      loss, g = task.loss_and_grad(p, data, k)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss

    (p, _), losses = jax.lax.scan(body, (params, tx.init(params)),
                                  jax.random.split(k_run, steps))
    return (task.full_loss(params, data), task.full_loss(p, data), losses,
            (g0, g1), params)

  return run(jax.random.PRNGKey(0))


@pytest.mark.parametrize("cfg", SMALL + TRANSFORMED, ids=lambda c: c.name)
def test_finite_nonnegative_and_adam_reduces(cfg):
  f0, f1, losses, (g0, g1), params = _adam(cfg)
  losses = np.asarray(losses)
  assert np.all(np.isfinite(losses)) and np.all(losses >= 0), cfg.name
  assert np.isfinite(float(f0)) and float(f0) >= 0
  assert np.isfinite(float(f1)) and float(f1) >= 0
  for g, p in zip(jax.tree_util.tree_leaves(g0),
                  jax.tree_util.tree_leaves(params)):
    assert g.shape == p.shape and g.dtype == p.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(g)))
  # Ackley from the reference's +-32.8 box: Adam stops in a local minimum.
  ratio = 0.95 if cfg.name.startswith("fn2d(fn=ackley") else 0.9
  assert float(f1) < ratio * float(f0), (cfg.name, float(f0), float(f1))
  flat = [np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)])
          for g in (g0, g1)]
  # Minibatches and noise make gradients depend on the key, nothing else
  # (with 20 entries, p=0.99-sparse gradients are often all zero).
  if not cfg.name.startswith("sparse[p=0.99]"):
    assert np.array_equal(*flat) == (cfg.name in DETERMINISTIC), cfg.name


@pytest.mark.parametrize("cfg", [SMALL[3], TRANSFORMED[-1]],
                         ids=lambda c: c.name)
def test_vmap_over_seeds_equals_python_loop(cfg):
  task = build_task(cfg)

  @jax.jit
  def f(k):
    params, data = task.init(k)
    loss, grads = task.loss_and_grad(params, data, k)
    return params, data, task.full_loss(params, data), loss, grads

  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  batched = jax.jit(jax.vmap(f))(keys)
  for i, k in enumerate(keys):
    one = f(k)
    for a, b in zip(jax.tree_util.tree_leaves(one),
                    jax.tree_util.tree_leaves(batched)):
      np.testing.assert_allclose(np.asarray(b[i]), np.asarray(a),
                                 rtol=1e-4, atol=1e-5)


def test_instances_differ_across_keys_but_shapes_do_not():
  task = build_task(SMALL[3])  # logistic: params and a dataset
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  assert (jax.tree_util.tree_map(jnp.shape, jax.eval_shape(task.init, k1)) ==
          jax.tree_util.tree_map(jnp.shape, jax.eval_shape(task.init, k2)))
  init = jax.jit(task.init)
  (p1, d1), (p2, d2) = init(k1), init(k2)
  assert not np.allclose(np.asarray(d1["x"]), np.asarray(d2["x"]))
  assert not np.allclose(np.asarray(p1["w"]), np.asarray(p2["w"]))
  y = np.asarray(d1["y"])
  assert set(np.unique(y)) == {0.0, 1.0} and 0.3 < y.mean() < 0.7


def test_gradient_noise_changes_grads_not_loss():
  key = jax.random.PRNGKey(4)
  base, noisy = build_task(QUAD), build_task(TRANSFORMED[0])
  params, data = base.init(key)
  l0, g0 = base.loss_and_grad(params, data, key)
  noisy_lg = jax.jit(noisy.loss_and_grad)
  l1, g1 = noisy_lg(params, data, key)
  assert float(l1) == pytest.approx(float(l0))
  diff = np.asarray(g1["x"]) - np.asarray(g0["x"])
  assert 0.15 < diff.std() < 0.45  # stdev 0.3
  assert float(noisy.full_loss(params, data)) == pytest.approx(
      float(base.full_loss(params, data)))
  _, g2 = noisy_lg(params, data, jax.random.PRNGKey(5))
  assert not np.allclose(np.asarray(g1["x"]), np.asarray(g2["x"]))


def test_sparse_zeroes_99_percent_of_gradient_entries():
  cfg = _cfg("quadratic", (("sparse", (("p", 0.99),)),), dim=2000, noise=0.0)
  task = build_task(cfg)
  lg = jax.jit(task.loss_and_grad)
  params, data = jax.jit(task.init)(jax.random.PRNGKey(4))
  (l1, g1), (_, g2) = [lg(params, data, jax.random.PRNGKey(s))
                       for s in (6, 7)]
  for g in (g1, g2):
    assert 0.98 < float(jnp.mean(g["x"] == 0)) < 0.999
  # A new mask each step, and the surviving entries are the true gradient.
  assert not np.array_equal(np.asarray(g1["x"]) == 0,
                            np.asarray(g2["x"]) == 0)
  l0, g0 = jax.jit(build_task(TaskConfig(cfg.family, cfg.params))
                   .loss_and_grad)(params, data, jax.random.PRNGKey(6))
  nz = np.asarray(g1["x"]) != 0
  np.testing.assert_allclose(np.asarray(g1["x"])[nz], np.asarray(g0["x"])[nz],
                             rtol=1e-5)
  assert float(l1) == pytest.approx(float(l0))


def test_rescale_and_log_objective_map_loss_and_grads():
  key = jax.random.PRNGKey(4)
  base = build_task(QUAD)
  params, data = base.init(key)
  l0, g0 = base.loss_and_grad(params, data, key)
  for scale in (0.1, 10.0, 1000.0):
    resc = build_task(_cfg("quadratic", (("rescale", (("scale", scale),)),),
                           dim=20, noise=0.0))
    q, _ = resc.init(key)  # the optimizer's coordinates: scale * p
    np.testing.assert_allclose(np.asarray(q["x"]),
                               np.asarray(params["x"]) * scale, rtol=1e-6)
    assert float(resc.full_loss(q, data)) == pytest.approx(float(l0),
                                                           rel=1e-5)
    l, g = resc.loss_and_grad(q, data, key)
    assert float(l) == pytest.approx(float(l0), rel=1e-5)
    np.testing.assert_allclose(np.asarray(g["x"]), np.asarray(g0["x"]) / scale,
                               rtol=1e-4)
  log = build_task(TRANSFORMED[4])
  l, g = log.loss_and_grad(params, data, key)
  assert float(l) == pytest.approx(math.log1p(float(l0)), rel=1e-6)
  assert float(log.full_loss(params, data)) == pytest.approx(float(l))
  np.testing.assert_allclose(np.asarray(g["x"]),
                             np.asarray(g0["x"]) / (1 + float(l0)), rtol=1e-5)
  _, g_auto = jax.value_and_grad(log.loss)(params, data, key)
  np.testing.assert_allclose(np.asarray(g_auto["x"]), np.asarray(g["x"]),
                             rtol=1e-5)


def test_2d_functions_are_nonnegative_at_their_minima():
  minima = {"ackley": (0.0, 0.0), "beale": (3.0, 0.5), "booth": (1.0, 3.0),
            "branin": (math.pi, 2.275), "matyas": (0.0, 0.0),
            "michalewicz": (2.20, 1.57), "rosenbrock": (1.0, 1.0),
            "styblinski_tang": (-2.903534, -2.903534),
            "logsumexp": (-0.5 * math.log(2), 0.0)}
  assert set(minima) == set(functions2d.FUNCTIONS)
  names = sorted(functions2d.FUNCTIONS)

  def grid(name):  # 61 x 61 points over the init box (normal: +-4 stdev)
    kind, a, b = functions2d.INITS[name]
    lo, hi = (a, b) if kind == "uniform" else ((a - 4 * b,) * 2,
                                               (a + 4 * b,) * 2)
    axes = [jnp.linspace(lo[i], hi[i], 61) for i in (0, 1)]
    return jnp.stack(jnp.meshgrid(*axes), -1).reshape(-1, 2)

  @jax.jit
  def evaluate(points):
    at_min = [build_task(_cfg("fn2d", fn=n, noise=0.0)).full_loss(
        {"x": points[i]}, {}) for i, n in enumerate(names)]
    on_grid = [jnp.min(jax.vmap(lambda p, f=functions2d.FUNCTIONS[n]:
                                f(p[0], p[1]))(grid(n))) for n in names]
    return jnp.stack(at_min), jnp.stack(on_grid)

  at_min, on_grid = evaluate(jnp.array([minima[n] for n in names]))
  for name, v, low in zip(names, np.asarray(at_min), np.asarray(on_grid)):
    assert 0 <= v < 2.0, (name, v)  # the minimum (offset) value
    assert low >= -1e-4, (name, low)  # non-negative over every init box


def test_matmul_strassen_is_exact_and_full_loss_is_the_expectation():
  u = [[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0],
       [-1, 0, 1, 0], [0, 1, 0, -1]]
  v = [[1, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, -1], [-1, 0, 1, 0], [0, 0, 0, 1],
       [1, 1, 0, 0], [0, 0, 1, 1]]
  w = [[1, 0, 0, 1, -1, 0, 1], [0, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0, 0],
       [1, -1, 1, 0, 0, 1, 0]]
  strassen = {k: jnp.array(x, jnp.float32) for k, x in
              (("u", u), ("v", v), ("w", w))}
  task = build_task(_cfg("matmul_algorithm", n=2, k=7, batch=64))
  assert float(task.full_loss(strassen, {})) < 1e-10
  assert float(task.loss(strassen, {}, jax.random.PRNGKey(0))) < 1e-8
  params, data = task.init(jax.random.PRNGKey(1))
  mc = jax.jit(jax.vmap(task.loss, (None, None, 0)))(
      params, data, jax.random.split(jax.random.PRNGKey(2), 400))
  full = float(task.full_loss(params, data))
  assert full > 0.5
  assert float(jnp.mean(mc)) == pytest.approx(full, rel=0.05)


def test_large_quadratic_rotation_is_dense_and_orthogonal():
  assert quadratic._factor(2048) == (32, 64)
  assert quadratic._factor(784) == (28, 28)
  task = build_task(_cfg("large_quadratic", dim=784, log10_cond=3.0))
  params, data = jax.jit(task.init)(jax.random.PRNGKey(0))
  for q in (data["qa"], data["qb"]):
    np.testing.assert_allclose(np.asarray(q @ q.T), np.eye(q.shape[0]),
                               atol=1e-5)
  s = np.asarray(data["s"])
  assert s.max() <= 1.0 and s.min() >= 1e-3 and s.max() / s.min() > 100
  del params
  # The gradient at opt + e_0 is the Hessian's first column: dense.
  grad = jax.grad(lambda x: task.full_loss({"x": x}, data))
  col = np.asarray(grad(data["opt"].at[0].add(1.0)))
  assert np.mean(np.abs(col) > 1e-6) > 0.9
  assert float(task.full_loss({"x": data["opt"]}, data)) < 1e-8


def test_orthogonalize_is_qr_with_a_positive_diagonal():
  for n, seed in ((28, 0), (64, 1)):
    g = jax.random.normal(jax.random.PRNGKey(seed), (n, n))
    q = np.asarray(jax.jit(quadratic._orthogonalize)(g))
    ref, r = np.linalg.qr(np.asarray(g, np.float64))
    np.testing.assert_allclose(q, ref * np.sign(np.diag(r)), atol=2e-5)


def test_large_quadratic_init_has_no_lapack_custom_calls():
  # XLA:CPU in jax 0.10 hung for good, every thread idle, on this init's
  # two independent batched QR custom calls (docs/architecture.md).
  task = build_task(_cfg("large_quadratic", dim=2048, log10_cond=2.0))
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  hlo = jax.jit(jax.vmap(task.init)).lower(keys).as_text()
  assert "custom_call" not in hlo


def test_2d_functions_start_in_the_reference_boxes():
  boxes = {"ackley": ((-32.768,) * 2, (32.768,) * 2),
           "beale": ((-4.5,) * 2, (4.5,) * 2),
           "booth": ((-10.0,) * 2, (10.0,) * 2),
           "branin": ((-5.0, 0.0), (10.0, 15.0)),
           "matyas": ((-10.0,) * 2, (10.0,) * 2),
           "michalewicz": ((0.0,) * 2, (math.pi,) * 2),
           "rosenbrock": ((-5.0,) * 2, (10.0,) * 2),
           "styblinski_tang": ((-5.0,) * 2, (5.0,) * 2)}
  names = sorted(functions2d.FUNCTIONS)
  assert set(boxes) | {"logsumexp"} == set(names)
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)

  @jax.jit
  def inits(keys):
    return {n: jax.vmap(build_task(_cfg("fn2d", fn=n, noise=0.0)).init)(
        keys)[0]["x"] for n in names}

  xs = {n: np.asarray(x) for n, x in inits(keys).items()}
  for name, (lo, hi) in boxes.items():
    x, lo, hi = xs[name], np.array(lo), np.array(hi)
    assert x.shape == (4000, 2)
    assert np.all(x >= lo) and np.all(x <= hi), name
    width = hi - lo  # the whole box is covered, uniformly
    assert np.all(x.min(0) < lo + 0.01 * width), name
    assert np.all(x.max(0) > hi - 0.01 * width), name
    np.testing.assert_allclose(x.mean(0), (lo + hi) / 2,
                               atol=0.03 * width.max())
  x = xs["logsumexp"]  # no init box in the reference: N(0, 1)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=0.1)
  np.testing.assert_allclose(x.std(0), 1.0, atol=0.1)
  assert np.abs(x).max() > 3.0


@pytest.mark.parametrize("copies,p", quadratic.SPARSE_BOWL_SIZES)
def test_sparse_bowls_give_rare_but_real_gradients(copies, p):
  cfg = _cfg("sparse_bowl", cond=5.0, angle=math.pi / 4, copies=copies, p=p)
  task = build_task(cfg)
  params, data = task.init(jax.random.PRNGKey(0))
  assert params["x"].shape == (copies, 2)
  steps = 2000
  lg = jax.jit(jax.vmap(task.loss_and_grad, (None, None, 0)))
  losses, grads = lg(params, data, jax.random.split(jax.random.PRNGKey(1),
                                                    steps))
  dense = jax.grad(task.full_loss)(params, data)["x"]
  g, dense = np.asarray(grads["x"]), np.asarray(dense)
  assert np.all(dense != 0)
  nz = g != 0
  # Surviving entries are the true gradient; the loss is never masked.
  np.testing.assert_allclose(g[nz], np.broadcast_to(dense, g.shape)[nz],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(losses),
                             float(task.full_loss(params, data)), rtol=1e-6)
  assert abs(nz.mean() - (1 - p)) < 3 * math.sqrt(p * (1 - p) / nz.size)
  # Most steps see no gradient at all, but a good fraction see some.
  some = nz.reshape(steps, -1).any(1).mean()
  expected = 1 - p ** (2 * copies)
  assert 0.15 < expected < 0.8 and abs(some - expected) < 0.05, some
