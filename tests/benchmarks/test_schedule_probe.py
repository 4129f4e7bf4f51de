"""benchmarks/schedule_probe.py: the profile's arithmetic, Adam times a
constant profile is Adam at the multiplied rate, and the end-to-end table."""

import math
import re

import numpy as np
import pytest

from evaluators import baselines, problems, runner


@pytest.fixture(name="probe")
def _probe(benchmark_module):
  return benchmark_module("schedule_probe")


def test_the_profile_is_linear_in_log_step_and_flat_past_its_ends(probe):
  prof = probe.parse_profile("100:4, 1:1")
  assert prof == ((1, 1.0), (100, 4.0))
  got = [float(probe.multiplier(prof, s)) for s in (1, 10, 100, 1000)]
  np.testing.assert_allclose(got, [1.0, 2.5, 4.0, 4.0], rtol=1e-6)
  for bad in ("", "0:1", "1:0", "1:2,1:3", "a:b"):
    with pytest.raises(SystemExit):
      probe.parse_profile(bad)


def test_a_constant_profile_is_adam_at_the_multiplied_rate(probe):
  prob = problems.build("validation:0")
  run = lambda opt: [l for _, l in runner.run(
      prob, opt, steps=12, seed=0, chunk=12).curve]
  np.testing.assert_allclose(
      run(probe.adam_profiled(probe.parse_profile("1:3"), 1e-3)),
      run(baselines.baseline("adam", 3e-3)), rtol=1e-5)
  np.testing.assert_allclose(
      run(probe.adam_profiled(probe.parse_profile("1:1"), 1e-3)),
      run(baselines.baseline("adam", 1e-3)), rtol=0)


def test_compare_counts_divergence_as_a_loss(probe):
  g, w = probe.compare({"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 2.0})
  assert g == pytest.approx(1.0) and w == 1
  g, w = probe.compare({"a": math.inf, "b": 1.0}, {"a": 1.0, "b": math.inf})
  assert g == math.inf and w == 1  # a diverged on a: a loss; on b a win
  g, w = probe.compare({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": math.inf})
  assert g == pytest.approx(2.0) and w == 1
  g, w = probe.compare({"a": math.inf}, {"a": math.inf})
  assert g == 1.0 and w == 0


def test_end_to_end_a_profile_of_one_ties_everywhere(probe, capsys):
  assert probe.main(["--profile", "1:1", "--tasks", "validation:0",
                     "--steps", "10", "--seeds", "1",
                     "--rates", "3e-3,1e-3"]) == 0
  out = capsys.readouterr().out
  assert "rates [0.001, 0.003]" in out
  # Two rates: whichever is best is an end of the grid, and marked.
  assert "Adam: best rate at an end of the grid on 1/1 tasks" in out
  assert re.search(r"validation:0 .* 0\.00[13]\* ", out)
  assert "tuned vs tuned: Adam x profile over Adam, geomean 1 (0/1 wins)" \
      in out
  assert "default vs default (1e-3): geomean 1 (0/1 wins)" in out
