"""Behavioural tests of the hierarchical RNN optimizer."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatrain.optimizer import hrnn
from metatrain.optimizer.hrnn import HRNNConfig

# The paper's optimizer: most tests here exercise its mechanics. The default
# (nominal-Adam) start has its own tests at the end.
CFG = HRNNConfig.paper()
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
  with pytest.raises(ValueError, match="built for"):
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


@functools.lru_cache(maxsize=None)
def _ablation_run(cfg):
  """10 steps on one quadratic (computed once per config: the full
  optimizer's run is every ablation's reference)."""
  theta = THETA if cfg == CFG else hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  loss, params = _quadratic(jax.random.PRNGKey(6))
  return jax.jit(lambda t: _run(cfg, t, loss, params, 10)[:3])(theta)


@pytest.mark.parametrize("field", sorted(ABLATIONS))
def test_each_ablation_changes_behaviour_and_runs(field):
  changes = {field: ABLATIONS[field]}
  if field == "use_tensor_rnn":
    changes["use_global_rnn"] = False
  cfg = dataclasses.replace(CFG, **changes)
  losses, ups, _ = _ablation_run(cfg)
  _, base_ups, _ = _ablation_run(CFG)
  assert np.all(np.isfinite(np.asarray(losses)))
  assert np.all(np.isfinite(np.asarray(ups["w"])))
  assert not np.array_equal(np.asarray(ups["w"]), np.asarray(base_ups["w"]))


def test_dynamic_output_scale_off_steps_lr_times_the_unnormalised_direction():
  cfg = dataclasses.replace(CFG, dynamic_output_scale=False,
                            use_relative_lr=False)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  # Without the RNN's direction readout the first step is known exactly:
  # lr = 2 sigmoid(w_lr . h + b_lr) = 1 (both zero at init), times the
  # shortcut of the scaled averages, each asinh(acc / rms(acc)) =
  # asinh(sign g) on a first step: no per-tensor normalisation, no log-LR.
  th = dict(theta, w_update=jnp.zeros_like(theta["w_update"]))
  g = {"w": jnp.asarray([0.3, -2.0, 7.0, -0.05])}
  state = hrnn.init_state(cfg, th, g)
  u, state = jax.jit(lambda s: hrnn.update(cfg, th, s, g))(state)
  want = -np.sign(np.asarray(g["w"])) * np.arcsinh(1.0) * float(
      np.sum(np.asarray(theta["shortcut"])))
  np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-5)
  assert state.log_lr.shape == (0,)
  # And the full optimizer runs 20 steps (its untrained steps of ~1 are
  # too long for this problem: nothing says they should descend).
  loss, params = _quadratic(jax.random.PRNGKey(7))
  losses, _, _, _ = jax.jit(lambda: _run(cfg, theta, loss, params, 20))()
  assert np.all(np.isfinite(np.asarray(losses)))


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
  # 10 hidden + 4 averages + 4 mean squares + 1 log-lr floats (the decays
  # are recomputed from the hidden state, not stored).
  assert hrnn.state_bytes_per_param(state) == pytest.approx(19 * 4, rel=0.01)


@pytest.mark.parametrize("dtype,limit", [("float32", 90), ("bfloat16", 48)])
def test_default_state_fits_its_budget(dtype, limit):
  cfg = HRNNConfig(state_dtype=dtype)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  state = hrnn.init_state(cfg, theta, {"w": jnp.zeros((1000, 100)),
                                       "b": jnp.zeros((100,))})
  # 10 hidden + 4 averages + 4 mean squares + log-LR + Adam's m and v.
  per = 21 * (4 if dtype == "float32" else 2)
  assert per <= hrnn.state_bytes_per_param(state) <= per * 1.01 <= limit


# ----------------------------------------------------------------------------
# The default start: the untrained optimizer is Adam.


def test_the_default_untrained_optimizer_is_adam():
  cfg = HRNNConfig()
  assert cfg.nominal_adam and cfg.init_lr == 1e-3
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  loss, params = _quadratic(jax.random.PRNGKey(9))
  params = dict(params, big=jnp.full((300, 500), 0.1))  # a blocked slab too
  full = lambda p: loss(p) + jnp.sum(jnp.cos(p["big"]))
  state, tx = hrnn.init_state(cfg, theta, params), optax.adam(1e-3)
  adam_state, p1, p2 = tx.init(params), params, params
  step = jax.jit(lambda s, g: hrnn.update(cfg, theta, s, g))
  for _ in range(6):
    u1, state = step(state, jax.grad(full)(p1))
    u2, adam_state = tx.update(jax.grad(full)(p2), adam_state)
    for a, b in zip(jax.tree_util.tree_leaves(u1),
                    jax.tree_util.tree_leaves(u2)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                 atol=1e-9)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  # 8 more bytes per parameter than the paper's optimizer: Adam's m and v.
  paper = hrnn.init_state(CFG, THETA, params)
  assert (hrnn.state_bytes_per_param(state) -
          hrnn.state_bytes_per_param(paper)) == pytest.approx(8.0, abs=0.1)


@pytest.mark.parametrize("task", ["quadratic", "logistic", "bowl"])
def test_the_default_untrained_optimizer_is_within_10pc_of_adam(task):
  from metatrain.tasks import TaskConfig, build_task  # pylint: disable=import-outside-toplevel
  config = {
      "quadratic": TaskConfig("quadratic", (("dim", 20), ("noise", 0.0))),
      "logistic": TaskConfig("logistic", (("dim", 100), ("sep", 1.0),
                                          ("batch", 50), ("noise", 0.0))),
      "bowl": TaskConfig("bowl", (("cond", 5.0), ("angle", 0.785),
                                  ("noise", 0.0))),
  }[task]
  t = build_task(config)
  cfg = HRNNConfig()
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)

  @functools.partial(jax.jit, static_argnums=0)
  def final_loss(use_hrnn):
    params, data = t.init(jax.random.PRNGKey(3))
    tx = (hrnn_optax_like(cfg, theta) if use_hrnn else optax.adam(1e-3))

    def body(carry, k):
      p, s = carry
      _, g = t.loss_and_grad(p, data, k)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    keys = jax.random.split(jax.random.PRNGKey(4), 200)
    (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), keys)
    return t.full_loss(p, data)

  learned, adam = float(final_loss(True)), float(final_loss(False))
  assert np.isfinite(learned) and learned <= 1.1 * adam + 1e-6, (learned,
                                                                 adam)


def hrnn_optax_like(cfg, theta):
  from metatrain.optimizer.optax_adapter import hrnn_optax  # pylint: disable=import-outside-toplevel
  return hrnn_optax(cfg, theta)


def test_the_zero_initialised_corrections_get_meta_gradients():
  cfg = HRNNConfig()
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  loss, params = _quadratic(jax.random.PRNGKey(2))

  def meta_loss(th):
    losses, _, _, _ = _run(cfg, th, loss, params, 8)
    return jnp.mean(jnp.log(losses))

  g = jax.jit(jax.grad(meta_loss))(theta)
  for k in ("w_update", "shortcut", "w_lr", "b_lr", "stepsize_offset"):
    assert float(jnp.sum(jnp.abs(g[k]))) > 0, k
    assert np.all(np.isfinite(np.asarray(g[k])))


def test_configs_without_nominal_adam_keep_the_paper_behaviour():
  # Files and checkpoints written before the nominal-Adam start existed have
  # no such field: they load as the paper's optimizer they were trained as.
  legacy = {k: v for k, v in CFG.to_dict().items()
            if k not in ("nominal_adam", "init_lr", "adam_b1", "adam_b2",
                         "adam_eps")}
  assert HRNNConfig.from_dict(legacy) == CFG
  assert HRNNConfig.from_dict(HRNNConfig().to_dict()) == HRNNConfig()
  # Written before the anchored log-LR existed: the integrating one.
  adam_era = {k: v for k, v in HRNNConfig().to_dict().items()
              if k != "lr_correction_range"}
  assert HRNNConfig.from_dict(adam_era).lr_correction_range == 0.0
  assert HRNNConfig().lr_correction_range > 0
  with pytest.raises(ValueError, match="nominal_adam needs"):
    HRNNConfig(dynamic_output_scale=False, use_relative_lr=False)


@pytest.mark.parametrize("base", ["default", "paper"])
def test_bf16_state_halves_memory_and_tracks_fp32(base):
  """bf16 storage, fp32 math: the updates stay close to fp32 state's."""
  mk = HRNNConfig if base == "default" else HRNNConfig.paper
  c32, c16 = mk(), mk(state_dtype="bfloat16")
  theta = hrnn.init_theta(jax.random.PRNGKey(0), c32)
  params = {"w": jnp.ones((40, 30)), "b": jnp.zeros((3,)),
            "s": jnp.asarray(0.5), "h": jnp.ones((7,), jnp.bfloat16),
            "e": jnp.zeros((0,)), "i": jnp.arange(3)}
  s32 = hrnn.init_state(c32, theta, params)
  s16 = hrnn.init_state(c16, theta, params)
  n = 1200 + 3 + 1 + 7
  b16 = sum(x.nbytes for x in jax.tree.leaves(s16)
            if x.dtype == jnp.bfloat16)
  assert b16 / n <= 48 and s16.h.dtype == jnp.bfloat16
  assert s16.h_tensor.dtype == jnp.float32  # tiny: kept fp32
  key = jax.random.PRNGKey(1)
  step = jax.jit(hrnn.update, static_argnums=0)
  for _ in range(5):
    key, k = jax.random.split(key)
    g = jax.tree.map(
        lambda x: (jax.random.normal(k, jnp.shape(x)) * 0.1).astype(x.dtype)
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
        else jnp.zeros_like(x), params)
    u32, s32 = step(c32, theta, s32, g)
    u16, s16 = step(c16, theta, s16, g)
  for k in ("w", "b", "s"):
    a, b = np.asarray(u32[k], np.float32), np.asarray(u16[k], np.float32)
    assert np.all(np.isfinite(b))
    rel = np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12)
    assert rel < 0.05, (k, rel)
  assert s16.acc.dtype == jnp.bfloat16 and s16.log_lr.dtype == jnp.bfloat16


def test_anchored_log_lr_starts_as_adam_stays_bounded_and_learns():
  cfg = HRNNConfig(lr_correction_range=1.0)
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  params = {"w": jnp.ones((50,)), "b": jnp.zeros((3,))}
  g = {"w": jnp.full((50,), 0.3), "b": jnp.full((3,), -0.2)}
  u, _ = hrnn.update(cfg, theta, hrnn.init_state(cfg, theta, params), g)
  np.testing.assert_allclose(np.asarray(u["w"]), -1e-3, rtol=1e-4)  # Adam
  # A readout pushing the rates up as hard as it can: they stay bounded.
  big = dict(theta, b_lr=jnp.asarray(50.0))
  st = hrnn.init_state(cfg, big, params)
  step = jax.jit(functools.partial(hrnn.update, cfg))
  for _ in range(200):
    u, st = step(big, st, g)
  np.testing.assert_allclose(np.asarray(u["w"]), -1e-3 * np.e, rtol=1e-3)
  np.testing.assert_allclose(np.exp(np.asarray(st.log_lr[:50])), 1e-3,
                             rtol=1e-5)
  # Its correction has a meta-gradient at the start.
  def loss(th):
    p, s = params, hrnn.init_state(cfg, th, params)
    for _ in range(3):
      u, s = hrnn.update(cfg, th, s, jax.tree.map(lambda x: 2 * x, p))
      p = jax.tree.map(lambda a, b: a + b, p, u)
    return jnp.sum(p["w"] ** 2)
  assert abs(float(jax.grad(loss)(theta)["b_lr"])) > 0
