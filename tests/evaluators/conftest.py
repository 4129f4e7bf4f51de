"""Shared fixtures for the evaluator tests: a tiny fake ImageNet in TFDS."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import filelock
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Tests run with --import-mode=importlib and tests/ is not a package: make the
# helper modules next to this file importable as plain modules.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable-next=g-import-not-at-top,wrong-import-position
import fake_imagenet  # noqa: E402


@pytest.fixture(scope='session')
def fake_imagenet_manual(tmp_path_factory) -> fake_imagenet.FakeImageNet:
  """A tiny ImageNet manual dir (3 synsets x 4 train images, 6 val images)."""
  return fake_imagenet.make_manual_dir(
      str(tmp_path_factory.mktemp('imagenet_manual')))


@pytest.fixture(scope='session')
def fake_imagenet_data_dir(tmp_path_factory, fake_imagenet_manual) -> str:
  """TFDS data dir holding imagenet2012 built from ``fake_imagenet_manual``.

  Built once per test run as a user does, with ``lopt prepare imagenet``
  (``evaluators.imagenet.prepare``; needs TensorFlow, which stays out of the
  test process; a few seconds, mostly importing it). Under pytest-xdist
  the workers share one build (the manual dir is deterministic, so every
  worker's copy of it is the same): the first to get the lock builds it.
  """
  if not os.environ.get('PYTEST_XDIST_WORKER'):  # one process: no sharing
    return _prepare(str(tmp_path_factory.mktemp('tfds')),
                    fake_imagenet_manual)
  shared = tmp_path_factory.getbasetemp().parent  # this run's, all workers
  data_dir = shared / 'tfds-imagenet'
  with filelock.FileLock(str(shared / 'tfds-imagenet.lock')):
    if not (shared / 'tfds-imagenet.done').exists():
      _prepare(str(data_dir), fake_imagenet_manual)
      (shared / 'tfds-imagenet.done').write_text('ok')
  return str(data_dir)


def _prepare(data_dir: str, manual: fake_imagenet.FakeImageNet) -> str:
  out = subprocess.run(
      [sys.executable, '-m', 'infra.cli', 'prepare', 'imagenet',
       '--manual-dir', manual.manual_dir, '--data-dir', data_dir], cwd=ROOT,
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'imagenet2012 is ready in' in out.stdout
  return data_dir
