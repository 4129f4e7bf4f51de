"""The image families: real Fashion-MNIST 8x8 and photo patches, padded
buckets exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatrain import datasets
from metatrain.tasks import buckets, images
from metatrain.tasks.base import TaskConfig
from metatrain.tasks.ensemble import Ensemble
from metatrain.tasks.registry import build_task


def _config(family, **kw):
  return TaskConfig(family, tuple(kw.items()))


def test_the_pool_is_fashion_mnist_train_at_8x8():
  x, y = images.pool_images()
  full = datasets.fashion_mnist_arrays("train")
  assert x.shape == (images.POOL, 8, 8) and y.shape == (images.POOL,)
  np.testing.assert_array_equal(y, full["label"][:images.POOL])
  block = full["image"][0, 2:5, 2:5, 0].mean()  # the first 3x3 block
  raw = full["image"][:images.POOL, 2:26, 2:26, 0].reshape(
      images.POOL, 8, 3, 8, 3).mean((2, 4))
  np.testing.assert_allclose(x[0, 0, 0], (block - raw.mean()) / raw.std(),
                             rtol=1e-4)
  assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4


def _best_window(photo, patch):
  """(correlation, row) of the 2x2-pooled 16x16 window of ``photo`` that
  best matches the 8x8 ``patch``."""
  box = (photo[:-1, :-1] + photo[1:, :-1] + photo[:-1, 1:] + photo[1:, 1:]
         ) / 4  # box[i, j]: the 2x2 mean starting at (i, j)
  a = (patch - patch.mean()).ravel()
  a /= np.linalg.norm(a)
  best = (-2.0, -1)
  for pr in (0, 1):
    for pc in (0, 1):
      win = np.lib.stride_tricks.sliding_window_view(box[pr::2, pc::2],
                                                     (8, 8))
      flat = win.reshape(*win.shape[:2], 64)
      centred = flat - flat.mean(-1, keepdims=True)
      corr = (centred @ a) / (np.linalg.norm(centred, axis=-1) + 1e-12)
      i, j = np.unravel_index(np.argmax(corr), corr.shape)
      if corr[i, j] > best[0]:
        best = (float(corr[i, j]), pr + 2 * i)
  return best


def test_photo_patches_are_pooled_patches_of_sklearns_sample_photos():
  from sklearn.datasets import load_sample_images
  x, y = images.photo_patches()
  assert x.shape == (images.POOL, 8, 8) and set(np.unique(y)) == set(
      range(10))
  assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4
  photos = [im.astype(np.float32).mean(-1)
            for im in load_sample_images().images]
  for n in range(3):  # each is a window of the photo its label names
    photo = photos[y[n] // 5]
    corr, row = _best_window(photo, x[n])
    assert corr == pytest.approx(1.0, abs=1e-4)
    assert y[n] % 5 == min(4, int(5 * (row + 8) / photo.shape[0]))


def test_a_bucket_reads_the_source_its_input_names():
  for source in images.SOURCES:
    cfg = _config("image_conv", channels=8, act="relu", batch=32, classes=10,
                  data=source)
    exact = build_task(cfg)
    bucket, hp = buckets.split(cfg)
    padded = buckets.make_task(bucket, hp)
    _, d = exact.init(jax.random.PRNGKey(5))
    _, dp = padded.init(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(dp["task"]["x"], d["x"])
    np.testing.assert_array_equal(dp["task"]["y"], d["y"])
  photo = build_task(_config("image_conv", channels=8, act="relu", batch=32,
                             classes=10, data="photo"))
  x = np.asarray(photo.init(jax.random.PRNGKey(5))[1]["x"])
  pool = images.photo_patches()[0]
  assert all((pool == xi).all(axis=(1, 2)).any() for xi in x[:20])


def test_labels_are_grouped_into_the_sampled_classes():
  task = build_task(_config("image_mlp", hidden=(16,), act="relu", batch=32,
                            classes=2))
  _, d = task.init(jax.random.PRNGKey(3))
  assert set(np.unique(np.asarray(d["y"]))) == {0, 1}


def test_a_padded_mlp_bucket_has_the_exact_loss_and_zero_padded_grads():
  cfg = _config("image_mlp", hidden=(16, 32), act="gelu", batch=32,
                classes=5)
  exact = build_task(cfg)
  bucket, hp = buckets.split(cfg)
  assert dict(bucket.params)["pad_hidden"] == (64, 64)
  padded = buckets.make_task(bucket, hp)
  p, d = exact.init(jax.random.PRNGKey(0))
  pp, dp = padded.init(jax.random.PRNGKey(0))
  # The same instance data; the bucket adds its (off) transforms' data.
  np.testing.assert_array_equal(dp["task"]["x"], d["x"])
  # The exact parameters, zero-padded into the bucket's shapes.
  emb = jax.tree.map(
      lambda small, big: jnp.zeros_like(big).at[
          tuple(slice(0, s) for s in small.shape)].set(small), p, pp)
  np.testing.assert_allclose(padded.full_loss(emb, dp),
                             exact.full_loss(p, d), rtol=1e-5)
  g = jax.grad(padded.loss)(emb, dp, jax.random.PRNGKey(1))
  ge = jax.grad(exact.loss)(p, d, jax.random.PRNGKey(1))
  np.testing.assert_allclose(g["w1"][16:], 0.0)
  np.testing.assert_allclose(g["w1"][:, 32:], 0.0)
  np.testing.assert_allclose(g["w0"][:, :16], ge["w0"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family,kw", [
    ("image_mlp", {"hidden": (32,)}), ("image_conv", {"channels": 8}),
    ("image_mlp", {"hidden": (32,), "data": "photo"})])
def test_adam_trains_each_family(family, kw):
  cfg = _config(family, act="relu", batch=64, classes=10, **kw)
  bucket, hp = buckets.split(cfg)
  task = buckets.make_task(bucket, hp)
  p, d = task.init(jax.random.PRNGKey(0))
  opt = optax.adam(3e-3)
  s = opt.init(p)

  @jax.jit
  def step(p, s, k):
    u, s = opt.update(jax.grad(task.loss)(p, d, k), s, p)
    return optax.apply_updates(p, u), s

  f0 = float(task.full_loss(p, d))
  for k in range(150):
    p, s = step(p, s, jax.random.PRNGKey(k))
  assert float(task.full_loss(p, d)) < 0.6 * f0


def test_an_ensemble_without_fashion_mnist_says_how_to_get_it(tmp_path,
                                                            monkeypatch):
  monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(tmp_path))
  monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", str(tmp_path / "no"))
  monkeypatch.setattr(datasets, "_tfds_fashion_mnist", _missing)
  images.pool_images.cache_clear()
  datasets.fashion_mnist_arrays.cache_clear()
  try:
    with pytest.raises(ValueError, match="apt-get install dataset-fashion"):
      Ensemble((("quadratic", 1.0), ("image_conv", 1.0)))
    Ensemble((("quadratic", 1.0), ("image_conv", 0.0)))  # not sampled: fine
  finally:
    images.pool_images.cache_clear()
    datasets.fashion_mnist_arrays.cache_clear()


def _missing(split, data_dir, dirs):
  del split, data_dir
  raise FileNotFoundError(f"Fashion-MNIST not found in {dirs}: `sudo "
                          "apt-get install dataset-fashion-mnist`")


def test_the_im2col_convolution_is_lax_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 7))
  b = jnp.arange(7.0)
  want = jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
  np.testing.assert_allclose(images._conv(x, w, b), want, rtol=1e-5,
                             atol=1e-5)
