"""``lopt train --evaluators 1`` on a real local Ray, then ``lopt evaluate``.

The run's checkpoints are real Orbax checkpoints written by the learner;
the evaluator actor reads them read-only and records the learned optimizer
next to the baselines.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from evaluators import records

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUITE = ['tasks=["digits_mlp"]', "steps=20", "seeds=1", 'baselines=["adam"]',
         "adam_lrs=[0.003, 0.03]", "eval_every=0"]
TRAIN = ["--config", "tiny", "--set", 'tasks.families=["quadratic"]',
         "--set", "tasks.num_groups=1", "--set", "unroll.min_steps=5",
         "--set", "unroll.max_steps=5", "--set", "learner.save_every=1",
         "--set", "learner.max_staleness=100", "--steps", "3",
         "--set", f"evaluator.suite_overrides={json.dumps(SUITE)}",
         "--set", "evaluator.poll_s=1"]


def test_train_with_an_evaluator_records_learned_and_baselines(tmp_path):
  wd = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "infra.cli", "train", "--workdir", str(wd),
       "--evaluators", "1", *TRAIN], cwd=ROOT, capture_output=True, text=True,
      timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "1 evaluator(s) on suite small" in out.stderr
  recs = records.read(str(wd / "eval" / "records.jsonl"))
  final = [r for r in recs if r["source"] == "step:3"]
  assert {(r["optimizer"], r["hparams"].get("learning_rate"))
          for r in final} == {("learned", None), ("adam", 0.003),
                              ("adam", 0.03)}
  assert all(r["task"] == "digits_mlp" and r["final_loss"] is not None
             and 0 <= r["metrics"]["accuracy"] <= 1 for r in final)
  (row,) = records.summarize(recs, "step:3")
  assert row["best"] == "adam" and row["winner"] in ("learned", "adam")
  assert (wd / "tb" / "eval").is_dir()
  counters = json.loads((wd / "counters.json").read_text())
  assert counters["evaluator_errors"] == 0
  # The same evaluation from the command line finds everything recorded.
  again = subprocess.run(
      [sys.executable, "-m", "infra.cli", "evaluate", "--workdir", str(wd),
       "--once", *sum((["--set", s] for s in SUITE), [])], cwd=ROOT,
      capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "0 runs, 0 from the baseline cache, 3 already recorded" in (
      again.stdout)
  assert "step:3: learned vs tuned baselines" in again.stdout
