"""The paper's ablation study: switch off one feature, meta-train, compare.

Usage:
  python benchmarks/ablations.py [--minutes 20] [--variants a,b,...]
      [--config NAME] [--set k=v ...] [--meta-seeds 2] [--seeds 4]
      [--holdout 12] [--workdir DIR] [--results DIR] [--no-references]
      [--backfill-records WORKDIR/eval/records.jsonl]

Each variant of the HRNN (the full optimizer, then each feature switched off
in turn: the tensor and global RNNs (the hierarchy), the global RNN alone,
the multiple timescales, dynamic input scaling, the gradient shortcut; and
attention switched on, since it is off by default) is meta-trained in this
process for the same wall-clock budget, once per meta-training seed, from
the same training config, then evaluated on the held-out ensemble tasks
through the evaluators against Adam, RMSProp and SGD-M tuned per task, in
the three comparisons (tuned vs tuned: its rate swept over the same grid;
untuned vs tuned; default vs Adam 1e-3). The baselines' cache is shared, so
they run once. A diverged run is a loss. Two reference rows are evaluated
the same way once: ``start``, the untrained optimizer (Adam exactly, where
every variant but paper_start starts), and the shipped optimizer; and each
variant's tuned figure is also given over the full optimizer's of the same
meta-seed (the same tasks, so a ratio of the learned runs alone).

The whole study is hours (8 variants x 2 seeds x 20 minutes, plus the
evaluations), more than one session of a small machine, so it resumes:
every finished (variant, meta-seed) appends one line to
``--results``/results.jsonl and copies its trained optimizer there
(``<variant>-seed<k>.lopt``); rerun the same command, on this machine or on
another one with that directory committed, and it skips what is done and
prints the table of everything the file holds. A file written with other
settings (config, overrides, budget, evaluation) is refused, not mixed in.

A second table pairs each run with the untrained start task by task: the
geometric mean of the per-task tuned ratios' quotient, the standard error
of its log, and the tasks better and worse. It is the finer test of whether
meta-training moved the optimizer at all; the spread between meta-seeds is
the test of whether a feature matters. Lines from before the per-task
figures were recorded get them from the evaluations' records with
``--backfill-records``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from evaluators import records, suites, watch  # noqa: E402
from metatrain import files  # noqa: E402
from metatrain.optimizer import hrnn, zoo  # noqa: E402
from metatrain.training import config as config_lib
from metatrain.training import local_train

VARIANTS = {
    "full": {},
    "no_hierarchy": {"use_tensor_rnn": False, "use_global_rnn": False},
    "no_global_rnn": {"use_global_rnn": False},
    "one_timescale": {"num_timescales": 1},
    "no_input_scaling": {"dynamic_input_scaling": False},
    "no_shortcut": {"use_gradient_shortcut": False},
    "attention_on": {"use_attention": True},
    "paper_start": {"nominal_adam": False},
}


def evaluate(workdir, suite, hcfg, theta, name):
  """Held-out rows of ``theta`` (saved as a .lopt, the evaluators' path)."""
  src, recs = watch.evaluate_theta(workdir, suite, hcfg, theta, name,
                                   {"benchmark": "ablations", "variant": name},
                                   log=lambda m: None)
  return records.summarize(recs, src.id)


def _g(v) -> str:
  return "inf" if v is None or not np.isfinite(v) else f"{v:.3g}"


def _commit() -> str | None:
  """This checkout's commit, for the results' provenance (None outside git;
  ``LOPT_COMMIT`` names it for a snapshot without ``.git``)."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def load_results(path: str, settings: dict) -> list[dict]:
  """The finished runs in ``path`` (JSON lines), all of ``settings``.

  A last line cut off mid-write (a run killed while appending) is removed
  from the file with a warning, so the next line appended stays whole; that
  run reruns. Any other unreadable line, or a line of other settings, is an
  error that names the fix.
  """
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.split("\n")
  done = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      res = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:  # no newline after it: the write was cut off
        print(f"warning: {path} line {i + 1} is incomplete (a run killed "
              "while writing); removed, that run reruns", file=sys.stderr)
        with open(path, "r+", encoding="utf-8") as f:
          f.truncate(len(text.encode("utf-8")) - len(line.encode("utf-8")))
        continue
      raise SystemExit(f"{path} line {i + 1} is not JSON ({e}); fix or "
                       "remove that line, or pass another --results") from e
    if res.get("settings") != settings:
      raise SystemExit(
          f"{path} holds results of other settings:\n  "
          f"{json.dumps(res.get('settings'), sort_keys=True)}\nthis run's:"
          f"\n  {json.dumps(settings, sort_keys=True)}\nrerun with those "
          "settings to continue it, or pass another --results")
    done.append(res)
  return done


def _line(res: dict) -> str:
  """One results line: the run's dict as sorted JSON."""
  return json.dumps(res, sort_keys=True) + "\n"


def append_result(path: str, res: dict) -> None:
  """Appends one finished run as a line, flushed and synced to disk."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(_line(res))
    f.flush()
    os.fsync(f.fileno())


def print_tables(done: list[dict], names: list[str], minutes: float) -> None:
  """The study's tables: every run on file (of ``names`` and the
  references), then each run against the untrained start, task by task."""
  order = {n: i for i, n in enumerate(("start", zoo.DEFAULT, *VARIANTS))}
  results = sorted((r for r in done
                    if r["variant"] in names + ["start", zoo.DEFAULT]),
                   key=lambda r: (order[r["variant"]], r["seed"]))
  full = {r["seed"]: r["geomean_tuned"] for r in done
          if r["variant"] == "full"}
  print(f"\n| variant | meta-seed | meta-steps in {minutes:g} min | "
        "held-out meta-objective | tuned vs tuned: geomean (wins) | "
        "tuned, over full's of the same meta-seed | "
        "untuned vs tuned: geomean (wins) | default vs Adam 1e-3: geomean "
        "(wins) | diverged |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in results:
    n = r["tasks"]
    ref = r["variant"] in ("start", zoo.DEFAULT)
    vs_full = ("-" if ref or r["seed"] not in full
               else _g(r["geomean_tuned"] / full[r["seed"]]))
    print(f"| {r['variant']} | {'-' if ref else r['seed']} | "
          f"{r['meta_steps']} | {r['objective']:+.4f} | "
          f"{_g(r['geomean_tuned'])} ({r['wins_tuned']}/{n}) | {vs_full} | "
          f"{_g(r['geomean'])} ({r['wins']}/{n}) "
          f"| {_g(r['geomean_default'])} ({r['wins_default']}/{n}) | "
          f"{r['diverged']} |")
  start = next((r for r in done if r["variant"] == "start"), None)
  if start is None or "tuned_by_task" not in start:
    return
  print("\n| variant | meta-seed | tuned, over the start's, task by task: "
        "geomean (se of the mean log) | tasks better / worse than the "
        "start |")
  print("|---|---:|---:|---:|")
  for r in results:
    if r["variant"] == "start" or "tuned_by_task" not in r:
      continue
    g, se, better, worse, n = paired(r["tuned_by_task"],
                                     start["tuned_by_task"])
    ref = r["variant"] == zoo.DEFAULT
    print(f"| {r['variant']} | {'-' if ref else r['seed']} | {_g(g)} "
          f"({'-' if se is None else f'{se:.3f}'}) | {better} / {worse} of "
          f"{n} |")


def tuned_by_task(rows: list[dict]) -> dict[str, float | None]:
  """Each task's tuned-vs-tuned ratio (None where it is not finite: a
  diverged or missing run)."""
  return {r["task"]: (float(r["ratio_tuned"])
                      if np.isfinite(r["ratio_tuned"]) else None)
          for r in rows}


def paired(a: dict, b: dict) -> tuple[float, float | None, int, int, int]:
  """``a``'s per-task ratios over ``b``'s, on the tasks both have.

  Returns the geometric mean, the standard error of the mean log ratio
  (None under 2 tasks), the tasks where ``a`` is better and where it is
  worse (by more than ``records.TIE``), and the task count. A task that
  is not finite in ``a`` only is a loss; in both, a tie.
  """
  logs, better, worse = [], 0, 0
  for task in sorted(set(a) & set(b)):
    x, y = a[task], b[task]
    if x is None or y is None:
      logs.append(0.0 if x is None and y is None
                  else np.inf if x is None else -np.inf)
    else:
      logs.append(float(np.log(x / y)))
    better += logs[-1] < np.log1p(-records.TIE)
    worse += logs[-1] > -np.log1p(-records.TIE)
  n = len(logs)
  if not n:
    return float("nan"), None, 0, 0, 0
  arr = np.asarray(logs)
  mean = float(np.mean(arr))
  se = (float(np.std(arr, ddof=1) / np.sqrt(n))
        if n > 1 and np.all(np.isfinite(arr)) else None)
  return float(np.exp(mean)), se, int(better), int(worse), n


def backfill(path: str, done: list[dict], records_path: str) -> list[dict]:
  """Adds ``tuned_by_task`` to the lines of ``path`` that lack it.

  Each run's rows are recomputed from the evaluations' records of its
  ``.lopt`` (beside ``path``; the shipped file for ``hrnn-v1``), matched by
  name and content digest, and must give the line's own tuned figure
  again. The file is rewritten whole (a temporary file, then a rename).
  """
  todo = [r for r in done if "tuned_by_task" not in r]
  if not todo:
    print(f"every line of {path} has its per-task figures", file=sys.stderr)
    return done
  recs = records.read(records_path)
  for r in todo:
    lopt = (zoo.pretrained_path(zoo.DEFAULT) if r["variant"] == zoo.DEFAULT
            else os.path.join(os.path.dirname(path),
                              f"{r['variant']}-seed{r['seed']}.lopt"))
    if not os.path.exists(lopt):
      raise SystemExit(f"cannot backfill {r['variant']} seed {r['seed']}: "
                       f"{lopt} is missing")
    src = watch.file_source(lopt).id
    rows = records.summarize(recs, src)
    got = records.score(rows)["geomean_tuned"] if rows else None
    if got is None or not np.isclose(got, r["geomean_tuned"], rtol=1e-9):
      raise SystemExit(
          f"cannot backfill {r['variant']} seed {r['seed']}: the records of "
          f"{src} in {records_path} give a tuned figure of {got}, the line "
          f"{r['geomean_tuned']}; pass the records of its evaluation")
    r["tuned_by_task"] = tuned_by_task(rows)
  files.write_atomic(path, "".join(_line(r) for r in done))
  print(f"added per-task figures to {len(todo)} line(s) of {path}",
        file=sys.stderr)
  return done


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=20.0,
                  help="meta-training budget per variant and seed")
  ap.add_argument("--variants", default=None,
                  help="comma-separated (default: every variant that the "
                  "config allows)")
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--meta-seeds", type=int, default=2,
                  help="meta-training runs per variant (config seeds 0..N-1)")
  ap.add_argument("--seeds", type=int, default=4,
                  help="inner seeds per held-out evaluation run")
  ap.add_argument("--holdout", type=int, default=12)
  ap.add_argument("--inner-steps", type=int, default=200)
  ap.add_argument("--workdir", default="/tmp/lopt-ablations",
                  help="the evaluations' records and the baselines' cache")
  ap.add_argument("--results", default=None,
                  help="directory of results.jsonl and the trained .lopt "
                  "files; a rerun resumes from it (default: --workdir)")
  ap.add_argument("--backfill-records", default=None, metavar="RECORDS",
                  help="add the per-task figures to results lines written "
                  "before they were recorded, from the evaluations' "
                  "records (WORKDIR/eval/records.jsonl), print the tables "
                  "and exit")
  ap.add_argument("--references", action=argparse.BooleanOptionalAction,
                  default=True, help="evaluate the untrained start and the "
                  "shipped optimizer too (once per --results)")
  args = ap.parse_args(argv)
  names = [v for v in (args.variants or ",".join(VARIANTS)).split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    print(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}",
          file=sys.stderr)
    return 2
  base = config_lib.load(args.config, args.set)
  hcfgs = {}
  for name in names:  # every variant's config is checked before hours of work
    try:
      hcfgs[name] = dataclasses.replace(base.hrnn, **VARIANTS[name])
    except ValueError as e:
      if args.variants is not None:
        print(f"variant {name} does not apply to config {args.config}: {e}",
              file=sys.stderr)
        return 2
      print(f"skipping variant {name}, which config {args.config} does not "
            f"allow: {e}", file=sys.stderr)
  names = [n for n in names if n in hcfgs]
  tasks_ = [f"heldout:{i}" for i in range(args.holdout)]
  suite = suites.load("heldout", [f"tasks={json.dumps(tasks_)}",
                                  f"seeds={args.seeds}",
                                  f"steps={args.inner_steps}"])
  os.makedirs(args.workdir, exist_ok=True)
  out_dir = args.results or args.workdir
  os.makedirs(out_dir, exist_ok=True)
  out = os.path.join(out_dir, "results.jsonl")
  settings = {"config": args.config, "set": list(args.set),
              "minutes": args.minutes, "seeds": args.seeds,
              "holdout": args.holdout, "inner_steps": args.inner_steps}
  done = load_results(out, settings)
  if args.backfill_records:
    done = backfill(out, done, args.backfill_records)
    print_tables(done, names, args.minutes)
    return 0
  finished = {(r["variant"], r["seed"]) for r in done}
  todo = [(n, s) for n in names for s in range(args.meta_seeds)
          if (n, s) not in finished]
  print(f"{len(finished)} run(s) already in {out}; {len(todo)} to go "
        f"(~{len(todo) * args.minutes:g} min of meta-training plus "
        "evaluations)", file=sys.stderr, flush=True)
  commit = os.environ.get("LOPT_COMMIT") or _commit()

  def record(name, seed, rows, meta_steps, train_min):
    s = records.score(rows)
    objective = np.mean([np.inf if r["learned_metric"] is None
                         else r["learned_metric"] for r in rows])
    res = {"variant": name, "seed": seed, "meta_steps": meta_steps,
           "train_min": train_min, "objective": float(objective),
           "geomean": s["geomean_ratio"], "wins": s["wins"],
           "geomean_tuned": s["geomean_tuned"],
           "wins_tuned": s["wins_tuned"],
           "geomean_default": s["geomean_default"],
           "wins_default": s["wins_default"], "tasks": s["tasks"],
           "diverged": s["diverged"], "commit": commit,
           "settings": settings, "tuned_by_task": tuned_by_task(rows)}
    lopt = f"{name}-seed{seed}.lopt"
    if (os.path.exists(os.path.join(args.workdir, lopt))
        and os.path.abspath(out_dir) != os.path.abspath(args.workdir)):
      shutil.copyfile(os.path.join(args.workdir, lopt),
                      os.path.join(out_dir, lopt))
    append_result(out, res)
    done.append(res)
    print(json.dumps(res, sort_keys=True), flush=True)

  # The references, evaluated once: the untrained start (Adam exactly, as
  # every variant but paper_start starts) and the shipped optimizer.
  if args.references and ("start", 0) not in finished:
    theta = hrnn.init_theta(jax.random.PRNGKey(0), base.hrnn)
    record("start", 0, evaluate(args.workdir, suite, base.hrnn, theta,
                                "start-seed0"), 0, 0.0)
  if args.references and (zoo.DEFAULT, 0) not in finished:
    src = watch.file_source(zoo.pretrained_path(zoo.DEFAULT))
    recs = watch.evaluate_once(args.workdir, suite, src, log=lambda m: None)
    record(zoo.DEFAULT, 0, records.summarize(recs, src.id), 0, 0.0)

  for name, seed in todo:
    cfg = dataclasses.replace(base, hrnn=hcfgs[name], seed=seed)
    tag = f"[{name} seed {seed}]"
    log = lambda m, tag=tag: print(f"{tag} {m}", file=sys.stderr, flush=True)
    log(f"meta-training for {args.minutes:g} min")
    t0 = time.time()
    trainer = local_train.train(cfg, time_budget_s=args.minutes * 60,
                                log=log)
    train_s = time.time() - t0
    log(f"{trainer.step} meta-steps in {train_s / 60:.1f} min; evaluating on "
        f"{len(tasks_)} held-out tasks")
    rows = evaluate(args.workdir, suite, cfg.hrnn, trainer.theta,
                    f"{name}-seed{seed}")
    log(f"evaluated in {(time.time() - t0 - train_s) / 60:.1f} min")
    record(name, seed, rows, trainer.step, train_s / 60)

  print_tables(done, names, args.minutes)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
