"""benchmarks/ablations.py end to end at a tiny size (its plumbing and its
table; the figures of a seconds-long run mean nothing)."""

import json
import re


def test_ablations_table_has_the_three_comparisons_per_meta_seed(
    tmp_path, capsys, benchmark_module):
  rc = benchmark_module("ablations").main(
      ["--minutes", "0.02", "--variants", "full,no_shortcut", "--config",
       "tiny", "--set", 'tasks.families=["quadratic"]', "--meta-seeds", "2",
       "--seeds", "1", "--holdout", "1", "--inner-steps", "20",
       "--workdir", str(tmp_path)])
  assert rc == 0
  out = capsys.readouterr().out
  results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [(r["variant"], r["seed"]) for r in results] == [
      ("full", 0), ("full", 1), ("no_shortcut", 0), ("no_shortcut", 1)]
  assert all(r["meta_steps"] >= 1 and r["tasks"] == 1 for r in results)
  rows = re.findall(r"^\| (full|no_shortcut) \| ([01]) \| (\d+) \| \S+ \| "
                    r"(\S+) \((\d)/1\) \| (\S+) \((\d)/1\) \| (\S+) "
                    r"\((\d)/1\) \| (\d) \|$", out, re.M)
  assert len(rows) == 4, out
  for row, r in zip(rows, results):
    assert int(row[2]) == r["meta_steps"]
    assert int(row[4]) == r["wins_tuned"] and int(row[6]) == r["wins"]
