"""The README's demo job runs and reports both optimizers."""

from infra import cli


def test_demo_prints_both_losses(capsys):
  assert cli.main(["demo", "--steps", "30"]) == 0
  out = capsys.readouterr().out
  assert "hrnn (untrained)" in out and "adam" in out
  assert out.count("->") == 2
