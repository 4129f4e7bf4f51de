"""benchmarks/theta_drift.py: straight lines, random walks and a real run."""

import math
import re

import jax
import numpy as np
import pytest

from infra import cli
from metatrain.distributed import checkpoints
from metatrain.training.config import MetaOptConfig


def test_drift_ratio_of_a_line_and_a_zigzag(benchmark_module):
  mod = benchmark_module("theta_drift")
  line = [np.array([0.0, 0.0]), np.array([3.0, 4.0]), np.array([6.0, 8.0])]
  assert mod.drift_ratio(line) == (10.0, 10.0, 1.0)
  zigzag = [np.array([x]) for x in (0.0, 1.0, 0.0, 1.0)]
  assert mod.drift_ratio(zigzag) == (1.0, 3.0, pytest.approx(1 / 3))
  net, path, r = mod.drift_ratio([np.zeros(2)] * 3)
  assert (net, path) == (0.0, 0.0) and math.isnan(r)


def test_the_noise_floor_is_below_a_signal(benchmark_module):
  mod = benchmark_module("theta_drift")
  adam = MetaOptConfig(name="adam", learning_rate=3e-4)
  floor = mod.simulated_ratio(adam, segments=49, every=10, signal=0.0)
  weak = mod.simulated_ratio(adam, segments=49, every=10, signal=0.2)
  strong = mod.simulated_ratio(adam, segments=49, every=10, signal=100.0)
  # Momentum smooths noise above SGD's 1/sqrt(49) = 0.14, far below a line.
  assert 1 / 7 < floor < 0.3 < weak < strong
  assert strong > 0.99
  rms = mod.simulated_ratio(MetaOptConfig(name="rmsprop",
                                          learning_rate=1e-3),
                            segments=49, every=10, signal=100.0)
  assert rms > 0.99


def test_a_real_run(tmp_path, benchmark_module, capsys):
  mod = benchmark_module("theta_drift")
  wd = tmp_path / "run"
  assert cli.main(["train", "--workdir", str(wd), "--config", "tiny",
                   "--workers", "0", "--steps", "4", "--set",
                   'tasks.families=["quadratic"]', "--set",
                   "learner.save_every=1", "--set", "learner.keep_last=10",
                   "--set", "meta_opt.learning_rate=0.01"]) == 0
  mod.main([str(wd), "--every", "1", "--stop", "4"])
  out = capsys.readouterr().out
  with checkpoints.Checkpointer(str(wd), read_only=True) as ck:
    steps = [s for s in ck.all_steps() if s <= 4]
    thetas = [ck.restore_lopt(s)[1] for s in steps]
  flat = [np.concatenate([np.ravel(np.asarray(x, np.float64))
                          for _, sub in sorted(t.items())
                          for x in jax.tree_util.tree_leaves(sub)])
          for t in thetas]
  _, _, want = mod.drift_ratio(flat)
  got = float(re.search(r"\| all \| \d+ \| \S+ \| \S+ \| (\S+) \|",
                        out).group(1))
  assert got == pytest.approx(want, abs=1e-3) and 0 < want <= 1
  assert "| param_rnn |" in out and "signal-to-noise" in out
  # Too few checkpoints: refused, naming the fix.
  with pytest.raises(SystemExit, match="save_every"):
    mod.main([str(wd), "--every", "1000", "--stop", "5000"])
