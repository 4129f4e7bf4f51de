"""Tests of the Orbax checkpointing of the meta-training state (real files)."""

import json
import os
import shutil
import warnings

import jax
import numpy as np
import optax
import pytest

from metatrain.distributed.checkpoints import CheckpointConfig, Checkpointer
from metatrain.optimizer import hrnn

THETA = hrnn.init_theta(jax.random.PRNGKey(0), hrnn.HRNNConfig())
OPT = optax.adam(1e-3)
CONFIG = {"hrnn": {"param_units": 10, "tuple": [1, 2]}, "lr": 1e-3,
          "name": "run", "flag": True, "none": None}
EVERY = CheckpointConfig(keep_last=100, save_every=1)


def _opt_state(theta):
  """An adam state with non-trivial values (count 3, non-zero moments)."""
  state = OPT.init(theta)
  for _ in range(3):
    _, state = OPT.update(jax.tree.map(lambda x: x + 1.0, theta), state)
  return state


OPT_STATE = _opt_state(THETA)


def _rng_state(seed=123):
  return np.random.default_rng(seed).bit_generator.state


def _save(ckpt, step, **kw):
  args = dict(theta=THETA, opt_state=OPT_STATE, counters={"accepted": step},
              rng_state=_rng_state(), config=CONFIG)
  args.update(kw)
  return ckpt.save(step, **args)


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def _populated(tmp_path, steps, cfg=EVERY):
  with Checkpointer(str(tmp_path), cfg) as ckpt:
    for s in steps:
      assert _save(ckpt, s)
  return tmp_path / "checkpoints"


def test_async_round_trip_in_new_process_object(tmp_path):
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(save_every=50))
  assert ckpt.latest_step() is None
  assert _save(ckpt, 50, counters={"accepted": 7, "stale": 2})
  ckpt.wait()
  assert ckpt.all_steps() == [50]
  ckpt.close()

  reader = Checkpointer(str(tmp_path), read_only=True)
  out = reader.restore(opt_state_template=OPT.init(THETA))
  assert out["step"] == 50
  _assert_bitwise_equal(out["theta"], THETA)
  assert jax.tree.structure(out["theta"]) == jax.tree.structure(THETA)
  assert (jax.tree.structure(out["opt_state"])
          == jax.tree.structure(OPT_STATE))
  assert isinstance(out["opt_state"][0], optax.ScaleByAdamState)
  _assert_bitwise_equal(out["opt_state"], OPT_STATE)
  assert int(out["opt_state"][0].count) == 3
  assert out["counters"] == {"accepted": 7, "stale": 2}
  assert out["rng_state"] == _rng_state()  # incl. 128-bit ints
  gen = np.random.default_rng()
  gen.bit_generator.state = out["rng_state"]
  np.testing.assert_array_equal(gen.random(4),
                                np.random.default_rng(123).random(4))
  assert out["config"] == {**CONFIG, "hrnn": {"param_units": 10,
                                              "tuple": [1, 2]}}
  # The restored state drives the meta-optimizer like the original one.
  g = jax.tree.map(np.ones_like, THETA)
  u1, _ = OPT.update(g, OPT_STATE)
  u2, _ = OPT.update(g, out["opt_state"])
  _assert_bitwise_equal(u1, u2)

  config, theta = reader.restore_lopt()
  assert config == out["config"]
  _assert_bitwise_equal(theta, THETA)
  reader.close()


def test_cadence_and_resume_latest(tmp_path):
  with Checkpointer(str(tmp_path), CheckpointConfig(save_every=10)) as ckpt:
    saved = [s for s in range(1, 26) if _save(ckpt, s)]
    assert saved == [10, 20]
    assert _save(ckpt, 25, force=True)
    assert not _save(ckpt, 25, force=True)  # already saved
    ckpt.wait()
    assert ckpt.latest_step() == 25
  again = Checkpointer(str(tmp_path), CheckpointConfig(save_every=10))
  assert again.all_steps() == [10, 20, 25]
  assert again.latest_step() == 25
  out = again.restore(opt_state_template=OPT_STATE)
  assert out["step"] == 25 and out["counters"] == {"accepted": 25}
  assert again.restore(20, opt_state_template=OPT_STATE)["step"] == 20
  assert _save(again, 30)
  again.close()
  assert Checkpointer(str(tmp_path), read_only=True).latest_step() == 30


@pytest.mark.parametrize("keep_last,keep_every,expected", [
    (2, 5, [5, 10, 11, 12]),
    (3, 0, [10, 11, 12]),
    (1, 4, [4, 8, 12]),
])
def test_retention(tmp_path, keep_last, keep_every, expected):
  cfg = CheckpointConfig(keep_last=keep_last, keep_every=keep_every,
                         save_every=1)
  root = _populated(tmp_path, range(1, 13), cfg)
  assert sorted(int(p) for p in os.listdir(root)) == expected
  assert Checkpointer(str(tmp_path), read_only=True).all_steps() == expected


def test_retention_across_reopen(tmp_path):
  cfg = CheckpointConfig(keep_last=2, keep_every=5, save_every=1)
  _populated(tmp_path, range(1, 13), cfg)
  with Checkpointer(str(tmp_path), cfg) as ckpt:
    assert _save(ckpt, 13)
  assert Checkpointer(str(tmp_path), cfg).all_steps() == [5, 10, 12, 13]


def test_incomplete_and_foreign_entries_are_skipped(tmp_path):
  root = _populated(tmp_path, [1, 2, 3])
  (root / "99").mkdir()  # bare numbered dir, no commit metadata
  (root / "100.orbax-checkpoint-tmp-123").mkdir()  # interrupted save
  (root / "notes").mkdir()
  (root / "foo.txt").write_text("hello")
  partial = root / "98"  # commit metadata but items missing
  partial.mkdir()
  shutil.copy(root / "3" / "_CHECKPOINT_METADATA", partial)
  junk = {"99", "100.orbax-checkpoint-tmp-123", "notes", "foo.txt", "98"}

  for read_only in (True, False):
    with pytest.warns(UserWarning) as rec:
      ckpt = Checkpointer(str(tmp_path), EVERY, read_only=read_only)
    messages = [str(w.message) for w in rec]
    for name in junk:
      assert any(f"{os.sep}{name}: " in m and "skipped" in m
                 for m in messages), (name, messages)
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # each entry is reported only once
      assert ckpt.latest_step() == 3
      assert ckpt.all_steps() == [1, 2, 3]
      out = ckpt.restore(opt_state_template=OPT_STATE)
    assert out["step"] == 3
    _assert_bitwise_equal(out["theta"], THETA)
    with pytest.raises(ValueError, match="99"):
      ckpt.restore(99, opt_state_template=OPT_STATE)
    with pytest.raises(ValueError, match="98"):
      ckpt.restore_lopt(98)
    if not read_only:
      for s in range(4, 8):  # retention must not touch the junk
        assert _save(ckpt, s)
      assert _save(ckpt, 99)  # the bare dir is set aside, never in the way
      ckpt.wait()
      assert ckpt.all_steps() == [1, 2, 3, 4, 5, 6, 7, 99]
    ckpt.close()
  names = set(os.listdir(root))
  assert junk - {"99"} <= names
  aside = [n for n in names if n.startswith("99.corrupt-")]
  assert len(aside) == 1 and not os.listdir(root / aside[0])


def _data_files(step_dir):
  for item in ("lopt", "state"):
    for dirpath, _, files in os.walk(step_dir / item):
      for f in files:
        if os.sep + "d" in dirpath:  # ocdbt data files
          yield os.path.join(dirpath, f)


@pytest.mark.filterwarnings(  # Orbax's async cleanup after the failed read
    "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_checkpoint_raises_value_error(tmp_path, how):
  root = _populated(tmp_path, [1, 2])
  files = list(_data_files(root / "2"))
  assert files
  for f in files:
    data = bytearray(open(f, "rb").read())
    if how == "truncate":
      data = data[:len(data) // 2]
    else:  # same size, flipped payload bytes
      for i in range(len(data) // 2, len(data) - 8):
        data[i] ^= 0x5A
    open(f, "wb").write(bytes(data))
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.latest_step() == 2  # complete on disk, corrupt inside
  step_dir = str(root / "2")
  with pytest.raises(ValueError, match=f"{step_dir}.*earlier step"):
    ckpt.restore(opt_state_template=OPT_STATE)
  with pytest.raises(ValueError, match=f"{step_dir}.*earlier step"):
    ckpt.restore_lopt()
  _assert_bitwise_equal(ckpt.restore(1, opt_state_template=OPT_STATE)["theta"],
                        THETA)


@pytest.mark.parametrize("item", ["lopt_meta", "state_meta"])
def test_digest_mismatch_raises_value_error(tmp_path, item):
  """Data that decodes but differs from what was saved is never returned."""
  root = _populated(tmp_path, [1])
  meta_file = root / "1" / item / "metadata"
  meta = json.loads(meta_file.read_text())
  meta["theta_digest"] = "0" * 64
  meta_file.write_text(json.dumps(meta))
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(ValueError, match=f"{root / '1'} is corrupt: theta"):
    ckpt.restore(opt_state_template=OPT_STATE)
  if item == "lopt_meta":
    with pytest.raises(ValueError, match="corrupt"):
      ckpt.restore_lopt()
  else:
    _assert_bitwise_equal(ckpt.restore_lopt()[1], THETA)


def test_read_only(tmp_path):
  reader = Checkpointer(str(tmp_path), read_only=True)
  assert reader.latest_step() is None and reader.all_steps() == []
  assert not (tmp_path / "checkpoints").exists()  # nothing created
  with pytest.raises(FileNotFoundError):
    reader.restore_lopt()
  with pytest.raises(PermissionError, match="read-only"):
    _save(reader, 50, force=True)

  root = _populated(tmp_path, [1, 2, 3, 4],
                    CheckpointConfig(keep_last=2, save_every=1))
  before = sorted(os.listdir(root))
  assert reader.all_steps() == [3, 4]  # sees steps written after it opened
  with pytest.raises(PermissionError, match="read-only"):
    _save(reader, 5, force=True)
  assert reader.restore(opt_state_template=OPT_STATE)["step"] == 4
  reader.close()
  other = Checkpointer(str(tmp_path), CheckpointConfig(keep_last=1),
                       read_only=True)  # read-only: no retention deletions
  assert other.restore_lopt(3)[0] == CONFIG | {"hrnn": {"param_units": 10,
                                                         "tuple": [1, 2]}}
  other.close()
  assert sorted(os.listdir(root)) == before


def test_template_mismatch_raises(tmp_path):
  _populated(tmp_path, [1])
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(ValueError, match="opt_state_template"):
    ckpt.restore(opt_state_template=optax.sgd(0.1, 0.9).init(THETA))


def test_invalid_config():
  with pytest.raises(ValueError, match="keep_last"):
    Checkpointer("/nonexistent", CheckpointConfig(keep_last=0))


def _flip_data(step_dir):
  for f in _data_files(step_dir):
    data = bytearray(open(f, "rb").read())
    for i in range(len(data) // 2, len(data) - 8):
      data[i] ^= 0x5A
    open(f, "wb").write(bytes(data))


@pytest.mark.filterwarnings(  # Orbax's async cleanup after the failed read
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_sets_aside_incomplete_and_corrupt_steps(tmp_path):
  from metatrain.distributed import launcher
  root = _populated(tmp_path, [2, 4, 6])
  (root / "6" / "_CHECKPOINT_METADATA").write_text("")  # emptied: incomplete
  _flip_data(root / "4")  # complete on disk, corrupt inside
  (root / "8.orbax-checkpoint-tmp-1").mkdir()  # a save that never finished
  lines = []
  with pytest.warns(UserWarning, match="skipped"):
    ckpt = Checkpointer(str(tmp_path), EVERY)
  with ckpt:
    r = launcher.resume(ckpt, OPT_STATE, log=lines.append)
    assert r["step"] == 2
    _assert_bitwise_equal(r["theta"], THETA)
    _assert_bitwise_equal(r["opt_state"], OPT_STATE)
    assert ckpt.all_steps() == [2]
    for s in (4, 6, 8):  # the set-aside steps never get in a save's way
      assert _save(ckpt, s)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 6, 8]
  assert len(lines) == 3, lines
  assert lines[0].startswith("lopt: warning: checkpoint step 6 is incomplete")
  assert "removed the partial save" in lines[1] and "8.orbax" in lines[1]
  assert lines[2].startswith("lopt: warning: checkpoint step 4 is corrupt (")
  assert "trying the step before it" in lines[2]
  names = os.listdir(root)
  for s in (4, 6):  # kept for inspection, under a name no reader takes
    aside = [n for n in names if n.startswith(f"{s}.corrupt-")]
    assert len(aside) == 1, names
    assert (root / aside[0] / "state").is_dir()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # set-aside dirs are not reported again
    assert Checkpointer(str(tmp_path), read_only=True).all_steps() == [
        2, 4, 6, 8]


def test_resume_refuses_a_template_mismatch_and_keeps_the_step(tmp_path):
  from metatrain.distributed import checkpoints, launcher
  root = _populated(tmp_path, [1])
  with Checkpointer(str(tmp_path), EVERY) as ckpt:
    with pytest.raises(checkpoints.CheckpointRestoreError,
                       match="opt_state_template"):
      launcher.resume(ckpt, optax.sgd(0.1, 0.9).init(THETA), log=print)
  assert sorted(os.listdir(root)) == ["1"]  # a good step is never set aside


@pytest.mark.filterwarnings(  # Orbax's async cleanup after the failed save
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_save_on_a_full_disk_fails_cleanly(small_disk):
  from metatrain.distributed import checkpoints
  ckpt = Checkpointer(str(small_disk), EVERY)
  assert _save(ckpt, 1)
  ckpt.wait()
  used = shutil.disk_usage(small_disk).used
  (small_disk / "filler").write_bytes(b"\0" * (3 * 2**20 - used - 4096))
  with pytest.raises(checkpoints.CheckpointSaveError) as err:
    _save(ckpt, 2)
    ckpt.wait()
  msg = str(err.value)
  assert "could not save step 2" in msg and "MiB free of 3.0 MiB" in msg
  assert "step 1 is the newest complete checkpoint" in msg
  root = small_disk / "checkpoints"
  try:
    ckpt.close()  # Orbax's other writer threads have stopped: cleaned up
  except checkpoints.CheckpointSaveError:
    pass  # the same failure, reported again
  assert sorted(os.listdir(root)) == ["1"]  # its partial save is removed
  (small_disk / "filler").unlink()
  with Checkpointer(str(small_disk), read_only=True) as reader:
    out = reader.restore(opt_state_template=OPT_STATE)
  assert out["step"] == 1
  _assert_bitwise_equal(out["theta"], THETA)
