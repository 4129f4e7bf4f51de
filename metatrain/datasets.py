"""Small real image datasets, read offline: Fashion-MNIST and digits.

* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` idx files (or
  ``$LOPT_FASHION_MNIST_DIR``), or TFDS's ``fashion_mnist`` when prepared.
* Digits: scikit-learn's bundled 8x8 digits.

The evaluators (``evaluators.data``) and the meta-training image tasks
(``metatrain.tasks.images``) read them here. A missing dataset raises
``FileNotFoundError`` naming the command or path that provides it; nothing
ever falls back to fake data.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct

import numpy as np

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "LOPT_FASHION_MNIST_DIR"
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530
DIGITS_TRAIN = 1500  # of sklearn's 1,797 digits; the rest is the test split


def _read_idx(path: str) -> np.ndarray:
  """Reads an idx file (optionally gzipped), checking its header."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read idx file ({e}); reinstall the "
                     "dataset") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
    raise ValueError(f"{path}: not an unsigned-byte idx file")
  ndim = raw[3]
  dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: truncated idx file ({data.size} of "
                     f"{int(np.prod(dims))} values); reinstall the dataset")
  return data.reshape(dims)


def _find_idx(directory: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return None


@functools.lru_cache(maxsize=4)
def fashion_mnist_arrays(split: str = "train", data_dir: str = ""
                         ) -> dict[str, np.ndarray]:
  """Fashion-MNIST ``{"image": float32 [N,28,28,1], "label": int32 [N]}``.

  Looks in ``$LOPT_FASHION_MNIST_DIR``, then Debian's
  ``/usr/share/datasets/fashion-mnist``, then TFDS's prepared
  ``fashion_mnist`` in ``data_dir``. Images are standardized.
  """
  if split not in _FMNIST_FILES:
    raise ValueError(f"fashion_mnist split must be train or test, got "
                     f"{split!r}")
  dirs = [d for d in (os.environ.get(FASHION_MNIST_ENV, ""),
                      DEBIAN_FASHION_MNIST) if d]
  for d in dirs:
    img, lab = (_find_idx(d, s) for s in _FMNIST_FILES[split])
    if img and lab:
      images, labels = _read_idx(img), _read_idx(lab)
      break
  else:
    images, labels = _tfds_fashion_mnist(split, data_dir, dirs)
  if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
    raise ValueError(f"fashion_mnist {split}: unexpected shapes "
                     f"{images.shape} / {labels.shape}")
  x = (images.astype(np.float32) / 255.0 - _FMNIST_MEAN) / _FMNIST_STD
  return {"image": x[..., None], "label": labels.astype(np.int32)}


def _tfds_fashion_mnist(split: str, data_dir: str, dirs: list[str]):
  missing = FileNotFoundError(
      f"Fashion-MNIST not found: no idx files in {' or '.join(dirs)} and no "
      "prepared TFDS fashion_mnist. Install it with `sudo apt-get install "
      f"dataset-fashion-mnist` (Debian), or point ${FASHION_MNIST_ENV} at a "
      "directory holding train-images-idx3-ubyte.gz etc.")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = tfds.builder("fashion_mnist", data_dir=data_dir or None)
    if not builder.is_prepared():
      raise missing
    source = tfds.data_source("fashion_mnist", split=split,
                              data_dir=data_dir or None)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise missing from e
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(e["image"])[..., 0] for e in examples])
  labels = np.array([int(e["label"]) for e in examples])
  return images, labels


@functools.lru_cache(maxsize=4)
def digits_arrays(split: str = "train") -> dict[str, np.ndarray]:
  """scikit-learn's digits ``{"image": [N,8,8,1] in [0,1], "label": [N]}``.

  A fixed permutation puts 1,500 digits in ``train`` and 297 in ``test``.
  """
  if split not in ("train", "test"):
    raise ValueError(f"digits split must be train or test, got {split!r}")
  try:
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FileNotFoundError("the digits dataset comes with scikit-learn: "
                            "pip install scikit-learn") from e
  d = load_digits()
  order = np.random.default_rng(0).permutation(len(d.target))
  idx = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
  x = (d.images[idx] / 16.0).astype(np.float32)[..., None]
  return {"image": x, "label": d.target[idx].astype(np.int32)}
