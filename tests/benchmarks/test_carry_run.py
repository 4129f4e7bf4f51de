"""benchmarks/carry_run.py: a run carried to a fresh directory resumes
there, with its theta, counters and sessions (real `lopt train`, real
Orbax checkpoints)."""

import json
import os

import numpy as np
import pytest

from infra import cli
from metatrain.distributed.checkpoints import Checkpointer

_TRAIN = ["--config", "tiny", "--workers", "0",
          "--set", 'tasks.families=["quadratic"]',
          "--set", "learner.save_every=2", "--set", "learner.keep_last=10"]


def test_carried_run_resumes_elsewhere(tmp_path, benchmark_module):
  mod = benchmark_module("carry_run")
  first, carried, second = (tmp_path / n for n in ("a", "carried", "b"))
  assert cli.main(["train", "--workdir", str(first), "--steps", "4",
                   *_TRAIN]) == 0
  assert mod.complete_steps(str(first)) == [2, 4]
  assert mod.main(["--workdir", str(first), "--out", str(carried)]) == 0
  assert sorted(os.listdir(carried / "checkpoints")) == ["4"]
  for name in ("config.json", "run_info.json", "counters.json", "lopt.log"):
    assert (carried / name).is_file(), name
  # Carrying again replaces the copy (one state of the run), with extras.
  mod.main(["--workdir", str(first), "--out", str(carried), "--steps", "2"])
  assert sorted(os.listdir(carried / "checkpoints")) == ["2", "4"]
  assert not os.path.exists(str(carried) + ".tmp")

  os.rename(carried, second)  # the new machine's workdir
  assert cli.main(["train", "--workdir", str(second), "--steps", "6",
                   *_TRAIN]) == 0
  ck_a, ck_b = Checkpointer(str(first)), Checkpointer(str(second))
  try:
    assert ck_b.all_steps()[-1] == 6
    _, theta_a = ck_a.restore_lopt(4)
    _, theta_b = ck_b.restore_lopt(4)
    for x, y in zip(_leaves(theta_a), _leaves(theta_b)):
      np.testing.assert_array_equal(x, y)
    counters = ck_b.restore_meta(6)["counters"]
    first_counters = ck_a.restore_meta(4)["counters"]
    assert counters["train_seconds"] > first_counters["train_seconds"]
    assert counters["train_cpu_seconds"] > first_counters["train_cpu_seconds"]
  finally:
    ck_a.close()
    ck_b.close()
  sessions = json.loads((second / "run_info.json").read_text())["sessions"]
  assert [s["start_step"] for s in sessions] == [0, 4]


def test_carry_refuses_what_is_not_a_run(tmp_path, benchmark_module):
  mod = benchmark_module("carry_run")
  with pytest.raises(SystemExit, match="not a lopt run"):
    mod.carry(str(tmp_path), str(tmp_path / "out"))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(SystemExit, match="no complete checkpoint yet"):
    mod.carry(str(tmp_path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def _leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
