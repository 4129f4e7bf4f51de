"""benchmarks/bptt_memory.py: one bucket's program with remat off and on."""

import re


def test_remat_row_reports_less_memory_and_the_same_gradient(
    benchmark_module, capsys):
  mod = benchmark_module("bptt_memory")
  assert mod.main(["--config", "tiny", "--families", "logistic",
                   "--samples", "20", "--run", "1",
                   "--set", 'tasks.families=["logistic"]']) == 0
  out = capsys.readouterr().out
  rows = [r for r in out.splitlines() if r.startswith("| logistic[")]
  assert rows, out
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    off, on = (float(c.replace(",", "")) for c in cells[2:4])
    assert on < off and float(cells[4]) > 1
    assert float(cells[10]) < 1e-4  # the same meta-gradient
  assert re.search(r"all \d+ buckets: the largest temporaries", out)
