"""Evaluator records (``workdir/eval/records.jsonl``) and their comparison.

One JSON line per (source, task, optimizer, hyperparameters, seed, steps),
where the source is a checkpoint step (``"step:1200"``) or an optimizer file
(``"file:my.lopt@<sha256 prefix>"``). Appends are one ``write`` of one line
under an exclusive ``flock``, so concurrent evaluators never interleave, and
a torn last line (a writer killed mid-write) is skipped on reading and
rewritten by the next run. Reading back the keys makes evaluation
idempotent: a restarted evaluator skips what is recorded.

Comparisons are honest: a diverged or non-finite run counts as an infinite
loss (it loses to everything), and a mean over seeds with one such seed is
infinite too.
"""

from __future__ import annotations

import collections
import fcntl
import json
import math
import os
import warnings
from typing import Any, Iterable

import numpy as np


def record_key(source: str, task_key: str, optimizer: str,
               hparams: dict[str, Any], seed: int, steps: int) -> str:
  return json.dumps([source, task_key, optimizer,
                     json.dumps(hparams, sort_keys=True), int(seed),
                     int(steps)])


_NUMBER = (int, float)
# Field: (accepted types, required, None accepted). Every reader of records
# (tables, reports, export --best, the evaluators' keys) relies on these.
_FIELDS = {
    "key": (str, True, False), "source": (str, True, False),
    "task": (str, True, False), "optimizer": (str, True, False),
    "hparams": (dict, True, False), "final_loss": (_NUMBER, True, True),
    "diverged": (bool, True, False), "metrics": (dict, True, True),
    "seed": (int, False, False), "curve": (list, False, True),
    "checkpoint_step": (int, False, True),
}


def record_problem(rec: Any) -> str | None:
  """Why ``rec`` is not a usable record (None if it is)."""
  if not isinstance(rec, dict):
    return f"a JSON {type(rec).__name__}, not an object"
  for name, (types, required, nullable) in _FIELDS.items():
    if name not in rec:
      if required:
        return f"no {name!r}"
      continue
    v = rec[name]
    if v is None and nullable:
      continue
    if not isinstance(v, types) or (isinstance(v, bool) and types is not
                                    bool):  # True is an int, not a seed
      return f"{name!r} is {v!r:.40}"
  lr = rec["hparams"].get("learning_rate")
  if lr is not None and (isinstance(lr, bool) or not isinstance(lr, _NUMBER)):
    return f"'hparams.learning_rate' is {lr!r:.40}"
  return None


def read(path: str) -> list[dict[str, Any]]:
  """All usable records in ``path`` ([] if it does not exist).

  Unparseable lines and records without the fields every reader needs
  (``_FIELDS``) are skipped, with one warning that counts them; a torn last
  line (a writer killed mid-write) is skipped silently.
  """
  out = []
  try:
    with open(path, "rb") as f:
      lines = f.read().split(b"\n")
  except FileNotFoundError:
    return out
  bad: list[str] = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except ValueError:
      if i != len(lines) - 1:  # a torn last line is expected after a kill
        bad.append(f"line {i + 1} is not JSON")
      continue
    why = record_problem(rec)
    if why is None:
      out.append(rec)
    else:
      bad.append(f"line {i + 1}: {why}")
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    warnings.warn(f"{path}: skipped {len(bad)} unusable line(s) ("
                  f"{'; '.join(bad[:3])}{more})", stacklevel=2)
  return out


class RecordWriter:
  """Appends records to a JSONL file and remembers which keys it holds."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.keys = {r["key"] for r in read(path)}

  def refresh(self) -> None:
    """Re-reads the keys (other evaluators may have appended)."""
    self.keys = {r["key"] for r in read(self.path)}

  def has(self, key: str) -> bool:
    return key in self.keys

  def append(self, record: dict[str, Any]) -> None:
    """Appends one record atomically; a torn last line is closed first."""
    data = (json.dumps(record, allow_nan=False, sort_keys=True) + "\n"
            ).encode()
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      size = os.fstat(fd).st_size
      if size:
        with open(self.path, "rb") as f:
          f.seek(size - 1)
          if f.read(1) != b"\n":
            data = b"\n" + data  # end a torn line so ours parses
      os.write(fd, data)
      os.fsync(fd)
    finally:
      os.close(fd)  # releases the lock
    self.keys.add(record["key"])


# ---------------------------------------------------------------------------
# Comparison.


def loss_of(record: dict[str, Any]) -> float:
  """The final loss a comparison uses: inf for a diverged run."""
  v = record.get("final_loss")
  if record.get("diverged") or v is None or not math.isfinite(v):
    return math.inf
  return float(v)


# A final loss below this fraction of the task's initial loss counts as
# solved: two such losses tie, and ratios use the floor (the meta-objective
# floors log(f / f_0) the same way). Without it a run whose float32 loss
# underflows to exactly 0 "beats" one at 1e-7 by an infinite ratio.
SOLVED = 1e-6


# Ratios within this of 1 tie: neither wins. The untrained optimizer *is*
# Adam, and two equal runs differ by float rounding (e.g. the CPU kernel).
TIE = 1e-3


def solved_floor(records: Iterable[dict[str, Any]]) -> float:
  """``SOLVED`` times the task's initial loss (the median over ``records``
  of each curve's step-0 value); 0.0 when no record has one."""
  f0 = [r["curve"][0][1] for r in records if r.get("curve") and
        r["curve"][0][0] == 0 and r["curve"][0][1] is not None and
        math.isfinite(r["curve"][0][1])]
  return SOLVED * float(np.median(np.abs(f0))) if f0 else 0.0


def loss_ratio(loss: float, ref: float, floor: float) -> float:
  """``loss / ref`` with both floored at ``floor`` (a diverged loss is inf:
  the ratio is inf, or 0 when only ``ref`` diverged)."""
  if math.isinf(loss):
    return math.inf
  if math.isinf(ref):
    return 0.0
  if floor > 0:
    return max(loss, floor) / max(ref, floor)
  return (loss + 1e-12) / (ref + 1e-12)


def mean_loss(records: Iterable[dict[str, Any]]) -> float:
  """Mean final loss over seeds; inf if any seed diverged."""
  vals = [loss_of(r) for r in records]
  return float(np.mean(vals)) if vals else math.nan


def mean_metric(records: Iterable[dict[str, Any]], name: str) -> float | None:
  vals = [(r.get("metrics") or {}).get(name) for r in records]
  if not vals or any(v is None for v in vals):
    return None
  return float(np.mean(vals))


def sources(records: Iterable[dict[str, Any]]) -> list[str]:
  """The learned-optimizer sources in ``records``, oldest step first."""
  def order(s):
    kind, _, val = s.partition(":")
    return (0, int(val), "") if kind == "step" else (1, 0, s)
  return sorted({r["source"] for r in records}, key=order)


def summarize(records: list[dict[str, Any]], source: str
              ) -> list[dict[str, Any]]:
  """Per task at ``source``: the learned optimizer against the baselines.

  Three comparisons (``docs/architecture.md``, "Comparing like with like"):

  * untuned against tuned (``ratio``, ``winner``): the learned optimizer at
    its default rate (records without a learning rate) against the best
    baseline, each baseline tuned per task (its learning rate with the
    lowest mean final loss over seeds);
  * tuned against tuned (``ratio_tuned``, ``winner_tuned``): the learned
    optimizer's rate chosen per task the same way, over its own swept
    records (``SuiteConfig.learned_lrs``), against the same best baseline;
  * default against default (``ratio_default``, ``winner_default``): the
    learned optimizer at its default rate against Adam at 1e-3;
  * tuned against tuned Adam (``ratio_tuned_adam``, ``winner_tuned_adam``):
    the learned optimizer's tuned rate against Adam alone, tuned per task
    (issue 23's target: a learned optimizer a user would pick over Adam
    with a tuned rate). The best of three tuned baselines is a stricter
    bar: on the validation suite Adam-equivalent optimizers score about
    1.12 against it.

  The learned optimizer wins a comparison when its ratio is below ``1 -
  TIE``. A comparison whose records are missing has a nan ratio and the winner
  ``"incomplete"`` (the sweep and Adam 1e-3 are optional; the first one is
  not). Rows also carry ``task``, ``learned`` and ``learned_tuned`` (mean
  final losses; ``learned_lr`` the chosen rate), ``learned_diverged``
  (seeds at the default rate), ``baselines`` ({name: (loss, lr)}), ``best``
  (the best tuned baseline), ``adam_default`` and the task's metric. Ratios
  floor both losses at ``solved_floor``; a diverged learned optimizer's is
  inf. ``unbracketed`` lists the tuned optimizers (baselines and
  ``"learned"``) whose chosen rate is the smallest or largest of the rates
  they ran on the task: their optimum may lie outside the grid, so the
  tuned comparisons involving them are not a fair "tuned".
  """
  by_task: dict[str, list] = collections.defaultdict(list)
  for r in records:
    if r["source"] == source:
      by_task[r["task"]].append(r)
  rows = []
  for task, recs in sorted(by_task.items()):
    groups: dict[tuple, list] = collections.defaultdict(list)
    for r in recs:
      groups[(r["optimizer"], r["hparams"].get("learning_rate"))].append(r)
    learned = groups.pop(("learned", None), [])
    swept = {lr: rs for (o, lr), rs in groups.items() if o == "learned"}
    tuned: dict[str, tuple[float, Any, list]] = {}
    for (name, lr), rs in groups.items():
      m = mean_loss(rs)
      if name != "learned" and (name not in tuned or m < tuned[name][0]):
        tuned[name] = (m, lr, rs)
    best = min(tuned, key=lambda n: tuned[n][0]) if tuned else None
    b_loss = tuned[best][0] if best else math.nan
    floor = solved_floor(recs)
    l_loss = mean_loss(learned) if learned else math.nan
    l_lr = (min(swept, key=lambda lr: mean_loss(swept[lr])) if swept
            else None)
    lt_loss = mean_loss(swept[l_lr]) if swept else math.nan
    adam_default = (mean_loss(groups[("adam", 1e-3)])
                    if ("adam", 1e-3) in groups else math.nan)

    def compare(loss, ref, ref_name, have):
      if not have:
        return math.nan, "incomplete"
      ratio = loss_ratio(loss, ref, floor)  # below the floor ties
      return ratio, "learned" if ratio < 1 - TIE else ref_name

    ratio, winner = compare(l_loss, b_loss, best,
                            bool(learned) and best is not None)
    ratio_t, winner_t = compare(lt_loss, b_loss, best,
                                bool(swept) and best is not None)
    ratio_d, winner_d = compare(l_loss, adam_default, "adam 1e-3",
                                bool(learned) and ("adam", 1e-3) in groups)
    ratio_ta, winner_ta = compare(
        lt_loss, tuned["adam"][0] if "adam" in tuned else math.nan, "adam",
        bool(swept) and "adam" in tuned)
    metric = recs[0].get("metric") or ""
    grids: dict[str, list] = collections.defaultdict(list)
    for (name, lr) in groups:
      if lr is not None:
        grids[name].append(lr)
    chosen = {n: v[1] for n, v in tuned.items()}
    if swept:
      chosen["learned"] = l_lr
    rows.append({
        "task": task, "metric": metric, "learned": l_loss,
        "learned_diverged": sum(bool(r.get("diverged")) for r in learned),
        "seeds": len(learned),
        "baselines": {n: (v[0], v[1]) for n, v in sorted(tuned.items())},
        "best": best, "best_loss": b_loss, "ratio": ratio, "winner": winner,
        "learned_tuned": lt_loss, "learned_lr": l_lr,
        "ratio_tuned": ratio_t, "winner_tuned": winner_t,
        "adam_default": adam_default, "ratio_default": ratio_d,
        "winner_default": winner_d, "ratio_tuned_adam": ratio_ta,
        "winner_tuned_adam": winner_ta,
        "learned_metric": mean_metric(learned, metric) if metric else None,
        "learned_tuned_metric": (mean_metric(swept[l_lr], metric)
                                 if metric and swept else None),
        "best_metric": (mean_metric(tuned[best][2], metric)
                        if metric and best else None),
        "unbracketed": sorted(n for n, lr in chosen.items()
                              if at_grid_end(lr, grids[n])),
    })
  return rows


def at_grid_end(lr: float, rates) -> bool:
  """Whether ``lr``, chosen among ``rates``, is their smallest or largest:
  its optimum may lie outside the grid (not bracketed)."""
  rates = list(rates)
  return len(rates) > 1 and lr in (min(rates), max(rates))


def geomean(ratios) -> float:
  """The geometric mean of loss ratios: inf if any is inf (a divergence
  loses), nan if there are none; a 0 counts as 1e-300, not as -inf."""
  ratios = np.asarray(list(ratios), float)
  if ratios.size == 0:
    return math.nan
  return float(np.exp(np.mean(np.log(np.maximum(ratios, 1e-300)))))


def rate_profile(records: list[dict[str, Any]], source: str
                 ) -> dict[float, list[float]]:
  """{rate: [per task, the learned optimizer's mean final loss at that swept
  rate / the best tuned baseline's]} at ``source``: how good each rate of
  its grid would be as its one default (as the baselines' "global" rates;
  ``geomean`` of a list is its score). Rates missing on any task are left
  out."""
  by_task: dict[str, list] = collections.defaultdict(list)
  for r in records:
    if r["source"] == source:
      by_task[r["task"]].append(r)
  ratios: dict[float, list[float]] = collections.defaultdict(list)
  for recs in by_task.values():
    groups: dict[tuple, list] = collections.defaultdict(list)
    for r in recs:
      groups[(r["optimizer"], r["hparams"].get("learning_rate"))].append(r)
    base = [mean_loss(rs) for (o, _), rs in groups.items() if o != "learned"]
    if not base:
      continue
    floor = solved_floor(recs)
    for (o, lr), rs in groups.items():
      if o == "learned" and lr is not None:
        ratios[lr].append(loss_ratio(mean_loss(rs), min(base), floor))
  return {lr: v for lr, v in sorted(ratios.items()) if len(v) == len(by_task)}


# The comparisons ``summarize`` makes: (name, ratio field, winner field).
COMPARISONS = (("untuned", "ratio", "winner"),
               ("tuned", "ratio_tuned", "winner_tuned"),
               ("default", "ratio_default", "winner_default"),
               ("tuned_adam", "ratio_tuned_adam", "winner_tuned_adam"))


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """One source's headline figures from its ``summarize`` rows.

  ``geomean_ratio`` (untuned learned / best tuned baseline, lower is
  better; inf if the learned optimizer diverged anywhere, None while
  incomplete), ``wins``, ``tasks``, ``diverged`` (tasks with a diverged
  learned seed), ``complete``; the same ``geomean_tuned``/``wins_tuned``,
  ``geomean_default``/``wins_default`` and ``geomean_tuned_adam``/
  ``wins_tuned_adam`` for the other comparisons (None and 0 where a task
  lacks their records); ``selection``, the score that picks checkpoints
  (``selection_score``); and ``unbracketed``, {optimizer: the tasks on
  which its tuned rate is an end of its grid} (rows without the field
  count none).
  """
  out: dict[str, Any] = {"tasks": len(rows)}
  for name, ratio_key, winner_key in COMPARISONS:
    ratios = np.array([r[ratio_key] for r in rows], float)
    done = bool(rows) and all(r[winner_key] != "incomplete" for r in rows)
    suffix = "" if name == "untuned" else f"_{name}"
    out[f"geomean{suffix or '_ratio'}"] = geomean(ratios) if done else None
    out[f"wins{suffix}"] = int(np.sum(ratios < 1 - TIE))
    if name == "untuned":
      out["complete"] = done
  out["diverged"] = int(sum(r["learned_diverged"] > 0 for r in rows))
  out["selection"] = selection_score(out)
  out["unbracketed"] = dict(sorted(collections.Counter(
      n for r in rows for n in r.get("unbracketed", ())).items()))
  return out


def unbracketed_note(s: dict[str, Any]) -> str:
  """A warning line for ``score``'s ``unbracketed`` counts, or ""."""
  if not s.get("unbracketed"):
    return ""
  parts = ", ".join(f"{n} on {k}/{s['tasks']}"
                    for n, k in s["unbracketed"].items())
  return (f"not bracketed: the tuned rate is an end of the grid for {parts} "
          "task(s); their optimum may lie outside it, so the tuned "
          "comparisons there are not fully tuned (widen the grid, e.g. "
          "--set adam_lrs=[...])")


def selection_score(s: dict[str, Any]) -> float | None:
  """What picks a checkpoint (``best_step``, ``lopt export --best``, the
  shipped optimizer), lower is better: the geometric mean of the untuned
  and the tuned comparison's geomean ratios where the learned rate was
  swept (a user both takes the default and tunes it), else the untuned
  one. None while incomplete."""
  untuned, tuned = s["geomean_ratio"], s.get("geomean_tuned")
  if untuned is None:
    return None
  if tuned is None:
    return untuned
  return math.sqrt(untuned * tuned)


def run_of(record: dict[str, Any]) -> tuple[str, str, Any, int]:
  """``(task, optimizer, learning rate, seed)``, as ``SuiteConfig.runs``."""
  return (record["task"], record["optimizer"],
          record["hparams"].get("learning_rate"), record.get("seed", 0))


def best_step(records: list[dict[str, Any]], steps: Iterable[int],
              runs: Iterable[tuple] | None = None
              ) -> tuple[int, dict[str, Any]] | None:
  """The best fully evaluated checkpoint among ``steps``.

  Args:
    records: all records (``read``).
    steps: the candidate checkpoint steps (those still on disk).
    runs: the runs of a full evaluation (``SuiteConfig.runs``): a step with
      any of them missing (e.g. evaluators that share the suite are still at
      it) is not fully evaluated, and records of other runs are ignored.
      None: ``score``'s ``complete`` alone decides.

  Returns:
    ``(step, score)`` of the step with the lowest ``selection`` score
    (``selection_score``), the newest among equals, or None when no step
    is fully evaluated.
  """
  want = None if runs is None else set(runs)
  by_source: dict[str, list] = collections.defaultdict(list)
  for r in records:
    if want is None or run_of(r) in want:
      by_source[r["source"]].append(r)
  scored = []
  for step in steps:
    source = f"step:{step}"
    recs = by_source.get(source, [])
    if want is not None and {run_of(r) for r in recs} != want:
      continue
    s = score(summarize(recs, source))
    if s["complete"]:
      scored.append((s["selection"], -step, step, s))
  if not scored:
    return None
  _, _, step, s = min(scored)
  return step, s
