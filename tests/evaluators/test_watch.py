"""``lopt evaluate``: records, the baseline cache, restarts, clear errors."""

import collections
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax

import metatrain
from evaluators import records, suites, watch
from infra import cli
from metatrain.optimizer import hrnn

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--set", 'tasks=["digits_mlp", "heldout:3"]', "--set", "steps=20",
        "--set", "seeds=1", "--set", "eval_every=0",
        "--set", 'baselines=["adam", "sgdm"]', "--set", "adam_lrs=[0.001, 0.01]",
        "--set", "sgdm_lrs=[0.1]", "--set", "learned_lrs=[0.01]"]


def _lopt(tmp_path, name="opt.lopt", offset=None):
  cfg = hrnn.HRNNConfig()
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  if offset is not None:
    theta = dict(theta, stepsize_offset=jax.numpy.asarray(offset))
  path = tmp_path / name
  metatrain.save_optimizer(path, cfg, theta)
  return path


def _cli(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "infra.cli", "evaluate",
                         *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _suite():
  return suites.load("small", [a for a in TINY if a != "--set"])


def test_records_cache_and_idempotence(tmp_path):
  wd = str(tmp_path / "wd")
  ev = watch.Evaluator(wd, _suite(), log=lambda m: None)
  src = watch.file_source(str(_lopt(tmp_path)))
  c = ev.evaluate(src)
  # 2 tasks x (2 adam + 1 sgdm + learned at its default rate and at 0.01)
  n_units = 2 * (2 + 1 + 2)
  assert c["runs"] == n_units and c["cached"] == 0 and c["errors"] == 0
  recs = records.read(ev.writer.path)
  assert len(recs) == n_units
  assert {r["optimizer"] for r in recs} == {"learned", "adam", "sgdm"}
  assert all(r["source"] == src.id and r["curve"] for r in recs)
  # Again: everything is recorded, nothing runs.
  c = watch.Evaluator(wd, _suite(), log=lambda m: None).evaluate(src)
  assert c["runs"] == 0 and c["skipped"] == n_units
  # Another optimizer: baselines come from the cache, only learned runs.
  src2 = watch.file_source(str(_lopt(tmp_path, "exploding.lopt", 60.0)))
  c = watch.Evaluator(wd, _suite(), log=lambda m: None).evaluate(src2)
  assert c["runs"] == 4 and c["cached"] == 6
  recs = records.read(ev.writer.path)
  assert len({r["key"] for r in recs}) == len(recs) == 2 * n_units
  # The exploding optimizer is recorded as diverged and loses everywhere.
  bad = [r for r in recs if r["source"] == src2.id and
         r["optimizer"] == "learned"]
  assert all(r["diverged"] and r["final_loss"] is None for r in bad)
  rows = records.summarize(recs, src2.id)
  assert all(r["winner"] != "learned" and r["ratio"] == float("inf")
             and r["winner_tuned"] != "learned" and r["winner_default"] ==
             "adam 1e-3" for r in rows)
  assert any("diverged" in line for line in watch.table(recs, src2.id))
  # TensorBoard scalars for both complete sources.
  assert os.listdir(os.path.join(wd, "tb", "eval"))


def test_a_killed_evaluator_resumes_without_duplicates(tmp_path):
  wd, lopt = tmp_path / "wd", _lopt(tmp_path)
  args = ["--workdir", wd, "--lopt", lopt, *TINY, "--set", "steps=200",
          "--set", "adam_lrs=[0.0001, 0.0003, 0.001, 0.003, 0.01]"]
  log = open(tmp_path / "first.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "evaluate",
                           *map(str, args)], cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT)
  path = wd / "eval" / "records.jsonl"
  try:
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
      if path.exists() and len(records.read(str(path))) >= 2:
        break
      time.sleep(0.2)
    assert proc.poll() is None, "finished before it could be killed"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  first = len(records.read(str(path)))
  out = _cli(*args)
  assert out.returncode == 0, out.stderr[-2000:]
  recs = records.read(str(path))
  keys = collections.Counter(r["key"] for r in recs)
  assert max(keys.values()) == 1  # no duplicates
  assert len(keys) == 2 * (5 + 1 + 2) > first
  assert f"{first} already recorded" in out.stdout


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
  cases = [
      (["--workdir", tmp_path / "nope"], "does not exist"),
      (["--workdir", tmp_path, "--once"], "no complete checkpoint"),
      (["--workdir", tmp_path, "--suite", "bogus"], "unknown suite"),
      (["--workdir", tmp_path, "--set", "bogus=1"], "unknown config key"),
      (["--workdir", tmp_path, "--set", "steps=0"], "steps must be >= 1"),
      (["--workdir", tmp_path, "--once", "--suite", "imagenet",
        "--set", f"data_dir={tmp_path / 'tfds'}"], "lopt prepare imagenet"),
  ]
  corrupt = tmp_path / "corrupt.lopt"
  corrupt.write_bytes(b"\x93not msgpack")
  cases.append((["--workdir", tmp_path, "--lopt", corrupt], "corrupt.lopt"))
  cases.append((["--workdir", tmp_path / "new", "--lopt", corrupt],
                "corrupt.lopt"))
  for args, expected in cases:  # in this process: cli.main as `lopt`
    assert cli.main(["evaluate", *map(str, args)]) == 2, args
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lopt: error: "), lines
    assert expected in lines[0], (args, lines)
  assert not (tmp_path / "new").exists()  # a refused file creates nothing
