"""The README's demo job: the untrained HRNN is Adam, so its losses are."""

import re

import pytest

from infra import cli
from metatrain.training import demo


def test_demo_trains_both_and_the_untrained_hrnn_matches_adam(capsys):
  finals = demo.run(steps=30)
  out = capsys.readouterr().out
  assert set(finals) == {"hrnn (untrained)", "adam lr=1e-3"}
  # The untrained default is Adam(1e-3): the same loss after 30 steps, to
  # the float32 rounding of two implementations of the same update.
  assert finals["hrnn (untrained)"] == pytest.approx(finals["adam lr=1e-3"],
                                                     rel=1e-5)
  shown = {n: (float(a), float(b)) for n, a, b in re.findall(
      r"^\s+(\S.*?)\s+loss ([\d.]+) -> ([\d.]+)", out, re.M)}
  assert set(shown) == set(finals)
  for name, (first, last) in shown.items():
    assert last == pytest.approx(finals[name], abs=1e-4)  # printed to 4 dp
    assert last < first  # 30 steps of Adam lower this loss


def test_the_demo_command_prints_the_same_run(capsys):
  assert cli.main(["demo", "--steps", "30"]) == 0
  out = capsys.readouterr().out
  assert "demo: 2-layer tanh MLP, 512 examples, 30 full-batch steps" in out
  assert len(re.findall(r"loss [\d.]+ -> [\d.]+", out)) == 2
