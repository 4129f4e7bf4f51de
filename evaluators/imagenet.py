"""ImageNet (ILSVRC 2012) input pipeline for the evaluators, without TensorFlow.

The data is TFDS's ``imagenet2012``, built once from the user's manual
download with ``prepare`` (that step needs TensorFlow) in the ArrayRecord
format, then read by random access through TFDS's data source (what
``tfds.data_source`` returns; no TensorFlow). By default it decodes each JPEG
to a uint8 [H, W, 3] array with OpenCV or PIL; we skip that decoding and get
the encoded JPEG bytes instead, so that decoding and Inception preprocessing
(PIL + numpy) run together in a thread pool (PIL releases the GIL).

Batches are ``{"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B]}``
(eval batches add a ``"mask"``, see ``batches``). Labels are TFDS's: the line
index of the synset in TFDS's ``labels.txt``, in [0, 1000).
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import io
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

NUM_CLASSES = 1000
DATASET = 'imagenet2012'
TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
MANUAL_DIR_CONTENTS = (
    f'The manual dir must hold the two files of the ILSVRC 2012 download '
    f'(https://image-net.org/download-images, registration needed):\n'
    f'  {TRAIN_TAR}  (~138 GB: one <synset>.tar of JPEGs per class)\n'
    f'  {VAL_TAR}    (~6.3 GB: 50,000 JPEGs)')
INSTALL_HINT = 'pip install -e ".[imagenet]"'

# Inception-style random-resized crop (Szegedy et al. 2015; the ranges are
# torchvision's RandomResizedCrop, the slim code uses area [0.05, 1]).
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_CENTRAL_FRACTION = 0.875
_PREFETCH_BATCHES = 2


class TensorFlowMissingError(ImportError, ValueError):
  """Building the dataset needs TensorFlow, which is not installed."""


def default_data_dir() -> str:
  """TFDS's default data dir: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(
      os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _resolve(data_dir: str | None) -> str:
  return os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))


def prepare_command(data_dir: str | None = None) -> str:
  """The shell command that prepares ImageNet into ``data_dir``."""
  return (f'lopt prepare imagenet --manual-dir DIR '
          f'--data-dir {_resolve(data_dir)}')


def prepare(manual_dir: str, data_dir: str | None = None) -> str:
  """Builds TFDS ``imagenet2012`` (ArrayRecord files) from a manual dir.

  Reads ``ILSVRC2012_img_train.tar`` and, if present, ``ILSVRC2012_img_val.tar``
  from ``manual_dir``. Already-prepared data is left as is (without needing
  TensorFlow). The full dataset
  takes hours and ~150 GB in ``data_dir``; TFDS prints progress bars.

  Args:
    manual_dir: directory holding the ILSVRC 2012 tars.
    data_dir: TFDS data dir to build into (default: ``default_data_dir()``).

  Returns:
    The (absolute) data dir.

  Raises:
    FileNotFoundError: ``manual_dir`` or its train tar is missing.
    TensorFlowMissingError: TensorFlow is not installed.
    ValueError: the data dir already holds imagenet2012 in another format.
  """
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  data_dir = _resolve(data_dir)
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
        f'ImageNet manual dir {manual_dir} does not exist.\n'
        f'{MANUAL_DIR_CONTENTS}')
  if not os.path.isfile(os.path.join(manual_dir, TRAIN_TAR)):
    raise FileNotFoundError(
        f'{TRAIN_TAR} not found in the ImageNet manual dir {manual_dir}.\n'
        f'{MANUAL_DIR_CONTENTS}')
  if not os.path.isfile(os.path.join(manual_dir, VAL_TAR)):
    print(f'Warning: {VAL_TAR} not found in {manual_dir}; the validation '
          f'split will be missing.', flush=True)
  if (existing := _find_builder(data_dir)) is not None:
    print(f'{DATASET} is already prepared in {existing.data_dir}.', flush=True)
    return data_dir
  try:
    # pylint: disable-next=g-import-not-at-top,unused-import
    import tensorflow  # noqa: F401
  except ImportError as e:
    raise TensorFlowMissingError(
        f'Building ImageNet needs TensorFlow (reading it does not). '
        f'Install it with: {INSTALL_HINT}') from e
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(DATASET, data_dir=data_dir, file_format='array_record')
  print(f'Building {DATASET} from {manual_dir} into {data_dir} '
        f'(hours for the full dataset).', flush=True)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  _check_format(builder, data_dir)
  print(f'Prepared {DATASET} in {builder.data_dir}: ' + ', '.join(
      f'{k} {v.num_examples}' for k, v in builder.info.splits.items()),
        flush=True)
  return data_dir


def _check_format(builder: Any, data_dir: str) -> None:
  fmt = getattr(builder.info.file_format, 'value', builder.info.file_format)
  if fmt != 'array_record':
    raise ValueError(
        f'{DATASET} in {builder.data_dir} is stored as {fmt}, but reading '
        f'without TensorFlow needs array_record. Delete that directory and '
        f'run: {prepare_command(data_dir)}')


def _find_builder(data_dir: str) -> Any | None:
  """The prepared ``imagenet2012`` builder in ``data_dir``, or None."""
  # Checked before making a builder, which would log warnings.
  if not glob.glob(os.path.join(data_dir, DATASET, '*', 'dataset_info.json')):
    return None
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(DATASET, data_dir=data_dir)
  if not builder.is_prepared():
    return None
  _check_format(builder, data_dir)
  return builder


def _builder(data_dir: str | None) -> Any:
  """The prepared ``imagenet2012`` builder in ``data_dir``, or raises."""
  data_dir = _resolve(data_dir)
  builder = _find_builder(data_dir)
  if builder is None:
    raise FileNotFoundError(
        f'ImageNet ({DATASET}) is not prepared in {data_dir}. Prepare it '
        f'with:\n  {prepare_command(data_dir)}\n{MANUAL_DIR_CONTENTS}\n'
        f'Building needs TensorFlow: {INSTALL_HINT}')
  return builder


def _split_info(builder: Any, split: str) -> Any:
  try:
    return builder.info.splits[split]
  except (KeyError, ValueError) as e:
    raise ValueError(
        f'Split {split!r} of {DATASET} is not in {builder.data_dir} (it has '
        f'{sorted(builder.info.splits.keys())}).') from e


def num_examples(split: str, data_dir: str | None = None) -> int:
  """Number of examples in ``split`` (e.g. ``"train"``, ``"validation"``)."""
  return _split_info(_builder(data_dir), split).num_examples


def _data_source(split: str, data_dir: str | None) -> Any:
  """Random-access source of ``{"image": JPEG bytes, "label": int, ...}``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder(data_dir)
  _split_info(builder, split)
  return builder.as_data_source(
      split=split, decoders={'image': tfds.decode.SkipDecoding()})


def _decode(jpeg: bytes) -> Image.Image:
  img = Image.open(io.BytesIO(jpeg))
  return img if img.mode == 'RGB' else img.convert('RGB')


def random_crop_box(width: int, height: int, rng: np.random.Generator,
                    area_range: tuple[float, float] = AREA_RANGE,
                    aspect_range: tuple[float, float] = ASPECT_RANGE,
                    attempts: int = CROP_ATTEMPTS) -> tuple[int, int, int, int]:
  """Inception random crop box ``(left, top, right, bottom)`` of an image.

  Samples an area fraction uniformly in ``area_range`` and an aspect ratio
  (width / height) log-uniformly in ``aspect_range`` until the crop fits; after
  ``attempts`` misses, falls back to the largest central crop whose aspect
  ratio is within ``aspect_range``.
  """
  area = width * height
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, left + w, top + h
  ratio = width / height
  if ratio < aspect_range[0]:
    w, h = width, min(height, int(round(width / aspect_range[0])))
  elif ratio > aspect_range[1]:
    w, h = min(width, int(round(height * aspect_range[1]))), height
  else:
    w, h = width, height
  left, top = (width - w) // 2, (height - h) // 2
  return left, top, left + w, top + h


def central_crop_box(width: int, height: int,
                     fraction: float = EVAL_CENTRAL_FRACTION
                     ) -> tuple[int, int, int, int]:
  """The box of ``tf.image.central_crop(image, fraction)``."""
  off_w = int((1 - fraction) / 2 * width)
  off_h = int((1 - fraction) / 2 * height)
  return off_w, off_h, width - off_w, height - off_h


def preprocess(jpeg: bytes, image_size: int, *, train: bool,
               rng: np.random.Generator | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
  """Decodes a JPEG and applies Inception preprocessing.

  Train: random-resized crop (``random_crop_box``), bilinear resize to
  ``image_size``, random horizontal flip. Eval: central 87.5% crop, bilinear
  resize. PIL's bilinear filter antialiases when downscaling (unlike
  ``tf.image.resize``'s default). Pixels are then scaled to [-1, 1].

  Args:
    jpeg: encoded image bytes (any format PIL reads; converted to RGB).
    image_size: output side S.
    train: whether to apply the training augmentation (needs ``rng``).
    rng: randomness for the crop and the flip.
    out: optional float32 [S, S, 3] array to write into.

  Returns:
    float32 [S, S, 3] in [-1, 1] (``out`` if given).
  """
  img = _decode(jpeg)
  if train:
    box = random_crop_box(img.width, img.height, rng)
  else:
    box = central_crop_box(img.width, img.height)
  img = img.resize((image_size, image_size), Image.BILINEAR, box=box)
  arr = np.asarray(img)
  if train and rng.random() < 0.5:
    arr = arr[:, ::-1]
  if out is None:
    out = np.empty((image_size, image_size, 3), np.float32)
  np.multiply(arr, np.float32(2 / 255), out=out, casting='unsafe')
  out -= 1
  return out


def _train_indices(n: int, seed: int) -> Iterator[tuple[int, int, int]]:
  """Yields ``(epoch, position, index)``: a fresh permutation per epoch."""
  epoch = 0
  while True:
    perm = np.random.default_rng([seed, 0, epoch]).permutation(n)
    for pos, idx in enumerate(perm):
      yield epoch, pos, int(idx)
    epoch += 1


def batches(split: str, *, batch_size: int, image_size: int,
            data_dir: str | None = None, seed: int = 0, train: bool = True,
            num_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Preprocessed ImageNet batches read from the prepared TFDS data.

  Train (``train=True``): an infinite iterator; each epoch visits ``split`` in
  a new random order, and batches run across epoch boundaries. The order and
  the augmentation depend only on ``seed`` (not on thread timing).

  Eval (``train=False``): one pass over ``split`` in its stored order. The last
  batch is padded to ``batch_size`` with zero images of label 0; eval batches
  carry ``"mask"``, bool [B], False on padding, so that metrics count each
  example exactly once.

  Args:
    split: TFDS split, e.g. ``"train"``, ``"validation"``, ``"train[:1%]"``.
    batch_size: examples per batch, B.
    image_size: image side S (299 for Inception V3, 224 for ResNet V2).
    data_dir: TFDS data dir (default: ``default_data_dir()``).
    seed: shuffling and augmentation seed (train only).
    train: training (augmented, shuffled, infinite) or eval batches.
    num_threads: threads decoding and preprocessing images.

  Yields:
    ``{"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B]}`` (plus
    ``"mask"`` in eval).

  Raises:
    FileNotFoundError: the dataset is not prepared in ``data_dir``; the message
      names the ``lopt prepare imagenet`` command.
  """
  if batch_size < 1 or image_size < 1:
    raise ValueError(f'batch_size and image_size must be positive, got '
                     f'{batch_size} and {image_size}.')
  source = _data_source(split, data_dir)  # raises before the first next()
  return _batches(source, batch_size, image_size, seed, train, num_threads)


def _batches(source: Any, batch_size: int, image_size: int, seed: int,
             train: bool, num_threads: int) -> Iterator[dict[str, np.ndarray]]:
  """The generator behind ``batches``."""
  n = len(source)
  if n == 0:
    raise ValueError('The split is empty.')
  if train:
    stream = _train_indices(n, seed)
  else:
    stream = ((0, i, i) for i in range(n))

  pool = concurrent.futures.ThreadPoolExecutor(
      max_workers=max(num_threads, 1), thread_name_prefix='imagenet')

  def work(jpeg, key, out):
    rng = np.random.default_rng([seed, 1, *key]) if train else None
    preprocess(jpeg, image_size, train=train, rng=rng, out=out)

  def submit() -> tuple[Any, ...] | None:
    """Reads the next batch's records and queues its preprocessing."""
    keys = [k for _, k in zip(range(batch_size), stream)]
    if not keys:
      return None
    records = source.__getitems__([idx for _, _, idx in keys])
    images = np.zeros((batch_size, image_size, image_size, 3), np.float32)
    labels = np.zeros((batch_size,), np.int32)
    labels[:len(keys)] = [r['label'] for r in records]
    futures = [pool.submit(work, r['image'], k[:2], images[i])
               for i, (r, k) in enumerate(zip(records, keys))]
    return images, labels, len(keys), futures

  try:
    pending = collections.deque()
    for _ in range(_PREFETCH_BATCHES):
      if (job := submit()) is not None:
        pending.append(job)
    while pending:
      images, labels, count, futures = pending.popleft()
      for f in futures:
        f.result()
      if (job := submit()) is not None:
        pending.append(job)
      batch = {'image': images, 'label': labels}
      if not train:
        batch['mask'] = np.arange(batch_size) < count
      yield batch
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def synthetic_batches(batch_size: int, image_size: int,
                      num_classes: int = NUM_CLASSES,
                      seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Random ImageNet-shaped batches, for speed benchmarks only.

  Not for evaluation: the images are uniform noise and the labels random.
  To cost nothing per step, this cycles through two pre-generated read-only
  batches, in the format of ``batches(train=True)``.
  """
  rng = np.random.default_rng(seed)
  pool = []
  for _ in range(2):
    image = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3))
    batch = {'image': image.astype(np.float32),
             'label': rng.integers(0, num_classes, batch_size, dtype=np.int32)}
    for v in batch.values():
      v.flags.writeable = False
    pool.append(batch)
  while True:
    yield from pool


__all__ = (
    'NUM_CLASSES', 'TensorFlowMissingError', 'batches', 'central_crop_box',
    'default_data_dir', 'num_examples', 'prepare', 'prepare_command',
    'preprocess', 'random_crop_box', 'synthetic_batches')
