"""benchmarks/ship_pretrained.py: the paired comparison with the start."""

import math

import pytest


def test_paired_vs_start_is_the_geomean_of_per_task_ratios(benchmark_module):
  mod = benchmark_module("ship_pretrained")
  start = {"a": 1.0, "b": 2.0, "c": 4.0}
  p = mod.paired_vs_start({"a": 0.5, "b": 2.0, "c": 8.0}, start)
  assert p["geomean"] == pytest.approx(1.0)  # (0.5 * 1 * 2) ** (1/3)
  assert p["wins"] == 1 and p["z"] == pytest.approx(0.0)
  # Better on every task by 10% and 30%: z is the mean log-ratio over its
  # standard error.
  p = mod.paired_vs_start({"a": 0.9, "b": 1.4, "c": 3.6}, start)
  logs = [math.log(0.9), math.log(0.7), math.log(0.9)]
  mean = sum(logs) / 3
  se = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2 / 3)
  assert p["geomean"] == pytest.approx(math.exp(mean))
  assert p["wins"] == 3 and p["z"] == pytest.approx(mean / se)
  # The start against itself: no wins, no gain.
  assert mod.paired_vs_start(start, start) == {"geomean": 1.0, "wins": 0,
                                               "z": 0.0}


def test_a_diverged_task_loses_and_a_missing_sweep_is_not_scored(
    benchmark_module):
  mod = benchmark_module("ship_pretrained")
  start = {"a": 1.0, "b": 2.0}
  p = mod.paired_vs_start({"a": 0.1, "b": math.inf}, start)
  assert math.isinf(p["geomean"]) and p["wins"] == 0
  p = mod.paired_vs_start({"a": 0.5, "b": math.nan}, start)
  assert p["geomean"] is None
