"""A tiny fake ImageNet manual dir, laid out like the real download.

``make_manual_dir`` writes the two tars that TFDS's ``imagenet2012`` builder
reads from its manual dir:

* ``ILSVRC2012_img_train.tar``: one ``<synset>.tar`` per class, each holding
  ``<synset>_<i>.JPEG`` images. The synsets are real ones, the first
  ``num_synsets`` lines of TFDS's bundled ``labels.txt``.
* ``ILSVRC2012_img_val.tar``: ``ILSVRC2012_val_<8 digits>.JPEG`` images. TFDS
  labels them by zipping the *sorted* file names with its bundled
  ``validation_labels.txt``, so the first ``num_val`` names get its first
  ``num_val`` labels.

The images are random-noise JPEGs of varying sizes and aspect ratios (to
exercise the crop code), in RGB except for one grayscale image per split.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile

import numpy as np
from PIL import Image

_TFDS_DIR = 'datasets/imagenet2012'


def _tfds_file(name: str) -> str:
  """Returns the path of a file bundled with TFDS's imagenet2012 builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(tfds.__file__), _TFDS_DIR, name)


def _read_lines(name: str) -> list[str]:
  with open(_tfds_file(name)) as f:
    return f.read().strip().splitlines()


def synset_names() -> list[str]:
  """All 1000 synsets in TFDS label order (label id = line index)."""
  return _read_lines('labels.txt')


def validation_synsets() -> list[str]:
  """Synset of each validation image, in sorted file-name order."""
  return _read_lines('validation_labels.txt')


@dataclasses.dataclass(frozen=True)
class FakeImageNet:
  """What ``make_manual_dir`` wrote.

  Attributes:
    manual_dir: the directory holding the two tars.
    train_labels: label id of each training image, keyed by file name.
    val_labels: label id of each validation image, keyed by file name.
  """

  manual_dir: str
  train_labels: dict[str, int]
  val_labels: dict[str, int]

  @property
  def train_label_ids(self) -> set[int]:
    return set(self.train_labels.values())


def _jpeg_bytes(rng: np.random.Generator, size: tuple[int, int],
                gray: bool = False) -> bytes:
  """A random JPEG of ``size`` = (width, height), with a smooth pattern."""
  w, h = size
  # Low-frequency noise upsampled, so that crops and resizes are visible.
  base = rng.integers(0, 256, size=(max(h // 8, 1), max(w // 8, 1), 3),
                      dtype=np.uint8)
  img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
  if gray:
    img = img.convert('L')
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(data))


def _vary(rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int]:
  """A size around ``size`` with a random aspect ratio in about [1/2, 2]."""
  w, h = size
  scale = rng.uniform(0.7, 1.5)
  aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
  area = w * h * scale**2
  return (max(int(round(np.sqrt(area * aspect))), 8),
          max(int(round(np.sqrt(area / aspect))), 8))


def make_manual_dir(path: str, num_synsets: int = 3, train_per_synset: int = 4,
                    num_val: int = 6, size: tuple[int, int] = (40, 32),
                    seed: int = 0) -> FakeImageNet:
  """Writes a tiny ImageNet manual dir at ``path`` (created if needed).

  Args:
    path: the manual dir to write.
    num_synsets: number of training classes (the first synsets of labels.txt).
    train_per_synset: training images per class.
    num_val: number of validation images.
    size: typical (width, height) of an image; each varies around it.
    seed: seed for the image contents and sizes.

  Returns:
    A FakeImageNet describing what was written.
  """
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  names = synset_names()
  label_of = {s: i for i, s in enumerate(names)}

  train_labels = {}
  with tarfile.open(os.path.join(path, 'ILSVRC2012_img_train.tar'), 'w') as tar:
    for k, synset in enumerate(names[:num_synsets]):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as sub:
        for i in range(train_per_synset):
          fname = f'{synset}_{i}.JPEG'
          gray = k == 0 and i == 0
          _add_bytes(sub, fname, _jpeg_bytes(rng, _vary(rng, size), gray))
          train_labels[fname] = label_of[synset]
      _add_bytes(tar, f'{synset}.tar', inner.getvalue())

  val_synsets = validation_synsets()
  val_labels = {}
  with tarfile.open(os.path.join(path, 'ILSVRC2012_img_val.tar'), 'w') as tar:
    for i in range(num_val):
      fname = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
      _add_bytes(tar, fname, _jpeg_bytes(rng, _vary(rng, size), gray=i == 0))
      val_labels[fname] = label_of[val_synsets[i]]
  return FakeImageNet(path, train_labels, val_labels)
