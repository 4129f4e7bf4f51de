"""The lopt command line: config errors, task listing, single-process train."""

import json
import subprocess
import sys

import pytest

from infra import cli
from metatrain import config as config_lib


def _lopt(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "infra.cli", *args],
                        capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("override,needle", [
    ("unroll.no_such_key=3", "unroll.no_such_key"),
    ("nope=1", "nope"),
    ("unroll.min_steps=abc", "unroll.min_steps"),
    ("tasks.include_mlps=3", "tasks.include_mlps"),
    ("meta_opt.name=sgd", "meta_opt.name"),
])
def test_bad_set_exits_2_with_one_line_error(override, needle, tmp_path):
  out = _lopt("train", "--workdir", str(tmp_path / "w"), "--set", override)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0] and "error" in lines[0]
  assert not (tmp_path / "w").exists()


def test_unknown_preset_exits_2(tmp_path):
  out = _lopt("train", "--workdir", str(tmp_path), "--config", "nope")
  assert out.returncode == 2 and "unknown config" in out.stderr


def test_overrides_are_typed_and_json_file_configs_load(tmp_path):
  cfg = config_lib.load("default", ["unroll.steps_mean=50", "steps=7",
                                    'tasks.families=["bowl"]'])
  assert cfg.unroll.steps_mean == 50.0 and isinstance(cfg.unroll.steps_mean,
                                                      float)
  assert cfg.steps == 7 and cfg.tasks.families == ("bowl",)
  path = tmp_path / "c.json"
  path.write_text(json.dumps(config_lib.to_dict(cfg)))
  assert config_lib.load(str(path)) == cfg
  path.write_text('{"unroll": {"bogus": 1}}')
  with pytest.raises(ValueError, match="unroll.bogus"):
    config_lib.load(str(path))


def test_tasks_lists_families(capsys):
  assert cli.main(["tasks"]) == 0
  out = capsys.readouterr().out
  for fam in ("quadratic", "bowl", "fn2d", "logistic", "mlp",
              "matmul_algorithm", "sum", "rosenbrock"):
    assert fam in out
  assert cli.main(["tasks", "--no-mlps"]) == 0
  assert "\nmlp " not in capsys.readouterr().out


def test_train_workers_0_writes_config_and_progress(tmp_path, capsys):
  rc = cli.main(["train", "--workers", "0", "--config", "tiny", "--workdir",
                 str(tmp_path), "--steps", "5", "--set", "log_every=1"])
  assert rc == 0
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["unroll"]["max_steps"] == 20 and saved["steps"] == 20
  err = capsys.readouterr().err
  assert "step     5/5" in err and "task-steps/s" in err
