"""The ImageNet data path: TFDS build from a manual dir, reading, errors."""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from evaluators import imagenet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
S = 24  # small image side keeps the tests fast


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_prepare_builds_the_manual_dir(fake_imagenet_manual,
                                       fake_imagenet_data_dir):
  fake = fake_imagenet_manual
  assert imagenet.num_examples('train', fake_imagenet_data_dir) == 12
  assert imagenet.num_examples('validation', fake_imagenet_data_dir) == 6
  # TFDS labels each file as we expect: synset line of labels.txt, and
  # validation_labels.txt zipped with the sorted validation file names.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for split, expected in (('train', fake.train_labels),
                          ('validation', fake.val_labels)):
    source = tfds.data_source('imagenet2012', split=split, download=False,
                              data_dir=fake_imagenet_data_dir)
    got = {ex['file_name'].decode(): ex['label'] for ex in source}
    assert got == expected
    # Without a decoder, data_source decodes JPEGs to uint8 arrays (3
    # channels, even for the grayscale files).
    assert source[0]['image'].dtype == np.uint8
    assert source[0]['image'].shape[-1] == 3
  # Preparing again reuses the data.
  assert imagenet.prepare(fake.manual_dir, fake_imagenet_data_dir) == (
      fake_imagenet_data_dir)


def test_train_batches(fake_imagenet_manual, fake_imagenet_data_dir):
  def make(seed):
    return imagenet.batches('train', batch_size=5, image_size=S, seed=seed,
                            data_dir=fake_imagenet_data_dir, num_threads=2)

  first = _take(make(0), 4)  # 20 examples: crosses an epoch (12) boundary
  for b in first:
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (5, S, S, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (5,) and b['label'].dtype == np.int32
    assert b['image'].min() >= -1 and b['image'].max() <= 1
    assert b['image'].std() > 0.05
    assert set(b['label'].tolist()) <= fake_imagenet_manual.train_label_ids
  # The first epoch visits every example once.
  epoch = np.concatenate([b['label'] for b in first])[:12]
  assert collections.Counter(epoch.tolist()) == collections.Counter(
      fake_imagenet_manual.train_labels.values())

  again = _take(make(0), 4)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other = _take(make(1), 4)
  assert not all(np.array_equal(a['image'], b['image'])
                 for a, b in zip(first, other))


def test_eval_batches_cover_validation(fake_imagenet_manual,
                                       fake_imagenet_data_dir):
  out = list(imagenet.batches('validation', batch_size=4, image_size=S,
                              train=False, data_dir=fake_imagenet_data_dir,
                              num_threads=2))
  assert len(out) == 2
  mask = np.concatenate([b['mask'] for b in out])
  np.testing.assert_array_equal(mask, [True] * 6 + [False] * 2)
  labels = np.concatenate([b['label'] for b in out])[mask]
  assert sorted(labels.tolist()) == sorted(
      fake_imagenet_manual.val_labels.values())
  images = np.concatenate([b['image'] for b in out])
  assert images.shape == (8, S, S, 3)
  assert np.all(images[6:] == 0)
  assert images[:6].min() >= -1 and images[:6].max() <= 1
  # Eval preprocessing is deterministic.
  out2 = list(imagenet.batches('validation', batch_size=4, image_size=S,
                               train=False, data_dir=fake_imagenet_data_dir))
  np.testing.assert_array_equal(out2[0]['image'], out[0]['image'])


def test_missing_dataset_names_the_prepare_command(tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'empty')
  for call in (
      lambda: imagenet.batches('train', batch_size=2, image_size=S,
                               data_dir=data_dir),
      lambda: imagenet.num_examples('validation', data_dir)):
    with pytest.raises(FileNotFoundError) as e:
      call()
    msg = str(e.value)
    assert f'lopt prepare imagenet --manual-dir DIR --data-dir {data_dir}' in (
        msg)
    assert imagenet.TRAIN_TAR in msg and imagenet.VAL_TAR in msg
  # The default data dir follows TFDS_DATA_DIR.
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'env'))
  assert imagenet.default_data_dir() == str(tmp_path / 'env')
  with pytest.raises(FileNotFoundError, match='--data-dir .*env'):
    imagenet.num_examples('train')


def test_missing_manual_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    imagenet.prepare(str(tmp_path / 'nope'), str(tmp_path / 'data'))
  (tmp_path / 'manual').mkdir()
  with pytest.raises(FileNotFoundError, match=imagenet.TRAIN_TAR):
    imagenet.prepare(str(tmp_path / 'manual'), str(tmp_path / 'data'))
  assert not (tmp_path / 'data').exists()


def test_missing_split(fake_imagenet_data_dir):
  with pytest.raises(ValueError, match='test'):
    imagenet.batches('test', batch_size=2, image_size=S,
                     data_dir=fake_imagenet_data_dir)


_NO_TF = textwrap.dedent('''
    import importlib.machinery, json, sys
    attempts = []

    class NoTF:
      """Makes `import tensorflow` fail, as if it were not installed."""

      def find_spec(self, name, path=None, target=None):
        if name == 'tensorflow' or name.startswith('tensorflow.'):
          return importlib.machinery.ModuleSpec(name, self)
        return None

      def create_module(self, spec):
        attempts.append(spec.name)
        raise ModuleNotFoundError(f'No module named {spec.name!r}')

      def exec_module(self, module):
        pass

    sys.meta_path.insert(0, NoTF())
    sys.path.insert(0, ROOT)
    from evaluators import imagenet
    train = next(imagenet.batches('train', batch_size=3, image_size=16,
                                  data_dir=DATA_DIR, num_threads=2))
    val = next(imagenet.batches('validation', batch_size=3, image_size=16,
                                train=False, data_dir=DATA_DIR))
    read_attempts = list(attempts)
    assert imagenet.prepare(MANUAL_DIR, DATA_DIR) == DATA_DIR  # no-op
    try:
      imagenet.prepare(MANUAL_DIR, DATA_DIR + '_new')
      error = None
    except imagenet.TensorFlowMissingError as e:
      error = str(e)
    print(json.dumps(dict(
        shapes=[train['image'].shape, val['image'].shape],
        read_attempts=read_attempts, error=error,
        tf_loaded='tensorflow' in sys.modules)))
''')


def test_reading_without_tensorflow(fake_imagenet_manual,
                                    fake_imagenet_data_dir):
  code = (f'ROOT = {ROOT!r}\nDATA_DIR = {fake_imagenet_data_dir!r}\n'
          f'MANUAL_DIR = {fake_imagenet_manual.manual_dir!r}\n' + _NO_TF)
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, timeout=300, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['shapes'] == [[3, 16, 16, 3], [3, 16, 16, 3]]
  assert result['read_attempts'] == []
  assert not result['tf_loaded']
  assert 'pip install -e ".[imagenet]"' in result['error']


def test_random_crop_box():
  rng = np.random.default_rng(0)
  for _ in range(200):
    w, h = (int(v) for v in rng.integers(10, 500, 2))
    left, top, right, bottom = imagenet.random_crop_box(w, h, rng)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
  # Extreme aspect ratios fall back to a central crop at the nearest ratio.
  box = imagenet.random_crop_box(400, 10, rng, attempts=0)
  assert box == (193, 0, 206, 10)
  assert imagenet.random_crop_box(30, 40, rng, attempts=0) == (0, 0, 30, 40)
  # Accepted crops are within the area and aspect ranges (up to rounding).
  for _ in range(200):
    l, t, r, b = imagenet.random_crop_box(1000, 800, rng)
    area, aspect = (r - l) * (b - t) / 8e5, (r - l) / (b - t)
    assert 0.079 <= area <= 1 and 0.74 <= aspect <= 1.34
  assert imagenet.central_crop_box(100, 80) == (6, 5, 94, 75)


def test_preprocess_values():
  buf = io.BytesIO()
  Image.new('L', (50, 30), color=255).save(buf, format='PNG')
  for train in (True, False):
    out = imagenet.preprocess(buf.getvalue(), 8, train=train,
                              rng=np.random.default_rng(0))
    assert out.shape == (8, 8, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_synthetic_batches():
  it = imagenet.synthetic_batches(4, 8, num_classes=10)
  b = next(it)
  assert b['image'].shape == (4, 8, 8, 3) and b['image'].dtype == np.float32
  assert b['label'].dtype == np.int32 and b['label'].max() < 10
  assert b['image'].min() >= -1 and b['image'].max() <= 1
  assert not np.array_equal(next(it)['image'], b['image'])
