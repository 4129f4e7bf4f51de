"""ResNet V2 and Inception V3: Keras parameter counts, train steps, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evaluators.models import InceptionV3, ResNetV2, count_params, resnet_v2

NUM_CLASSES = 10  # small heads for the runtime tests
# Unoptimized XLA code compiles 2-5x faster on CPU; these tests run once.
_FAST_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}


def _jit(fn):
  """``jax.jit`` with cheap compilation where this jax supports it."""
  try:
    return jax.jit(fn, compiler_options=_FAST_COMPILE)
  except TypeError:  # jax without jit(compiler_options=...)
    return jax.jit(fn)


def _shapes(model, hw, train=False):
  """Variables of ``model`` as ShapeDtypeStructs: traced, never compiled."""
  x = jnp.zeros((1, hw, hw, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x,
                                           train=train))


def _variables(model, hw, seed=0):
  """Cheap variables for runtime tests: skips compiling the initializers.

  Kernels are scaled normals (std 1/sqrt(fan_in)), biases zero, batch norm
  at its initial scale 1, mean 0, var 1.
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      std = 1.0 / np.sqrt(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
    if name in ("scale", "var"):
      return jnp.ones(s.shape, s.dtype)
    return jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, _shapes(model, hw))


def _train_step(model, variables, x, labels):
  """One jitted forward + backward pass in train mode."""

  def loss_fn(params):
    out, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x,
        train=True, mutable=["batch_stats"])
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(optax.softmax_cross_entropy_with_integer_labels(o, labels)
               .mean() for o in outs)
    return loss, (out, updates["batch_stats"])

  grad_fn = _jit(jax.value_and_grad(loss_fn, has_aux=True))
  return grad_fn(variables["params"])


def _assert_finite_grads_and_new_stats(grads, old_stats, new_stats):
  # Checked in numpy: per-leaf jnp ops would compile a kernel per shape.
  grads, old_stats, new_stats = jax.device_get((grads, old_stats, new_stats))
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves)
  assert any(np.any(g != 0) for g in leaves)
  assert (jax.tree_util.tree_structure(old_stats)
          == jax.tree_util.tree_structure(new_stats))
  changed = jax.tree_util.tree_map(
      lambda a, b: bool(np.any(a != b)), old_stats, new_stats)
  assert all(jax.tree_util.tree_leaves(changed))


# Keras `model.count_params()` (trainable + BN moving statistics) and the
# trainable part alone, for 1000 classes.
@pytest.mark.parametrize("model,hw,total,trainable", [
    (resnet_v2(50), 224, 25_613_800, 25_568_360),
    (resnet_v2(101), 224, 44_675_560, 44_577_896),
    (resnet_v2(152), 224, 60_380_648, 60_236_904),
    (InceptionV3(), 299, 23_851_784, 23_817_352),
], ids=["resnet50v2", "resnet101v2", "resnet152v2", "inception_v3"])
def test_param_counts_match_keras(model, hw, total, trainable):
  variables = _shapes(model, hw)
  assert set(variables) == {"params", "batch_stats"}
  assert count_params(variables) == total
  assert count_params(variables["params"]) == trainable
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(variables))


def test_param_count_independent_of_resolution():
  assert count_params(_shapes(resnet_v2(50), 32)) == 25_613_800
  assert count_params(_shapes(InceptionV3(), 75)) == 23_851_784


def test_inception_aux_head_outputs_and_params():
  model = InceptionV3(num_classes=NUM_CLASSES, aux_logits=True)
  for hw in (75, 299):  # the aux head adapts to small maps
    variables = _shapes(model, hw)  # initialized with train=False
    assert "aux_conv2" in variables["params"]
    x = jnp.zeros((2, hw, hw, 3))
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False),
                            variables)
    assert logits.shape == (2, NUM_CLASSES)
    (logits, aux), _ = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]),
        variables)
    assert logits.shape == aux.shape == (2, NUM_CLASSES)
    assert logits.dtype == aux.dtype == jnp.float32


def test_bad_depth_raises():
  with pytest.raises(ValueError, match=r"\[50, 101, 152\]"):
    resnet_v2(34)
  with pytest.raises(ValueError, match="depth"):
    ResNetV2(depth=18, num_classes=10)


def test_resnet50v2_train_step():
  model = resnet_v2(50, num_classes=NUM_CLASSES)
  variables = _variables(model, 32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  (loss, (logits, stats)), grads = _train_step(
      model, variables, x, jnp.array([1, 7]))
  assert logits.shape == (2, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.isfinite(loss))
  _assert_finite_grads_and_new_stats(grads, variables["batch_stats"], stats)


def test_inception_v3_train_step_with_aux_head():
  model = InceptionV3(num_classes=NUM_CLASSES, aux_logits=True)
  variables = _variables(model, 75)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 75, 75, 3))
  (loss, ((logits, aux), stats)), grads = _train_step(
      model, variables, x, jnp.array([1, 7]))
  assert logits.shape == aux.shape == (2, NUM_CLASSES)
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert bool(jnp.all(jnp.isfinite(aux))) and bool(jnp.isfinite(loss))
  assert "aux_conv2" in stats and "aux_predictions" in grads
  _assert_finite_grads_and_new_stats(grads, variables["batch_stats"], stats)


def test_resnet50v2_bfloat16_forward_matches_float32():
  model = resnet_v2(50, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
  variables = _variables(model, 32)
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(variables))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  logits = _jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (2, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  # The same variables in float32: bf16 compute (8 bits of mantissa, fp32
  # params) stays within a few percent through 50 layers.
  model32 = resnet_v2(50, num_classes=NUM_CLASSES, dtype=jnp.float32)
  ref = np.asarray(_jit(lambda v, x: model32.apply(v, x, train=False))(
      variables, x))
  got = np.asarray(logits)
  scale = float(np.max(np.abs(ref)))
  assert scale > 0 and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, atol=0.05 * scale)
  assert not np.array_equal(got, ref)  # it did compute in bf16
