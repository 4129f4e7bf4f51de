"""benchmarks/vs_baselines.py in smoke mode (tiny runs, real evaluators)."""

import jax
import numpy as np
import pytest

import metatrain
from evaluators import records


def test_table_and_an_exploding_optimizer_loses_everywhere(tmp_path, capsys,
                                                           benchmark_module):
  cfg = metatrain.HRNNConfig()
  theta = metatrain.init_theta(jax.random.PRNGKey(0), cfg)
  theta = dict(theta, stepsize_offset=np.float32(60.0))  # steps of e^60
  path = str(tmp_path / "boom.lopt")
  metatrain.save_optimizer(path, cfg, theta, {"note": "explodes"})
  out = tmp_path / "table.md"
  rc = benchmark_module("vs_baselines").main(
      ["--lopt", path, "--workdir", str(tmp_path / "w"), "--parts", "heldout",
       "--smoke", "--set", 'tasks=["heldout:0"]', "--out", str(out),
       "--plots", str(tmp_path / "plots")])
  assert rc == 0
  text = out.read_text()
  row = next(l for l in text.splitlines() if l.startswith("| heldout:0 |"))
  assert "| diverged (1 div.) |" in row  # the learned column
  assert "0/1 vs adam 1e-3" in text and "0/1 vs best*" in text
  assert "**Tuned vs tuned**" in text and "wins 0/1 vs the best" in text
  assert "**Default vs default**" in text and "wins 0/1," in text
  assert "diverged on a seed: 1/1" in text
  assert (tmp_path / "plots" / "vs_baselines_heldout.png").stat().st_size > 0


def test_the_untrained_optimizer_ties_adam_in_every_comparison(
    tmp_path, benchmark_module):
  """Untrained, the learned optimizer is Adam at any rate it is given: its
  default rate ties Adam 1e-3 and its swept rates tie Adam's."""
  cfg = metatrain.HRNNConfig()
  path = str(tmp_path / "start.lopt")
  metatrain.save_optimizer(path, cfg, metatrain.init_theta(
      jax.random.PRNGKey(0), cfg), {"note": "untrained"})
  out = tmp_path / "table.md"
  rc = benchmark_module("vs_baselines").main(
      ["--lopt", path, "--workdir", str(tmp_path / "w"), "--parts", "heldout",
       "--smoke", "--set", 'tasks=["heldout:0"]', "--out", str(out)])
  assert rc == 0
  recs = records.read(str(tmp_path / "w" / "eval" / "records.jsonl"))
  loss = {(r["optimizer"], r["hparams"].get("learning_rate")): r["final_loss"]
          for r in recs}
  for lr in (1e-3, 1e-2):  # the smoke grids of Adam and of the learned one
    assert loss[("learned", lr)] == pytest.approx(loss[("adam", lr)],
                                                  rel=1e-5)
  assert loss[("learned", None)] == pytest.approx(loss[("adam", 1e-3)],
                                                  rel=1e-5)
  text = out.read_text()
  assert ("**Default vs default** (learned at its default rate vs Adam "
          "1e-3): wins 0/1, geometric-mean ratio 1.") in text
  assert "**Tuned vs tuned**" in text and "wins 0/1 vs the best" in text
  # The smoke grids have two rates for Adam and the learned optimizer, so
  # either's best is an end; RMSProp's and SGD-M's single rate is not.
  assert "): adam on 1/1, learned on 1/1 tasks." in text
  assert "- **Not bracketed**" in text
  row = next(l for l in text.splitlines() if l.startswith("| heldout:0 |"))
  tuned_lr = min((1e-3, 1e-2), key=lambda lr: loss[("adam", lr)])
  assert f"({tuned_lr:g}) |" in row.split("|")[3] + "|"  # learned* column
