"""The lopt command line: config errors, task listing, single-process train."""

import json
import os
import re
import subprocess
import sys

import pytest

from infra import cli
from metatrain.training import config as config_lib


def _lopt(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "infra.cli", *args],
                        capture_output=True, text=True, cwd=cwd, timeout=300)


def _one_line_error(capsys, *argv):
  """Runs ``lopt ARGV`` in this process: exit code 2 and one stderr line."""
  assert cli.main([str(a) for a in argv]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("lopt: error: "), lines
  return lines[0]


@pytest.mark.parametrize("override,needle", [
    ("unroll.no_such_key=3", "unroll.no_such_key"),
    ("nope=1", "nope"),
    ("unroll.min_steps=abc", "unroll.min_steps"),
    ("tasks.include_mlps=3", "tasks.include_mlps"),
    ("meta_opt.name=sgd", "meta_opt.name"),
])
def test_bad_set_exits_2_with_one_line_error(override, needle, tmp_path,
                                             capsys):
  line = _one_line_error(capsys, "train", "--workdir", tmp_path / "w",
                         "--set", override)
  assert needle in line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--steps", "0"], "--steps must be >= 1"),
    (["train", "--workers", "-1"], "--workers must be >= 0"),
    (["train", "--evaluators", "-1"], "--evaluators must be >= 0"),
    (["train", "--workers", "0", "--evaluators", "1"],
     "--evaluators needs Ray workers"),
    (["train", "--evaluators", "1", "--set",
      'evaluator.suite_overrides=["bogus=1"]'], "evaluator: "),
    (["tasks", "--set", 'tasks.weights=["mlp=x"]'], "family=weight"),
    (["monitor", "--workdir", "MISSING"], "does not exist"),
    (["monitor", "--workdir", ".", "--interval", "0"],
     "--interval must be > 0"),
    (["export", "--workdir", "."], "export needs --out FILE.lopt"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, needle, tmp_path,
                                             capsys):
  argv = [str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
  if argv[0] == "train":
    argv += ["--workdir", str(tmp_path / "w")]
  assert needle in _one_line_error(capsys, *argv)


def test_a_real_process_exits_2_with_one_line_for_an_unknown_preset(tmp_path):
  out = _lopt("train", "--workdir", str(tmp_path), "--config", "nope")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown config 'nope'" in lines[0], lines


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
  # A config's weights: fn2d dropped, mlp at 3 of 11.75.
  assert cli.main(["tasks", "--config", "tiny", "--set",
                   "tasks.include_mlps=true", "--set",
                   'tasks.weights=["mlp=3", "fn2d=0"]']) == 0
  out = capsys.readouterr().out
  assert "\nfn2d " not in out
  assert re.search(r"^mlp\s+25\.5%", out, re.M), out


def test_train_workers_0_writes_config_and_progress(tmp_path, capsys):
  rc = cli.main(["train", "--workers", "0", "--config", "tiny", "--workdir",
                 str(tmp_path), "--steps", "5", "--set", "log_every=1",
                 "--set", "tasks.num_groups=1", "--set", "unroll.min_steps=5",
                 "--set", "unroll.max_steps=5"])
  assert rc == 0
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved == config_lib.to_dict(config_lib.load("tiny", [
      "log_every=1", "tasks.num_groups=1", "unroll.min_steps=5",
      "unroll.max_steps=5"]))
  assert saved["unroll"]["max_steps"] == 5 and saved["steps"] == 20
  err = capsys.readouterr().err
  assert re.search(r"step +5/5", err) and "task-steps/s" in err
  assert "1 in-process worker" in err
  # The learner's path: checkpoints, TensorBoard, counters and resume.
  counters = json.loads((tmp_path / "counters.json").read_text())
  assert counters["step"] == 5 and counters["accepted"] == 5
  assert counters["task_steps"] == 5 * 5 * 2  # steps x length x tasks
  assert (tmp_path / "checkpoints" / "5").is_dir()
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
  rc = cli.main(["train", "--workers", "0", "--config", "tiny", "--workdir",
                 str(tmp_path), "--steps", "7", "--set", "log_every=1",
                 "--set", "tasks.num_groups=1", "--set", "unroll.min_steps=5",
                 "--set", "unroll.max_steps=5"])
  assert rc == 0
  err = capsys.readouterr().err
  assert "resumed from" in err and "step 5" in err
  assert re.search(r"step +7/7", err)
  counters = json.loads((tmp_path / "counters.json").read_text())
  assert counters["step"] == 7 and counters["task_steps"] == 7 * 5 * 2


def test_train_refuses_to_resume_under_another_hrnn_config(tmp_path, capsys):
  """A checkpoint trained with the paper's start is not resumed as Adam's."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from metatrain.distributed import checkpoints
  from metatrain.optimizer import hrnn
  paper = config_lib.load("tiny", ["hrnn.nominal_adam=false"])
  saved = config_lib.to_dict(paper)
  del saved["hrnn"]["nominal_adam"]  # a file from before the field existed
  theta = hrnn.init_theta(jax.random.PRNGKey(0), paper.hrnn)
  with checkpoints.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(3, theta=theta, opt_state=optax.adam(1e-3).init(theta),
              counters={}, config=saved, force=True,
              rng_state=np.random.default_rng(0).bit_generator.state)
  before = (tmp_path / "checkpoints").stat().st_mtime
  rc = cli.main(["train", "--workers", "0", "--config", "tiny", "--workdir",
                 str(tmp_path), "--steps", "5"])
  err = capsys.readouterr().err
  assert rc == 2
  assert "hrnn.nominal_adam: checkpoint False, now True" in err
  assert "--set hrnn.nominal_adam=false" in err
  assert not (tmp_path / "config.json").exists()
  assert (tmp_path / "checkpoints").stat().st_mtime == before
  assert cli._resume_mismatch(paper, str(tmp_path)) is None  # pylint: disable=protected-access


def test_malloc_env_keeps_freed_memory_unless_opted_out():
  env = cli.malloc_env({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.pthread.x=1"})
  assert env["GLIBC_TUNABLES"] == "glibc.pthread.x=1:" + cli.KEEP_MALLOC
  assert cli.malloc_env({"LOPT_MALLOC": "default"}) is None
  assert cli.malloc_env({"GLIBC_TUNABLES": cli.KEEP_MALLOC}) is None


def test_heavy_commands_run_with_the_kept_allocator(tmp_path):
  """`lopt evaluate --follow` re-runs itself with GLIBC_TUNABLES set."""
  import os  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "LOPT_MALLOC")}
  proc = subprocess.Popen(
      [sys.executable, "-m", "infra.cli", "evaluate", "--workdir",
       str(tmp_path), "--follow", "--poll", "60"], env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    seen = ""
    for _ in range(300):
      try:
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
          seen = f.read().decode(errors="replace")
      except OSError:
        break
      if "GLIBC_TUNABLES=" in seen or proc.poll() is not None:
        break
      time.sleep(0.1)
    # glibc splits the variable in place at startup (':' -> NUL here).
    assert "GLIBC_TUNABLES=glibc.malloc.arena_max=1" in seen
    assert "glibc.malloc.trim_threshold=100000000000" in seen
  finally:
    proc.kill()
    proc.wait()


def test_train_refuses_more_workers_than_this_machines_ray_has(tmp_path):
  """Used to wait silently forever for actors that could never start."""
  wd = tmp_path / "w"
  out = _lopt("train", "--workdir", wd, "--config", "tiny", "--workers",
              "999")
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1, out.stderr[-3000:]
  assert "Token authentication is enabled" not in out.stderr  # said once,
  # explicitly, by lopt: RAY_AUTH_MODE=token
  assert errors[0].startswith("lopt: error: 999 workers")
  assert f"use --workers {max(os.cpu_count(), 1)} or fewer" in errors[0]
  assert f"(details: {wd / 'lopt.log'})" in errors[0]
  assert "Traceback" not in out.stderr
  assert not (wd / "workers.json").exists()
  assert (wd / "train.lock").read_text() == ""  # released


def test_help_describes_every_flag_and_shows_train_examples(capsys):
  from infra import parser as parser_lib  # pylint: disable=import-outside-toplevel
  p = parser_lib.build_parser()
  sub = next(a for a in p._actions if a.dest == "command")  # pylint: disable=protected-access
  for name in ("train", "evaluate", "monitor", "export", "launch"):
    for action in sub.choices[name]._actions:  # pylint: disable=protected-access
      if action.dest != "help":
        assert action.help, (name, action.dest)
    if name != "launch":  # one default workdir for every command
      (wd,) = [a for a in sub.choices[name]._actions  # pylint: disable=protected-access
               if a.dest == "workdir"]
      assert wd.default == parser_lib.DEFAULT_WORKDIR == "runs/default"
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  out = capsys.readouterr().out
  assert "examples:" in out and "lopt train --config tiny --steps 20" in out
  assert "meta_loss" in out
  with pytest.raises(SystemExit):
    cli.main(["export", "--help"])
  assert "required, unless --inspect" in capsys.readouterr().out
