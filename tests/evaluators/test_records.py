"""Records: atomic appends, torn lines, honest comparisons."""

import json
import math

import pytest

from evaluators import records


def _rec(key, optimizer, loss, lr=None, task="t", source="step:5",
         diverged=False):
  return {"key": key, "source": source, "task": task,
          "optimizer": optimizer, "metric": "accuracy",
          "hparams": {} if lr is None else {"learning_rate": lr},
          "final_loss": loss, "diverged": diverged,
          "metrics": {"accuracy": 0.5}}


def test_a_torn_last_line_is_skipped_and_closed_by_the_next_append(tmp_path):
  path = tmp_path / "eval" / "records.jsonl"
  w = records.RecordWriter(str(path))
  w.append(_rec("a", "adam", 1.0, 1e-3))
  with open(path, "a") as f:
    f.write('{"key": "b", "optimi')  # a writer killed mid-line
  assert [r["key"] for r in records.read(str(path))] == ["a"]
  w2 = records.RecordWriter(str(path))
  assert w2.has("a") and not w2.has("b")
  w2.append(_rec("b", "adam", 2.0, 1e-2))
  # The closed torn line is no longer last: skipped, and now counted.
  with pytest.warns(UserWarning, match=r"skipped 1 unusable line\(s\) \(line "
                    r"2 is not JSON\)"):
    assert [r["key"] for r in records.read(str(path))] == ["a", "b"]


def test_non_finite_values_never_reach_the_file(tmp_path):
  w = records.RecordWriter(str(tmp_path / "r.jsonl"))
  try:
    w.append(_rec("x", "adam", float("inf")))
  except ValueError:
    pass
  else:
    raise AssertionError("an inf final loss was written")


def test_baselines_are_tuned_per_task_and_divergence_loses():
  recs = [
      _rec("1", "adam", 0.5, 1e-3), _rec("2", "adam", 0.2, 1e-2),
      _rec("3", "adam", None, 1e-1, diverged=True),
      _rec("4", "sgdm", 0.4, 0.1),
      _rec("5", "learned", 0.1), _rec("6", "learned", 0.2),
  ]
  (row,) = records.summarize(recs, "step:5")
  assert row["baselines"]["adam"] == (0.2, 1e-2)  # best lr, diverged lr out
  assert row["best"] == "adam" and row["winner"] == "learned"
  assert math.isclose(row["ratio"], 0.15 / 0.2)
  # One diverged seed makes the learned optimizer's mean infinite: it loses.
  recs.append(_rec("7", "learned", None, diverged=True))
  (row,) = records.summarize(recs, "step:5")
  assert math.isinf(row["learned"]) and row["winner"] == "adam"
  assert math.isinf(row["ratio"]) and row["learned_diverged"] == 1
  # Every baseline diverged: the learned optimizer wins if it did not.
  recs = [_rec("1", "adam", None, 1e-3, diverged=True),
          _rec("2", "learned", 3.0)]
  (row,) = records.summarize(recs, "step:5")
  assert row["winner"] == "learned" and row["ratio"] == 0.0


def test_three_comparisons_default_tuned_and_untuned():
  recs = [
      _rec("1", "adam", 0.5, 1e-3), _rec("2", "adam", 0.2, 1e-2),
      _rec("3", "sgdm", 0.4, 0.1),
      _rec("4", "learned", 0.4),  # its default rate
      _rec("5", "learned", 0.3, 1e-3), _rec("6", "learned", 0.1, 1e-2),
      _rec("7", "learned", None, 1e-1, diverged=True),
  ]
  (row,) = records.summarize(recs, "step:5")
  # Untuned: the default rate against the best tuned baseline (adam 1e-2).
  assert math.isclose(row["ratio"], 0.4 / 0.2) and row["winner"] == "adam"
  # Tuned: its best swept rate (1e-2; the diverged rate is out) against it.
  assert row["learned_lr"] == 1e-2 and row["learned_tuned"] == 0.1
  assert math.isclose(row["ratio_tuned"], 0.1 / 0.2)
  assert row["winner_tuned"] == "learned"
  # Default: the default rate against Adam at 1e-3.
  assert row["adam_default"] == 0.5
  assert math.isclose(row["ratio_default"], 0.4 / 0.5)
  assert row["winner_default"] == "learned"
  s = records.score([row])
  assert (s["wins"], s["wins_tuned"], s["wins_default"]) == (0, 1, 1)
  assert math.isclose(s["geomean_tuned"], 0.5)
  assert math.isclose(s["geomean_default"], 0.8)
  # Checkpoints are picked on both ways a user runs it: sqrt(2.0 * 0.5).
  assert math.isclose(s["selection"], 1.0)


def test_tuned_vs_tuned_adam_is_against_adam_alone():
  # SGD-M tuned (0.1) beats Adam tuned (0.2): the learned optimizer's tuned
  # 0.15 loses to the best baseline but beats Adam alone.
  recs = [
      _rec("1", "adam", 0.5, 1e-3), _rec("2", "adam", 0.2, 1e-2),
      _rec("3", "sgdm", 0.1, 0.1),
      _rec("4", "learned", 0.4),
      _rec("5", "learned", 0.15, 1e-2), _rec("6", "learned", 0.3, 1e-3),
  ]
  (row,) = records.summarize(recs, "step:5")
  assert math.isclose(row["ratio_tuned"], 0.15 / 0.1)
  assert row["winner_tuned"] == "sgdm"
  assert math.isclose(row["ratio_tuned_adam"], 0.15 / 0.2)
  assert row["winner_tuned_adam"] == "learned"
  s = records.score([row])
  assert (s["wins_tuned"], s["wins_tuned_adam"]) == (0, 1)
  assert math.isclose(s["geomean_tuned_adam"], 0.75)
  # The selection score does not read it.
  assert math.isclose(s["selection"], math.sqrt(4.0 * 1.5))
  # Without Adam runs it is missing, not won.
  (row,) = records.summarize([r for r in recs if r["optimizer"] != "adam"],
                             "step:5")
  assert row["winner_tuned_adam"] == "incomplete"
  assert records.score([row])["geomean_tuned_adam"] is None


def test_a_tuned_rate_at_an_end_of_its_grid_is_flagged_not_bracketed():
  recs = [
      _rec("1", "adam", 0.5, 1e-3), _rec("2", "adam", 0.2, 1e-2),
      _rec("3", "adam", 0.3, 1e-1),  # adam's best, 1e-2, is inside its grid
      _rec("4", "sgdm", 0.4, 1e-2), _rec("5", "sgdm", 0.1, 1e-1),  # the top
      _rec("6", "rmsprop", 0.3, 1e-3),  # one rate: nothing to bracket
      _rec("7", "learned", 0.4),
      _rec("8", "learned", 0.3, 1e-3), _rec("9", "learned", 0.15, 1e-2),
  ]
  (row,) = records.summarize(recs, "step:5")
  assert row["unbracketed"] == ["learned", "sgdm"]
  s = records.score([row])
  assert s["unbracketed"] == {"learned": 1, "sgdm": 1}
  note = records.unbracketed_note(s)
  assert note.startswith("not bracketed: the tuned rate is an end of the "
                         "grid for learned on 1/1, sgdm on 1/1 task(s)")
  from evaluators import report  # pylint: disable=import-outside-toplevel
  assert report.summary_lines(s)[-1] == note
  # Rows written before the field existed count none, and say nothing.
  del row["unbracketed"]
  s = records.score([row])
  assert s["unbracketed"] == {} and records.unbracketed_note(s) == ""
  assert not report.summary_lines(s)[-1].startswith("not bracketed")


def test_without_a_sweep_the_tuned_comparison_is_missing_not_won():
  recs = [_rec("1", "adam", 0.5, 1e-2), _rec("2", "learned", 0.25)]
  (row,) = records.summarize(recs, "step:5")
  assert row["winner_tuned"] == "incomplete" and math.isnan(
      row["ratio_tuned"])
  assert row["winner_default"] == "incomplete"  # no Adam 1e-3 run
  s = records.score([row])
  assert s["geomean_tuned"] is None and s["wins_tuned"] == 0
  assert s["selection"] == s["geomean_ratio"] == pytest.approx(0.5)


def test_losses_below_the_solved_floor_tie_instead_of_winning():
  def rec(key, opt, loss, lr=None):
    return dict(_rec(key, opt, loss, lr), curve=[[0, 2.0], [10, loss]])

  # float32 cross-entropy underflowing to exactly 0 is no better than 1e-7:
  # both are below 1e-6 of the initial loss 2.0.
  (row,) = records.summarize([rec("1", "adam", 1e-7, 1e-2),
                              rec("2", "learned", 0.0)], "step:5")
  assert row["winner"] == "adam" and row["ratio"] == 1.0
  # Above the floor, ratios count from it: 1e-3 / 2e-6.
  (row,) = records.summarize([rec("1", "adam", 1e-7, 1e-2),
                              rec("2", "learned", 1e-3)], "step:5")
  assert math.isclose(row["ratio"], 500.0)
  assert records.loss_ratio(float("inf"), 1.0, 1e-6) == math.inf
  assert records.loss_ratio(1.0, float("inf"), 1e-6) == 0.0


def test_sources_are_ordered_by_step():
  recs = [_rec("a", "adam", 1.0, source=s)
          for s in ("step:20", "file:x@1", "step:3", "step:100")]
  assert records.sources(recs) == ["step:3", "step:20", "step:100",
                                   "file:x@1"]
  key = records.record_key("step:3", "t", "adam", {"learning_rate": 0.1}, 0,
                           10)
  assert json.loads(key)[0] == "step:3"


def test_geomean_counts_divergence_as_a_loss():
  assert math.isclose(records.geomean([2.0, 8.0]), 4.0)
  assert records.geomean([0.5, math.inf]) == math.inf
  # A 0 ratio (only the baseline diverged) is 1e-300, not -inf or nan.
  assert 0.0 < records.geomean([0.0, 1.0]) < 1e-140
  assert math.isnan(records.geomean([]))


def test_records_without_the_fields_readers_need_are_skipped_and_counted(
    tmp_path):
  path = tmp_path / "records.jsonl"
  w = records.RecordWriter(str(path))
  good = [_rec("a", "adam", 1.0, 1e-3), _rec("b", "learned", None,
                                             diverged=True)]
  for r in good:
    w.append(r)
  bad = [{"key": "x"}, dict(good[0], key="y", final_loss="abc"),
         dict(good[0], key="z", seed=True), dict(good[0], key="v",
                                                 hparams={"learning_rate":
                                                          "fast"}), [1]]
  with open(path, "a") as f:
    for b in bad:
      f.write(json.dumps(b) + "\n")
    f.write("{not json\n")
  with pytest.warns(UserWarning) as rec:
    assert records.read(str(path)) == good
  (msg,) = [str(m.message) for m in rec]
  assert "skipped 6 unusable line(s) (line 3: no 'source'; line 4: " \
      "'final_loss' is 'abc'; line 5: 'seed' is True and 3 more)" in msg
  with pytest.warns(UserWarning, match="skipped 6"):
    rows = records.summarize(records.read(str(path)), "step:5")
  assert [r["task"] for r in rows] == ["t"]  # readers see only good records


def test_resumed_sessions_are_the_steps_the_plots_mark(tmp_path):
  from evaluators import report  # pylint: disable=import-outside-toplevel
  assert report.resume_steps(str(tmp_path)) == []  # no run_info.json
  (tmp_path / "run_info.json").write_text(json.dumps({"sessions": [
      {"start_step": 0}, {"start_step": 30}, {"start_step": 30},
      {"start_step": 55}, {"start_step": "x"}]}))
  assert report.resume_steps(str(tmp_path)) == [30, 55]
