"""Small evaluation datasets: real files, clear errors, deterministic."""

import gzip
import os
import struct

import numpy as np
import pytest

from evaluators import data
from metatrain import datasets


def _write_idx(path, array, gz=True):
  header = bytes([0, 0, 8, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape)
  raw = header + array.astype(np.uint8).tobytes()
  (gzip.open if gz else open)(path, "wb").write(raw)


def _fake_fmnist_dir(tmp_path, n=12, truncate=False):
  d = tmp_path / "fmnist"
  d.mkdir()
  rng = np.random.default_rng(0)
  for split, (img, lab) in datasets._FMNIST_FILES.items():  # pylint: disable=protected-access
    _write_idx(str(d / (img + ".gz")),
               rng.integers(0, 256, (n, 28, 28)))
    _write_idx(str(d / (lab + ".gz")), rng.integers(0, 10, (n,)))
  if truncate:
    raw = gzip.open(d / "train-images-idx3-ubyte.gz").read()
    gzip.open(d / "train-images-idx3-ubyte.gz", "wb").write(raw[:-100])
  return d


@pytest.fixture(autouse=True)
def _fresh_cache():
  data.fashion_mnist_arrays.cache_clear()
  yield
  data.fashion_mnist_arrays.cache_clear()


def test_fashion_mnist_from_idx_files_in_the_env_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(data.FASHION_MNIST_ENV, str(_fake_fmnist_dir(tmp_path)))
  a = data.fashion_mnist_arrays("train")
  assert a["image"].shape == (12, 28, 28, 1) and a["image"].dtype == np.float32
  assert a["label"].dtype == np.int32 and a["label"].max() < 10


def test_a_truncated_idx_file_is_an_error_naming_the_file(tmp_path,
                                                          monkeypatch):
  d = _fake_fmnist_dir(tmp_path, truncate=True)
  monkeypatch.setenv(data.FASHION_MNIST_ENV, str(d))
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*trunc"):
    data.fashion_mnist_arrays("train")


def test_missing_fashion_mnist_names_the_install_command(tmp_path,
                                                         monkeypatch):
  monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
  monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", str(tmp_path / "none"))
  with pytest.raises(FileNotFoundError,
                     match="apt-get install dataset-fashion-mnist"):
    data.fashion_mnist_arrays("test", data_dir=str(tmp_path / "tfds"))


@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST),
                    reason="needs Debian's dataset-fashion-mnist (.ci/run "
                    "installs it)")
def test_debian_fashion_mnist_is_the_real_dataset():
  train, test = data.fashion_mnist_arrays("train"), data.fashion_mnist_arrays(
      "test")
  assert train["image"].shape == (60000, 28, 28, 1)
  assert test["image"].shape == (10000, 28, 28, 1)
  assert np.bincount(test["label"]).tolist() == [1000] * 10
  assert abs(float(train["image"].mean())) < 0.05  # standardized


def test_digits_splits_and_batches_are_deterministic():
  train, test = data.digits_arrays("train"), data.digits_arrays("test")
  assert len(train["label"]) == 1500 and len(test["label"]) == 297
  assert train["image"].shape[1:] == (8, 8, 1) and train["image"].max() <= 1
  a = [next(data.digits("train", 32, seed=5)) for _ in range(2)]
  b, c = data.digits("train", 32, seed=5), data.digits("train", 32, seed=6)
  first_b, first_c = next(b), next(c)
  np.testing.assert_array_equal(a[0]["label"], first_b["label"])
  assert not np.array_equal(first_b["label"], first_c["label"])
  with pytest.raises(ValueError, match="exceeds"):
    next(data.array_batches(test, 1000, 0))
