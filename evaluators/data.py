"""Evaluation datasets: each returns an iterator of numpy batches.

* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` idx files, or TFDS's
  ``fashion_mnist`` when prepared.
* Digits: scikit-learn's bundled 8x8 digits.
* ImageNet: TFDS ``imagenet2012`` built from the user's manual dir
  (``evaluators.imagenet``).
* Simulated retina: ``evaluators.retina_sim``.

A missing dataset raises ``FileNotFoundError`` naming the command or path
that provides it; nothing ever falls back to fake data.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from metatrain.datasets import (DEBIAN_FASHION_MNIST, FASHION_MNIST_ENV,
                                digits_arrays, fashion_mnist_arrays)

__all__ = ["DEBIAN_FASHION_MNIST", "FASHION_MNIST_ENV", "array_batches",
           "digits", "digits_arrays", "fashion_mnist",
           "fashion_mnist_arrays", "imagenet", "retina"]


def array_batches(arrays: dict[str, np.ndarray], batch_size: int,
                  seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled minibatches of in-memory arrays (same seed, same
  batches). Each epoch is a new permutation; batches never straddle two."""
  n = len(next(iter(arrays.values())))
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} examples")
  rng = np.random.default_rng(seed)
  while True:
    perm = rng.permutation(n)
    for i in range(0, n - batch_size + 1, batch_size):
      idx = perm[i:i + batch_size]
      yield {k: v[idx] for k, v in arrays.items()}


def fashion_mnist(split: str, batch_size: int, seed: int,
                  data_dir: str = "") -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled Fashion-MNIST batches."""
  return array_batches(fashion_mnist_arrays(split, data_dir), batch_size,
                       seed)


def digits(split: str, batch_size: int, seed: int
           ) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled digits batches."""
  return array_batches(digits_arrays(split), batch_size, seed)


def imagenet(split: str, batch_size: int, seed: int, *, image_size: int,
             data_dir: str = "", train: bool = True
             ) -> Iterator[dict[str, np.ndarray]]:
  """ImageNet batches with Inception preprocessing (``evaluators.imagenet``)."""
  from evaluators import imagenet as imagenet_lib  # pylint: disable=import-outside-toplevel
  return imagenet_lib.batches(split, batch_size=batch_size,
                              image_size=image_size, data_dir=data_dir or None,
                              seed=seed, train=train)


def retina(config, batch_size: int, seed: int
           ) -> Iterator[dict[str, np.ndarray]]:
  """Simulated retina batches (``evaluators.retina_sim``)."""
  from evaluators import retina_sim  # pylint: disable=import-outside-toplevel
  return retina_sim.retina_batches(config, batch_size, seed)
