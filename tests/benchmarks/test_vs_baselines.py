"""benchmarks/vs_baselines.py in smoke mode (tiny runs, real evaluators)."""

import jax
import numpy as np

import metatrain


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
  assert "diverged on a seed: 1/1" in text
  assert (tmp_path / "plots" / "vs_baselines_heldout.png").stat().st_size > 0
