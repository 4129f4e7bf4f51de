"""benchmarks/paired_meta_loss.py: two real `lopt train` runs with the same
seed are paired step by step; a run that samples other tasks is refused."""

import pytest

from infra import cli

_TRAIN = ["--config", "tiny", "--workers", "0", "--steps", "3",
          "--set", 'tasks.families=["quadratic"]']


def test_runs_with_one_seed_are_paired(tmp_path, benchmark_module, capsys):
  mod = benchmark_module("paired_meta_loss")
  a, b = tmp_path / "a", tmp_path / "b"
  assert cli.main(["train", "--workdir", str(a), *_TRAIN]) == 0
  assert cli.main(["train", "--workdir", str(b), *_TRAIN,
                   "--set", "meta_opt.learning_rate=0.1"]) == 0
  cfg_a, ra = mod.load_run(str(a))
  cfg_b, rb = mod.load_run(str(b))
  assert sorted(ra) == sorted(rb) == [1, 2, 3]
  # Step 1 runs both from the same theta on the same truncations: equal.
  # After the first (different) meta-update the thetas differ.
  assert ra[1] == rb[1]
  assert ra[2] != rb[2]
  (lo, hi, n, means, diffs), *rest = mod.band_rows([ra, rb], [0, 1, 3], 1)
  assert (lo, hi, n, means[0]) == (0, 1, 1, ra[1])
  assert diffs[0][0] == 0.0
  assert rest[0][4][0][0] == pytest.approx(
      (rb[2] - ra[2] + rb[3] - ra[3]) / 2)
  assert mod.config_differences(cfg_a, cfg_b) == [
      "meta_opt.learning_rate: 0.003 -> 0.1"]

  mod.main([str(a), str(b), "--bands", "0,1,3", "--block", "1"])
  out = capsys.readouterr().out
  assert "b vs a: meta_opt.learning_rate: 0.003 -> 0.1" in out
  assert "| 2-3 | 2 |" in out

  assert "warning" not in out
  pes = {"meta_grad": {"estimator": "pes", "pes_std": 0.01}}
  assert not mod.perturbation_differs(pes, pes)
  assert mod.perturbation_differs(
      pes, {"meta_grad": {"estimator": "pes", "pes_std": 0.03}})
  assert mod.perturbation_differs(cfg_a, pes)  # tiny uses BPTT
  readouts = {"meta_grad": {**pes["meta_grad"],
                            "train_only": ["w_lr", "w_update", "shortcut"]}}
  assert mod.perturbation_differs(pes, readouts)
  assert not mod.perturbation_differs(readouts, readouts)
  # A config written before train_only existed perturbs all of theta.
  assert not mod.perturbation_differs(
      pes, {"meta_grad": {**pes["meta_grad"], "train_only": []}})
  with pytest.raises(SystemExit, match="not paired"):
    mod.check_paired(cfg_a, dict(cfg_a, seed=1), "c")
  with pytest.raises(SystemExit, match="unroll.max_steps"):
    mod.check_paired(cfg_a, dict(cfg_a, unroll=dict(
        cfg_a["unroll"], max_steps=20)), "c")
  # How the gradient is taken changes neither the truncations nor their
  # forward meta-loss: still paired.
  mod.check_paired(cfg_a, dict(cfg_a, unroll=dict(
      cfg_a["unroll"], stop_second_derivatives=True, remat=False)), "c")
  with pytest.raises(SystemExit, match="no config.json"):
    mod.load_run(str(tmp_path))
