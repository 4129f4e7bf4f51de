"""A user's day on a real short run: train with an evaluator, evaluate,
monitor (terminal and HTML in headless Chromium), export and use the file.

One ``lopt train --evaluators 1`` run on a real local Ray instance (real
Orbax checkpoints, real evaluator actor) serves every test in this module.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metatrain
from evaluators import records
from evaluators.models.convnets import MLP
from infra import cli

# One worker runs the whole module (under pytest-xdist), so the run below is
# made once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workflow")]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUITE = ['tasks=["digits_mlp"]', "steps=20", "seeds=1", 'baselines=["adam"]',
         "adam_lrs=[0.001, 0.03]", "learned_lrs=[0.003]", "eval_every=0"]
TRAIN = ["--config", "tiny", "--set", 'tasks.families=["quadratic"]',
         "--set", "tasks.num_groups=1", "--set", "unroll.min_steps=5",
         "--set", "unroll.max_steps=5", "--set", "learner.save_every=1",
         "--set", "learner.max_staleness=100", "--steps", "3",
         "--set", f"evaluator.suite_overrides={json.dumps(SUITE)}",
         "--set", "evaluator.poll_s=1"]


def _lopt(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "infra.cli", *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout,
                        env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _in_process(capsys, *args):
  """``lopt ARGS`` in this process (cli.main); returns (code, out, err)."""
  code = cli.main([str(a) for a in args])
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("workflow") / "run"
  out = _lopt("train", "--workdir", wd, "--evaluators", 1, *TRAIN,
              timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "1 evaluator(s) on suite small" in out.stderr
  return wd


def test_the_evaluator_records_learned_and_baselines(run, capsys):
  recs = records.read(str(run / "eval" / "records.jsonl"))
  final = [r for r in recs if r["source"] == "step:3"]
  assert {(r["optimizer"], r["hparams"].get("learning_rate"))
          for r in final} == {("learned", None), ("learned", 0.003),
                              ("adam", 0.001), ("adam", 0.03)}
  assert all(r["task"] == "digits_mlp" and r["final_loss"] is not None
             and 0 <= r["metrics"]["accuracy"] <= 1 for r in final)
  (row,) = records.summarize(recs, "step:3")
  # The row is what the four runs say: Adam tuned over its two rates, the
  # learned optimizer (at its default rate, and tuned over its one swept
  # rate) against the better one.
  learned, tuned = (next(r["final_loss"] for r in final
                         if r["optimizer"] == "learned" and
                         r["hparams"].get("learning_rate") == lr)
                    for lr in (None, 0.003))
  adam = {r["hparams"]["learning_rate"]: r["final_loss"] for r in final
          if r["optimizer"] == "adam"}
  best_lr = min(adam, key=adam.get)
  assert row["best"] == "adam" and row["baselines"]["adam"] == (
      adam[best_lr], best_lr)
  assert row["learned"] == learned
  assert row["ratio"] == pytest.approx(learned / adam[best_lr], rel=1e-9)
  assert row["winner"] == ("learned" if learned < adam[best_lr] * (
      1 - records.TIE) else "adam")  # within 0.1%: a tie, not a win
  assert row["learned_tuned"] == tuned and row["learned_lr"] == 0.003
  assert row["ratio_tuned"] == pytest.approx(tuned / adam[best_lr], rel=1e-9)
  assert row["ratio_default"] == pytest.approx(learned / adam[0.001],
                                               rel=1e-9)
  assert (run / "tb" / "eval").is_dir()
  counters = json.loads((run / "counters.json").read_text())
  assert counters["evaluator_errors"] == 0 and counters["train_seconds"] > 0
  # The work done is on record: task-steps to divide by train_seconds, and
  # the XLA compiles (a fresh compile cache: some).
  assert counters["task_steps"] >= 3 * 5  # 3 meta-steps of 5 inner steps
  assert counters["compiles"] > 0
  # The same evaluation from the command line finds everything recorded.
  code, out, err = _in_process(capsys, "evaluate", "--workdir", run, "--once",
                               *sum((["--set", s] for s in SUITE), []))
  assert code == 0, err[-3000:]
  assert "0 runs, 0 from the baseline cache, 4 already recorded" in out
  assert "step:3: learned vs tuned baselines" in out


def test_monitor_table_and_html_report_in_chromium(run, tmp_path, capsys):
  html = tmp_path / "report.html"
  code, out, err = _in_process(capsys, "monitor", "--workdir", run, "--html",
                               html)
  assert code == 0, err[-3000:]
  assert "newest evaluated: step:3" in out
  row = next(l for l in out.splitlines() if l.startswith("digits_mlp"))
  (want,) = records.summarize(records.read(str(run / "eval" /
                                               "records.jsonl")), "step:3")
  ratios = r"\s+".join(re.escape(f"{want[k]:.3g}") for k in
                      ("ratio", "ratio_tuned", "ratio_default"))
  assert re.search(rf"\s{ratios}\s", row), (row, want)  # the three ratios
  assert "learned wins" in out and "tuned vs tuned" in out
  page = html.read_text()
  assert "src='http" not in page and "<script src" not in page  # standalone
  headers = re.findall(r"<th>(.*?)</th>", page)
  assert len(headers) == len(set(headers)), headers  # one "learned ..." each
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  assert chromium, "headless Chromium is needed (apt-get install chromium)"
  dom = subprocess.run(
      [chromium, "--headless", "--no-sandbox", "--disable-gpu",
       "--disable-quic", "--no-first-run", "--disable-background-networking",
       "--disable-component-update", "--disable-sync",
       f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
       "--v=0", "--virtual-time-budget=5000", "--dump-dom",
       html.as_uri()], capture_output=True, text=True, timeout=120)
  assert dom.returncode == 0, dom.stderr[-2000:]
  plots = re.search(r'data-plots="(\d+)"', dom.stdout)
  ok = re.search(r'data-plots-ok="(\d+)"', dom.stdout)
  # Loss curves, evaluation across checkpoints and meta-training curves.
  assert plots and int(plots.group(1)) == 3
  assert ok and ok.group(1) == plots.group(1)
  console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l]
  assert not console, console


def test_export_load_and_train_a_flax_model(run, tmp_path, capsys):
  out_file = tmp_path / "best.lopt"
  code, out, err = _in_process(capsys, "export", "--workdir", run, "--best",
                               "--out", out_file)
  assert code == 0, err[-3000:]
  assert "best evaluator score" in out
  _, _, meta = metatrain.read_optimizer(out_file)
  # --best: the evaluated step with the lowest selection score, the
  # geometric mean of the ratios of learned (default rate) and learned
  # (tuned rate) to tuned Adam (ties go to the newer step), from the
  # records themselves.
  recs = records.read(str(run / "eval" / "records.jsonl"))
  ratios = {}
  for src in {r["source"] for r in recs}:
    rs = [r for r in recs if r["source"] == src]
    learned = [r["final_loss"] for r in rs if r["optimizer"] == "learned"]
    adam = [r["final_loss"] for r in rs if r["optimizer"] == "adam"]
    if len(learned) == 2 and len(adam) == 2:
      ratios[int(src.split(":")[1])] = (
          learned[0] * learned[1]) ** 0.5 / min(adam)
  assert 3 in ratios  # the final checkpoint is always evaluated
  want = min(ratios, key=lambda k: (ratios[k], -k))
  assert meta["source"]["step"] == want, ratios
  assert meta["source"]["selected_by"].startswith("best evaluator score")
  assert meta["train_config"]["unroll"]["max_steps"] == 5
  assert meta["meta_training"]["seconds"] > 0
  assert meta["meta_training"]["sessions"][0]["command"].startswith(
      "lopt train")
  assert meta["meta_training"]["sessions"][0]["hardware"]["nodes"]
  ev = meta["evaluation"]
  assert ev["suite"] == "small" and ev["tasks"] == 1 and ev["complete"]
  code, out, _ = _in_process(capsys, "export", "--inspect", out_file)
  assert code == 0 and '"selected_by"' in out
  code, _, err = _in_process(capsys, "export", "--workdir", run, "--step", 3,
                             "--out", tmp_path / "s3.lopt")
  assert code == 0, err
  # The file is a plain optax transformation: train a Flax MLP with it.
  tx = metatrain.load_optimizer(tmp_path / "s3.lopt")
  model = MLP(hidden=(16,), num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 5))
  y = jnp.arange(32) % 3
  params = model.init(jax.random.PRNGKey(1), x)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, x), y).mean()
  state = tx.init(params)
  before = float(loss(params))
  for _ in range(5):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  after = float(loss(params))
  assert np.isfinite(after) and after < before  # 5 steps of (near) Adam


def test_bad_input_gives_one_line_and_exit_2(run, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  corrupt = tmp_path / "corrupt.lopt"
  corrupt.write_bytes(b"\x00garbage")
  cases = [
      (["monitor", "--workdir", tmp_path / "missing"], "does not exist"),
      (["export", "--workdir", tmp_path / "missing", "--out", "x.lopt"],
       "does not exist"),
      (["export", "--workdir", empty, "--out", "x.lopt"],
       "no complete checkpoint"),
      (["export", "--workdir", run, "--step", 99, "--out", "x.lopt"],
       "no checkpoint at step 99"),
      (["export", "--inspect", corrupt], "corrupt.lopt"),
      (["evaluate", "--workdir", empty, "--once"], "no complete checkpoint"),
  ]
  for args, expected in cases:  # in this process: cli.main as `lopt`
    assert cli.main([str(a) for a in args]) == 2, args
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("lopt: error:"), (
        args, errors)
    assert expected in errors[0], (args, errors)


def _copy(run, tmp_path):
  wd = tmp_path / "copy"
  shutil.copytree(run, wd, ignore=shutil.ignore_patterns("train.lock"))
  return wd


def _flip(step_dir, item="state"):
  for dirpath, _, files in os.walk(step_dir / item):
    for f in files:
      if os.sep + "d" in dirpath:  # ocdbt data files
        p = os.path.join(dirpath, f)
        data = bytearray(open(p, "rb").read())
        for i in range(len(data) // 2, len(data) - 8):
          data[i] ^= 0x5A
        open(p, "wb").write(bytes(data))


def test_export_refuses_bad_destinations_and_keeps_the_umask(run, tmp_path,
                                                              capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  ro = tmp_path / "ro.lopt"
  ro.write_text("keep me")
  ro.chmod(0o444)
  cases = [(tmp_path, "is a directory"),
           (a_file / "x.lopt", "is not a directory"),
           (tmp_path / "nonexistent_dir" / "x.lopt", "does not exist"),
           (ro, "exists and is read-only")]
  for out, needle in cases:
    code, _, err = _in_process(capsys, "export", "--workdir", run, "--out",
                               out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (out, lines)
    assert lines[0].startswith("lopt: error: ") and needle in lines[0]
  assert not (tmp_path / "nonexistent_dir").exists()
  assert ro.read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["a_file", "ro.lopt"]  # no temp
  old = os.umask(0o027)
  try:
    code, out, err = _in_process(capsys, "export", "--workdir", run, "--out",
                                 tmp_path / "ok.lopt")
  finally:
    os.umask(old)
  assert code == 0, err
  assert (tmp_path / "ok.lopt").stat().st_mode & 0o777 == 0o640
  ratio = re.search(r"geometric-mean ratio (\S+)\. Use it", out).group(1)
  assert ratio == f"{float(ratio):.3g}", out  # 3 significant digits


def test_export_to_an_immutable_file_fails_cleanly(run, tmp_path, capsys):
  """chattr +i: writable by its mode bits, refused by the filesystem at the
  final rename; one line, the file and its directory as they were."""
  imm = tmp_path / "x.lopt"
  imm.write_text("keep me")
  r = subprocess.run(["chattr", "+i", str(imm)], capture_output=True,
                     text=True, check=False)
  if r.returncode:
    pytest.skip(f"chattr +i does not work here ({r.stderr.strip()})")
  try:
    code, _, err = _in_process(capsys, "export", "--workdir", run, "--out",
                               imm)
  finally:
    subprocess.run(["chattr", "-i", str(imm)], check=False)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, lines
  assert "Operation not permitted" in lines[0], lines
  assert imm.read_text() == "keep me"
  assert os.listdir(tmp_path) == ["x.lopt"]  # its temp file is gone


def test_records_with_wrong_fields_are_skipped_and_counted(run, tmp_path,
                                                          capsys):
  wd = _copy(run, tmp_path)
  path = wd / "eval" / "records.jsonl"
  good = records.read(str(path))
  bad = [json.dumps({"key": "x"}),
         json.dumps(dict(good[0], key="y", final_loss="abc")), "[1, 2]",
         "not json"]
  with open(path, "a") as f:
    f.write("\n".join(bad) + "\n")
  with pytest.warns(UserWarning, match=r"skipped 4 unusable line\(s\) \(line "
                    rf"{len(good) + 1}: no 'source'; line {len(good) + 2}: "
                    r"'final_loss' is 'abc'"):
    assert records.read(str(path)) == good
  for args in (["monitor", "--workdir", wd],
               ["monitor", "--workdir", wd, "--html", tmp_path / "r.html"],
               ["export", "--workdir", wd, "--best", "--out",
                tmp_path / "b.lopt"],
               ["evaluate", "--workdir", wd, "--once",
                *sum((["--set", s] for s in SUITE), [])]):
    with pytest.warns(UserWarning, match="unusable line"):
      code, _, err = _in_process(capsys, *args)
    assert code == 0, (args, err[-2000:])


def test_evaluate_once_reports_an_unreadable_newest_checkpoint(run, tmp_path,
                                                              capsys):
  wd = _copy(run, tmp_path)
  ev_args = sum((["--set", s] for s in SUITE), [])
  # The newest step incomplete: the newest complete one is evaluated, and
  # only its table is shown.
  (wd / "checkpoints" / "3" / "_CHECKPOINT_METADATA").write_text("")
  code, out, err = _in_process(capsys, "evaluate", "--workdir", wd, "--once",
                               *ev_args)
  assert code == 0, err[-2000:]
  assert "step:2: learned vs tuned baselines" in out
  assert "step:3" not in out
  # A corrupt newest step: exit 2, one line, no table of another step.
  shutil.copy(run / "checkpoints" / "3" / "_CHECKPOINT_METADATA",
              wd / "checkpoints" / "3")
  _flip(wd / "checkpoints" / "3", "lopt")
  code, out, err = _in_process(capsys, "evaluate", "--workdir", wd, "--once",
                               *ev_args)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, lines
  assert "cannot evaluate the newest checkpoint" in lines[0]
  assert f"{wd / 'checkpoints' / '3'}" in lines[0]
  assert "learned vs tuned baselines" not in out


def test_resume_sets_damaged_steps_aside_and_trains_on(run, tmp_path):
  """A real `lopt train` resume over an emptied metadata file (newest step)
  and flipped bytes (the step before): both set aside with one line each,
  training goes on from step 1 and saves steps 2 and 3 again."""
  wd = _copy(run, tmp_path)
  ck = wd / "checkpoints"
  assert sorted(os.listdir(ck)) == ["1", "2", "3"]
  (ck / "3" / "_CHECKPOINT_METADATA").write_text("")
  _flip(ck / "2")
  train = list(TRAIN)
  train[train.index("--steps") + 1] = "4"
  out = _lopt("train", "--workdir", wd, "--evaluators", 0, *train)
  assert out.returncode == 0, out.stderr[-3000:]
  err = out.stderr
  assert re.search(r"lopt: warning: checkpoint step 3 is incomplete \(an "
                   r"interrupted save\); set aside as .*/3\.corrupt-", err)
  assert re.search(r"lopt: warning: checkpoint step 2 is corrupt \((opt_state "
                   r"does not match its stored digest|its state cannot be "
                   r"read).*\); set aside as .*/2\.corrupt-", err)
  assert "resumed from" in err and "step 1 (theta" in err
  # Nothing that is not ours or not actionable: no fork after JAX's threads
  # (the resume check reads JSON before Ray starts), no Ray deprecation or
  # token-auth chatter.
  for noise in ("Traceback", "os.fork()", "RayDeprecationWarning",
                "Token authentication is enabled", "Started a local Ray"):
    assert noise not in err, (noise, err[-3000:])
  steps = sorted(n for n in os.listdir(ck) if n.isdigit())
  assert steps[-1] == "4"
  aside = sorted(n for n in os.listdir(ck) if ".corrupt-" in n)
  assert [n.split(".")[0] for n in aside] == ["2", "3"]


def test_a_full_disk_ends_training_with_one_line_and_loses_nothing(
    run, small_disk):
  """A real `lopt train` resume on a 3 MiB tmpfs left with 64 KiB free."""
  wd = small_disk / "run"
  shutil.copytree(run, wd, ignore=shutil.ignore_patterns(
      "eval", "tb", "train.lock", "lopt.log"))
  free = shutil.disk_usage(small_disk).free
  (small_disk / "filler").write_bytes(b"\0" * max(free - 64 * 1024, 0))
  train = list(TRAIN)
  train[train.index("--steps") + 1] = "5"
  out = _lopt("train", "--workdir", wd, "--evaluators", 0, *train)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.splitlines()
  errors = [l for l in lines if l.startswith("lopt: error")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert errors[0] == lines[-1]  # nothing after it: the rest is in the log
  assert "Traceback" not in out.stderr and "Error" not in "".join(
      l for l in lines if l not in errors), out.stderr[-3000:]
  assert re.match(r"lopt: error: could not save step 4 ", errors[0])
  assert "No space left on device" in errors[0] and "MiB free" in errors[0]
  assert "step 3 is the newest complete checkpoint" in errors[0]
  assert f"(details: {wd / 'lopt.log'})" in errors[0]
  assert sorted(os.listdir(wd / "checkpoints")) == ["1", "2", "3"]
  (small_disk / "filler").unlink()
  from metatrain.distributed import checkpoints
  with checkpoints.Checkpointer(str(run), read_only=True) as a, \
       checkpoints.Checkpointer(str(wd), read_only=True) as b:
    jax.tree.map(np.testing.assert_array_equal, a.restore_lopt(3)[1],
                 b.restore_lopt(3)[1])  # the good checkpoint is intact
