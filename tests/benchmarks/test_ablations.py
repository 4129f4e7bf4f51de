"""benchmarks/ablations.py end to end at a tiny size (its plumbing, its
table and its resumption; the figures of a seconds-long run mean nothing)."""

import json
import os
import re

import numpy as np
import pytest

_TINY = ["--minutes", "0.02", "--config", "tiny", "--set",
         'tasks.families=["quadratic"]', "--meta-seeds", "2", "--seeds", "1",
         "--holdout", "1", "--inner-steps", "20"]


def _json_lines(out):
  return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def test_ablations_resume_and_table_has_the_three_comparisons_per_meta_seed(
    tmp_path, capsys, benchmark_module):
  work, res = str(tmp_path / "work"), str(tmp_path / "res")
  ablations = benchmark_module("ablations")
  assert ablations.main(_TINY + ["--variants", "full", "--workdir", work,
                                 "--results", res]) == 0
  first = _json_lines(capsys.readouterr().out)
  assert [(r["variant"], r["seed"]) for r in first] == [
      ("start", 0), ("hrnn-v1", 0), ("full", 0), ("full", 1)]
  assert [r["meta_steps"] for r in first[:2]] == [0, 0]
  assert sorted(os.listdir(res)) == ["full-seed0.lopt", "full-seed1.lopt",
                                     "results.jsonl", "start-seed0.lopt"]

  # The same command with one more variant runs only that variant.
  assert ablations.main(_TINY + ["--variants", "full,no_shortcut",
                                 "--workdir", work, "--results", res]) == 0
  captured = capsys.readouterr()
  assert "4 run(s) already in" in captured.err
  second = _json_lines(captured.out)
  assert [(r["variant"], r["seed"]) for r in second] == [
      ("no_shortcut", 0), ("no_shortcut", 1)]
  results = first + second
  with open(os.path.join(res, "results.jsonl"), encoding="utf-8") as f:
    assert [json.loads(l) for l in f] == results
  assert all(r["meta_steps"] >= 1 and r["tasks"] == 1 for r in results[2:])

  # The table holds every run in the file: the references, then the
  # variants in their order, each tuned figure also over full's.
  rows = re.findall(r"^\| (start|hrnn-v1|full|no_shortcut) \| ([01-]) \| "
                    r"(\d+) \| \S+ \| (\S+) \((\d)/1\) \| (\S+) \| "
                    r"(\S+) \((\d)/1\) \| (\S+) \((\d)/1\) \| (\d) \|$",
                    captured.out, re.M)
  assert len(rows) == 6, captured.out
  full = {r["seed"]: r["geomean_tuned"] for r in results
          if r["variant"] == "full"}
  for row, r in zip(rows, results):
    assert row[0] == r["variant"] and row[2] == str(r["meta_steps"])
    assert row[1] == ("-" if r["meta_steps"] == 0 else str(r["seed"]))
    assert float(row[3]) == pytest.approx(r["geomean_tuned"], rel=1e-2)
    assert int(row[4]) == r["wins_tuned"] and int(row[7]) == r["wins"]
    if r["variant"] == "full":
      assert row[5] == "1"
    elif r["variant"] == "no_shortcut":
      assert float(row[5]) == pytest.approx(
          r["geomean_tuned"] / full[r["seed"]], rel=1e-2)
    else:
      assert row[5] == "-"

  # Each run against the start, task by task (one task here: the ratio of
  # the two tuned figures, no standard error).
  start = results[0]["tuned_by_task"]
  assert list(start) == ["heldout:0"]
  paired_rows = re.findall(r"^\| (hrnn-v1|full|no_shortcut) \| ([01-]) \| "
                           r"(\S+) \(-\) \| (\d) / (\d) of 1 \|$",
                           captured.out, re.M)
  assert len(paired_rows) == 5, captured.out
  for row, r in zip(paired_rows, results[1:]):
    assert row[0] == r["variant"]
    ratio = r["tuned_by_task"]["heldout:0"] / start["heldout:0"]
    assert float(row[2]) == pytest.approx(ratio, rel=1e-2)
    assert (int(row[3]), int(row[4])) == (int(ratio < 1 - 1e-3),
                                          int(ratio > 1 / (1 - 1e-3)))

  # Lines written before the per-task figures get them back from the
  # evaluations' records, checked against each line's own figure.
  path = os.path.join(res, "results.jsonl")
  recs = os.path.join(work, "eval", "records.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for r in results:
      f.write(json.dumps({k: v for k, v in r.items()
                          if k != "tuned_by_task"}) + "\n")
  assert ablations.main(_TINY + ["--workdir", work, "--results", res,
                                 "--backfill-records", recs]) == 0
  assert "added per-task figures to 6 line(s)" in capsys.readouterr().err
  with open(path, encoding="utf-8") as f:
    assert [json.loads(l) for l in f] == results
  broken = [dict(r) for r in results]
  del broken[2]["tuned_by_task"]
  broken[2]["geomean_tuned"] *= 2
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in broken)
  with pytest.raises(SystemExit, match="cannot backfill full seed 0"):
    ablations.main(_TINY + ["--workdir", work, "--results", res,
                            "--backfill-records", recs])
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in results)

  # Other settings are refused, and nothing is appended.
  args = _TINY[:]
  args[args.index("--inner-steps") + 1] = "10"
  with pytest.raises(SystemExit, match="other settings"):
    ablations.main(args + ["--variants", "full", "--workdir", work,
                           "--results", res])
  with open(os.path.join(res, "results.jsonl"), encoding="utf-8") as f:
    assert len(f.readlines()) == 6


def test_load_results_drops_a_cut_off_last_line_and_refuses_a_bad_one(
    tmp_path, capsys, benchmark_module):
  ablations = benchmark_module("ablations")
  settings = {"config": "tiny", "set": [], "minutes": 1.0}
  path = str(tmp_path / "results.jsonl")
  assert not ablations.load_results(path, settings)
  good = {"variant": "full", "seed": 0, "settings": settings}
  ablations.append_result(path, good)
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"variant": "full", "se')  # a write cut off by a kill
  assert ablations.load_results(path, settings) == [good]
  assert "line 2 is incomplete" in capsys.readouterr().err
  ablations.append_result(path, good)  # the next run's line stays whole
  assert ablations.load_results(path, settings) == [good, good]

  with open(path, "a", encoding="utf-8") as f:
    f.write("not json\n")
  ablations.append_result(path, good)
  with pytest.raises(SystemExit, match="line 3 is not JSON"):
    ablations.load_results(path, settings)


def test_variants_the_config_does_not_allow_are_refused_or_skipped(
    tmp_path, capsys, benchmark_module):
  ablations = benchmark_module("ablations")
  common = ["--config", "v2", "--workdir", str(tmp_path)]
  # Named explicitly: refused before any meta-training.
  assert ablations.main(common + ["--variants", "full,paper_start"]) == 2
  err = capsys.readouterr().err
  assert "variant paper_start does not apply to config v2" in err
  assert "needs nominal_adam" in err
  assert not os.path.exists(tmp_path / "results.jsonl")
  # The default list: skipped with a notice, the others kept.
  assert ablations.main(common + ["--meta-seeds", "0",
                                  "--no-references"]) == 0
  captured = capsys.readouterr()
  assert "skipping variant paper_start" in captured.err
  assert "0 run(s) already in" in captured.err and "0 to go" in captured.err


def test_paired_ratios_over_the_start(benchmark_module):
  paired = benchmark_module("ablations").paired
  start = {"a": 1.0, "b": 1.0, "c": 1.0, "d": None}
  # Half as good on one task, twice on another: a geomean of 1, and the
  # standard error of the two logs +-log 2 is log 2.
  g, se, better, worse, n = paired({"a": 0.5, "b": 2.0}, start)
  assert (better, worse, n) == (1, 1, 2)
  assert g == pytest.approx(1.0) and se == pytest.approx(np.log(2.0))
  # Diverged where the start did not: a loss, and no finite mean; where
  # both diverged: a tie.
  g, se, better, worse, n = paired({"a": 0.5, "c": None, "d": None}, start)
  assert (g, se, better, worse, n) == (np.inf, None, 1, 1, 3)
  assert paired({}, start)[2:] == (0, 0, 0)
