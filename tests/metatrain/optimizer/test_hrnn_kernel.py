"""The compiled CPU kernel of the HRNN update equals the pure-JAX update.

The kernel is optional: the package's install (setup.py) builds it where a
C++17 compiler exists. Where it is unavailable these tests skip, naming
the reason; ``LOPT_REQUIRE_KERNEL=1`` (set by CI, ``.ci/run``) turns that
skip into a failure, so a broken build cannot pass CI silently.
``LOPT_HRNN_KERNEL=PATH`` tests another build of the library (CI runs this
file against a Clang build too).
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain.optimizer import hrnn, hrnn_kernel
from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.optimizer.optax_adapter import hrnn_optax


@pytest.fixture(autouse=True, name="kernel_built")
def _kernel_built():
  if not hrnn_kernel.available():
    why = hrnn_kernel.unavailable_reason()
    if os.environ.get("LOPT_REQUIRE_KERNEL") == "1":
      pytest.fail(f"LOPT_REQUIRE_KERNEL=1 but the HRNN kernel is not "
                  f"available: {why}")
    pytest.skip(f"the optional HRNN kernel is not available here ({why}); "
                "LOPT_REQUIRE_KERNEL=1 makes this a failure")


def _params(large=True):
  small = [jnp.zeros((n,)) for n in (1, 3, 2, 17, 5, 1, 64, 9, 4, 31)]
  return {
      "empty": jnp.zeros((0,)),
      "scalar": jnp.zeros(()),
      "bf16": jnp.zeros((7, 9), jnp.bfloat16),
      "int": jnp.arange(5, dtype=jnp.int32),
      "large": jnp.zeros((300_000 if large else 3000,)),
      "mat": jnp.zeros((33, 65)),
      "small": small,
  }


def _grads(params, i):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(100 + i), len(leaves))
  out = []
  for k, p in zip(keys, leaves):
    if jnp.issubdtype(p.dtype, jnp.inexact):
      scale = jnp.exp(jax.random.normal(k, ()) * 2.0) * 0.1  # per-leaf scale
      out.append((jax.random.normal(k, p.shape) * scale).astype(p.dtype))
    else:
      out.append(p)
  return jax.tree_util.tree_unflatten(treedef, out)


def _theta(cfg):
  # Perturbed, so that the readouts nominal Adam zeroes take part too.
  theta = hrnn.init_theta(jax.random.PRNGKey(1), cfg)
  leaves, treedef = jax.tree_util.tree_flatten(theta)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  theta = jax.tree_util.tree_unflatten(treedef, [
      x + 0.05 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  if cfg.lr_correction_range > 0:
    # Log-LR readouts of order 1, so that the anchored correction's tanh
    # runs both of the kernel's branches (|x| below and above 0.625).
    theta["w_lr"] = theta["w_lr"] * 20.0
  return theta


# (config, with the 300k leaf: a blocked slab on the pure-JAX path)
CONFIGS = {
    "default": (HRNNConfig(), True),  # nominal Adam, anchored log-LR
    # Nominal Adam with the paper's integrating log-LR.
    "integrating": (HRNNConfig(lr_correction_range=0.0), False),
    "paper": (HRNNConfig.paper(), True),
    "paper_ablated": (HRNNConfig.paper(
        use_tensor_rnn=False, use_global_rnn=False, learnable_decay=False,
        use_gradient_shortcut=False, use_relative_lr=False), False),
    # param_units != 10 runs the kernel's generic (runtime-size) path.
    "small_generic": (HRNNConfig(param_units=7, num_timescales=2,
                                 use_grad_products=False, use_log_ms=False,
                                 dynamic_input_scaling=False), False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_matches_jax(name):
  _check_matches_jax(name)


# The lower instruction sets' copies of the pass (the auto choice above is
# the best this CPU has; the 4- and 8-lane copies run on AVX-512 machines
# too), each on one of the two code paths (param_units 10 and generic).
@pytest.mark.parametrize("isa,name", [("base", "default"),
                                      ("avx2", "small_generic"),
                                      ("avx2", "default")])
def test_every_instruction_set_matches_jax(name, isa, monkeypatch):
  if hrnn_kernel.isa(isa) != isa:
    pytest.skip(f"this CPU lacks {isa} (best: {hrnn_kernel.isa('auto')})")
  monkeypatch.setenv("LOPT_HRNN_ISA", isa)
  assert hrnn_kernel.isa() == isa
  _check_matches_jax(name)


def test_bad_instruction_set_name_is_a_clear_error(monkeypatch):
  monkeypatch.setenv("LOPT_HRNN_ISA", "sse9")
  with pytest.raises(ValueError, match="LOPT_HRNN_ISA='sse9'.*avx512"):
    hrnn_kernel.isa()


def _check_matches_jax(name):
  cfg, large = CONFIGS[name]
  theta = _theta(cfg)
  params = _params(large)
  state = hrnn.init_state(cfg, theta, params)
  step_jax = jax.jit(lambda s, g: hrnn.update(cfg, theta, s, g, kernel=False))
  step_ker = jax.jit(lambda s, g: hrnn.update(cfg, theta, s, g, kernel=True))
  assert "ffi_call" in str(jax.make_jaxpr(step_ker)(state, _grads(params, 0)))
  s_jax = s_ker = state
  for i in range(5):
    g = _grads(params, i)
    u_jax, s_jax = step_jax(s_jax, g)
    u_ker, s_ker = step_ker(s_ker, g)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(u_jax),
                            jax.tree_util.tree_leaves(u_ker)):
      assert a.dtype == b.dtype and a.shape == b.shape
      np.testing.assert_allclose(
          np.asarray(b, np.float32), np.asarray(a, np.float32),
          rtol=1e-2 if a.dtype == jnp.bfloat16 else 1e-5, atol=1e-6,
          err_msg=f"{name} step {i} update{jax.tree_util.keystr(path)}")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s_jax),
                          jax.tree_util.tree_leaves(s_ker)):
    assert a.dtype == b.dtype and a.shape == b.shape
    # h: the f32 GRU's own rounding grows to ~2e-6 over 5 steps on both
    # paths (each is as far from a float64 run as from the other).
    atol = 4e-6 if jax.tree_util.keystr(path).endswith(".h") else 1e-6
    np.testing.assert_allclose(
        np.asarray(b), np.asarray(a), rtol=1e-5, atol=atol,
        err_msg=f"{name} state{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("kernel", [False, True])
def test_lr_head_gain_reparameterises_the_lr_readout(kernel):
  # Gain 10 on theta / 10 is gain 1 on theta, on both paths; gain 10 on the
  # same theta is a different optimizer (the gain is applied).
  one, ten = HRNNConfig(), HRNNConfig(lr_head_gain=10.0)
  theta = _theta(one)
  scaled = dict(theta, w_lr=theta["w_lr"] / 10.0, b_lr=theta["b_lr"] / 10.0)
  params = _params(large=False)
  runs = {}
  for key, cfg, th in (("one", one, theta), ("ten", ten, scaled),
                       ("same", ten, theta)):
    state = hrnn.init_state(cfg, th, params)
    step = jax.jit(lambda s, g, cfg=cfg, th=th: hrnn.update(
        cfg, th, s, g, kernel=kernel))
    for i in range(3):
      u, state = step(state, _grads(params, i))
    runs[key] = np.asarray(u["large"])
  np.testing.assert_allclose(runs["ten"], runs["one"], rtol=1e-5, atol=1e-9)
  assert np.max(np.abs(runs["same"] - runs["one"])) > 1e-3 * np.max(
      np.abs(runs["one"]))
  with pytest.raises(ValueError, match="lr_head_gain must be > 0"):
    HRNNConfig(lr_head_gain=0.0)


def test_optax_auto_uses_kernel_and_update_default_does_not():
  cfg = HRNNConfig()
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  params = {"w": jnp.zeros((40,)), "b": jnp.zeros((3,))}
  grads = _grads(params, 0)
  tx = hrnn_optax(cfg, theta)
  state = tx.init(params)
  assert "ffi_call" in str(jax.make_jaxpr(tx.update)(grads, state))
  off = hrnn_optax(cfg, theta, kernel=False)
  assert "ffi_call" not in str(jax.make_jaxpr(off.update)(grads, state))
  # Meta-training differentiates hrnn.update: its default is pure JAX.
  loss = lambda th: jnp.sum(hrnn.update(cfg, th, state, grads)[0]["w"])
  assert "ffi_call" not in str(jax.make_jaxpr(jax.grad(loss))(theta))
  # The kernel path in a plain optax loop, jitted with donation.
  step = jax.jit(tx.update, donate_argnums=(1,))
  u_ker, _ = step(grads, tx.init(params))
  u_jax, _ = jax.jit(off.update)(grads, off.init(params))
  np.testing.assert_allclose(u_ker["w"], u_jax["w"], rtol=1e-5, atol=1e-9)


def test_unsupported_config_falls_back_with_one_warning():
  cfg = HRNNConfig.paper(use_attention=True)
  theta = _theta(cfg)
  params = {"w": jnp.zeros((50,))}
  state = hrnn.init_state(cfg, theta, params)
  g = _grads(params, 0)
  hrnn_kernel._warned.clear()  # pylint: disable=protected-access
  run = lambda k: jax.jit(
      lambda s, g: hrnn.update(cfg, theta, s, g, params, kernel=k)[0])(
          state, g)
  with pytest.warns(RuntimeWarning, match="use_attention"):
    u_req = run(True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # once only
    run(True)
    u_auto = run(None)
  u_ref = run(False)
  np.testing.assert_array_equal(u_req["w"], u_ref["w"])
  np.testing.assert_array_equal(u_auto["w"], u_ref["w"])


def test_kernel_under_vmap():
  cfg = HRNNConfig()
  theta = _theta(cfg)
  params = {"w": jnp.zeros((33,)), "b": jnp.zeros((2,))}
  state = hrnn.init_state(cfg, theta, params)
  gs = jax.vmap(lambda i: _grads(params, 0))(jnp.arange(3))
  gs = jax.tree_util.tree_map(lambda g: g * jnp.arange(1.0, 4.0).reshape(
      (3,) + (1,) * (g.ndim - 1)), gs)
  run = lambda k: jax.jit(jax.vmap(
      lambda g: hrnn.update(cfg, theta, state, g, kernel=k)[0]))(gs)
  for a, b in zip(jax.tree_util.tree_leaves(run(False)),
                  jax.tree_util.tree_leaves(run(True))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-9)


def test_kernel_matches_jax_on_extreme_gradients():
  # Zeros, denormal-sized, tiny and huge gradients (the kernel replaces
  # divides and square roots by estimate-and-Newton steps, which must hold
  # over the whole range a finite run can reach).
  cfg = HRNNConfig()
  theta = _theta(cfg)
  vals = np.array([0.0, 1e-30, -1e-12, 3e-7, 1.0, -1e6, 1e12, -1e17],
                  np.float32)
  params = {"w": jnp.zeros((64,))}
  state = hrnn.init_state(cfg, theta, params)
  step_jax = jax.jit(lambda s, g: hrnn.update(cfg, theta, s, g, kernel=False))
  step_ker = jax.jit(lambda s, g: hrnn.update(cfg, theta, s, g, kernel=True))
  s_jax = s_ker = state
  rng = np.random.default_rng(0)
  for i in range(4):
    g = {"w": jnp.asarray(rng.permutation(np.tile(vals, 8)))}
    u_jax, s_jax = step_jax(s_jax, g)
    u_ker, s_ker = step_ker(s_ker, g)
    a, b = np.asarray(u_jax["w"]), np.asarray(u_ker["w"])
    assert np.all(np.isfinite(a)), f"step {i}: JAX update not finite"
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6,
                               err_msg=f"step {i}")
