"""The paper's comparisons: a learned optimizer against tuned baselines.

Usage:
  python benchmarks/vs_baselines.py [--lopt FILE] [--workdir DIR]
      [--parts heldout,small1k,retina] [--seeds N] [--plots DIR]
      [--out FILE] [--smoke]

Trains every task of each part with the learned optimizer (default: the
shipped ``metatrain.pretrained()``) and with Adam, RMSProp and SGD with
momentum over each suite's learning-rate grid, through the evaluators (same
problem instances, minibatches and divergence rule for all; records and the
baselines' cache in ``--workdir``, so a rerun only does what is missing).

Parts: ``heldout`` (the 12 held-out ensemble tasks, never trained on, 200
steps), ``small1k`` / ``small10k`` (Fashion-MNIST and digits ConvNets and
MLPs for 1,000 / 10,000 steps), ``retina`` (the retina CNN and its LN
baseline), ``imagenet`` (short ResNet V2 / Inception V3 runs; needs a
prepared imagenet2012 and, in practice, an accelerator).

For each task it reports the learned optimizer's mean final loss over seeds
and mean loss over training, at its default rate (``learned``) and at its
rate tuned per task over the suite's ``learned_lrs`` (``learned*``), against:
each baseline at its best learning rate for that task (``adam*``,
``rmsprop*``, ``sgdm*``), the best of the three, each baseline at one global
best learning rate for the part, and Adam at its default 1e-3. Each part
opens with the three comparisons: default vs default (learned vs Adam
1e-3), tuned vs tuned (learned* vs the best tuned baseline) and untuned vs
tuned (learned vs the best tuned baseline); then win rates and divergences.
A diverged run's loss is inf: it loses every comparison.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from evaluators import records, suites, watch  # noqa: E402
from metatrain.optimizer import zoo

PARTS = {
    "heldout": ("heldout", []),
    "small1k": ("small", ["steps=1000", "eval_every=250"]),
    "small10k": ("small", ["steps=10000", "eval_every=2500"]),
    "retina": ("retina", []),
    "imagenet": ("imagenet", ["steps=500", "eval_every=250"]),
}
TIE = records.TIE  # relative: closer than this is a tie, not a win
SMOKE = ["steps=20", "eval_every=0", "seeds=1", 'adam_lrs=[0.001,0.01]',
         'rmsprop_lrs=[0.001]', 'sgdm_lrs=[0.1]', 'learned_lrs=[0.001,0.01]']


def _loss(r) -> float:
  return records.loss_of(r)


def _mean_train_loss(r) -> float:
  """Mean training loss over the run (inf if it diverged)."""
  if r.get("diverged") or not r.get("curve"):
    return math.inf
  vals = [v for _, v in r["curve"] if v is not None]
  return float(np.mean(vals)) if vals else math.inf


def _mean(vals) -> float:
  vals = list(vals)
  return float(np.mean(vals)) if vals else math.nan


def analyse(recs, suite, source_id) -> dict:
  """Per-task rows and the part's headline figures."""
  recs = [r for r in recs if r["source"] == source_id and
          r["steps"] == suite.steps and r["task"] in suite.tasks and
          r["suite"] == suite.name]
  by_task = collections.defaultdict(list)
  for r in recs:
    by_task[r["task"]].append(r)
  floors = {t: records.solved_floor(rs) for t, rs in by_task.items()}
  grid = collections.defaultdict(dict)  # (task) -> {(opt, lr): [recs]}
  for task, rs in by_task.items():
    for r in rs:
      lr = r["hparams"].get("learning_rate")
      grid[task].setdefault((r["optimizer"], lr), []).append(r)
  # One global learning rate per baseline: the lowest geometric mean over
  # tasks of (loss at that lr / the baseline's best loss on the task).
  global_lr = {}
  for b in suite.baselines:
    best = None
    for lr in suite.lrs(b):
      ratios = []
      for task in suite.tasks:
        cands = [_mean(_loss(r) for r in rs) for (o, _), rs in
                 grid[task].items() if o == b]
        here = grid[task].get((b, lr))
        if not cands or here is None:
          ratios = None
          break
        ref = min(cands)
        val = _mean(_loss(r) for r in here)
        ratios.append(records.loss_ratio(val, ref, floors[task]))
      if ratios is None:
        continue
      geo = records.geomean(ratios)
      if best is None or geo < best[0]:
        best = (geo, lr)
    if best is not None:
      global_lr[b] = best[1]
  rows = []
  for task in suite.tasks:
    g = grid.get(task, {})
    learned = g.get(("learned", None), [])
    if not learned:
      continue
    row = {"task": task, "name": learned[0].get("task_key", task),
           "learned": _mean(_loss(r) for r in learned),
           "learned_train": _mean(_mean_train_loss(r) for r in learned),
           "learned_diverged": sum(bool(r.get("diverged")) for r in learned),
           "seeds": len(learned), "metric": learned[0].get("metric"),
           "floor": floors[task],
           "higher_is_better": learned[0].get("higher_is_better"),
           "refs": {}, "unbracketed": []}
    for b in suite.baselines:
      cands = {lr: rs for (o, lr), rs in g.items() if o == b}
      if not cands:
        continue
      lr = min(cands, key=lambda x: _mean(_loss(r) for r in cands[x]))
      row["refs"][f"{b}*"] = (_mean(_loss(r) for r in cands[lr]), lr,
                              _mean(_mean_train_loss(r) for r in cands[lr]))
      if records.at_grid_end(lr, cands):
        row["unbracketed"].append(b)
      if b in global_lr and global_lr[b] in cands:
        rs = cands[global_lr[b]]
        row["refs"][f"{b} global"] = (_mean(_loss(r) for r in rs),
                                      global_lr[b],
                                      _mean(_mean_train_loss(r) for r in rs))
      if b == "adam" and 1e-3 in cands:
        rs = cands[1e-3]
        row["refs"]["adam 1e-3"] = (_mean(_loss(r) for r in rs), 1e-3,
                                    _mean(_mean_train_loss(r) for r in rs))
    tuned = {k: v for k, v in row["refs"].items() if k.endswith("*")}
    if tuned:
      k = min(tuned, key=lambda x: tuned[x][0])
      row["refs"]["best*"] = (tuned[k][0], f"{k[:-1]} {tuned[k][1]:g}",
                              tuned[k][2])
    row["metric_learned"] = _mean_metric(learned, row["metric"])
    # The learned optimizer's rate swept over the suite's grid, chosen per
    # task as each baseline's is (suite.learned_lrs).
    swept = {lr: rs for (o, lr), rs in g.items()
             if o == "learned" and lr is not None}
    if swept:
      lr = min(swept, key=lambda x: _mean(_loss(r) for r in swept[x]))
      row["learned*"] = (_mean(_loss(r) for r in swept[lr]), lr,
                         _mean(_mean_train_loss(r) for r in swept[lr]))
      if records.at_grid_end(lr, swept):
        row["unbracketed"].append("learned")
      row["metric_learned*"] = _mean_metric(swept[lr], row["metric"])
    rows.append(row)
  refs = sorted({k for r in rows for k in r["refs"]})
  # A win is a lower loss by more than float noise (the untrained optimizer
  # *is* Adam at 1e-3: equal runs must not count as wins), and two losses
  # below the task's solved floor (records.SOLVED) tie.
  def win_count(key):
    return {k: sum(records.loss_ratio(r[key][0] if key != "learned"
                                      else r[key], r["refs"][k][0],
                                      r["floor"]) < 1 - TIE
                   for r in rows if k in r["refs"] and key in r)
            for k in refs}

  def geo(key, ref):
    ratios = [records.loss_ratio(r[key][0] if key != "learned" else r[key],
                                 r["refs"][ref][0], r["floor"])
              for r in rows if ref in r["refs"] and key in r]
    return records.geomean(ratios) if len(ratios) == len(rows) else math.nan

  tuned_rows = sum("learned*" in r for r in rows)
  return {"rows": rows, "refs": refs, "wins": win_count("learned"),
          "wins_tuned": win_count("learned*"), "tuned_tasks": tuned_rows,
          "global_lr": global_lr, "tasks": len(rows),
          "diverged": sum(r["learned_diverged"] > 0 for r in rows),
          "geomean_vs_best": geo("learned", "best*"),
          "geomean_tuned_vs_best": geo("learned*", "best*"),
          "geomean_vs_adam_default": geo("learned", "adam 1e-3"),
          "unbracketed": dict(sorted(collections.Counter(
              n for r in rows for n in r["unbracketed"]).items())),
          "records": recs}


def _mean_metric(rs, name):
  if not name:
    return None
  vals = [(r.get("metrics") or {}).get(name) for r in rs]
  return None if not vals or None in vals else float(np.mean(vals))


def _f(x) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "n/a"
  if isinstance(x, float) and math.isinf(x):
    return "diverged"
  return f"{x:.4g}" if isinstance(x, float) else str(x)


def headline(a: dict) -> list[str]:
  """The part's three comparisons, one line each."""
  n = a["tasks"]
  w, wt = a["wins"], a["wins_tuned"]
  out = []
  if "adam 1e-3" in a["refs"]:
    out.append(f"- **Default vs default** (learned at its default rate vs "
               f"Adam 1e-3): wins {w['adam 1e-3']}/{n}, geometric-mean "
               f"ratio {_f(a['geomean_vs_adam_default'])}.")
  if a["tuned_tasks"]:
    out.append(f"- **Tuned vs tuned** (learned rate swept over the suite's "
               f"grid vs each baseline tuned per task): wins "
               f"{wt.get('best*', 0)}/{n} vs the best tuned baseline ("
               f"{wt.get('adam*', 0)}/{n} vs Adam*), geometric-mean ratio "
               f"{_f(a['geomean_tuned_vs_best'])}.")
  out.append(f"- **Untuned vs tuned** (learned at its default rate vs the "
             f"best tuned baseline): wins {w.get('best*', 0)}/{n}, "
             f"geometric-mean ratio {_f(a['geomean_vs_best'])}.")
  if a.get("unbracketed"):
    out.append("- **Not bracketed** (the tuned rate is an end of the grid, "
               "so the optimum may lie outside it and the tuned comparisons "
               "there are not fully tuned; widen the grid with --set): "
               + ", ".join(f"{k} on {v}/{n}" for k, v in
                           a["unbracketed"].items()) + " tasks.")
  return out


def markdown(part: str, suite, a: dict) -> list[str]:
  cols = ["adam 1e-3", "adam*", "rmsprop*", "sgdm*", "best*"]
  out = [f"### {part}: {suite.name} suite, {suite.steps} steps, "
         f"{suite.seeds} seed(s)", "", *headline(a), "",
         "| task | learned | learned* | " + " | ".join(cols) + " |",
         "|---|---:|---:|" + "---:|" * len(cols)]
  for r in a["rows"]:
    cells = []
    for c in cols:
      v = r["refs"].get(c)
      if v is None:
        cells.append("n/a")
      elif c == "adam 1e-3":
        cells.append(_f(v[0]))
      else:
        cells.append(f"{_f(v[0])} ({v[1]:g})" if not isinstance(v[1], str)
                     else f"{_f(v[0])} ({v[1]})")
    div = f" ({r['learned_diverged']} div.)" if r["learned_diverged"] else ""
    lt = (f"{_f(r['learned*'][0])} ({r['learned*'][1]:g})"
          if "learned*" in r else "n/a")
    out.append(f"| {r['task']} | {_f(r['learned'])}{div} | {lt} | "
               + " | ".join(cells) + " |")
  n = a["tasks"]
  out += ["", "Mean loss over training (learned vs Adam*): " + ", ".join(
      f"{r['task']} {_f(r['learned_train'])} vs "
      f"{_f(r['refs'].get('adam*', (None, None, None))[2])}"
      for r in a["rows"]), ""]
  out.append("Learned wins (mean final loss lower by > 0.1%; losses below "
             f"{records.SOLVED:g} of the initial loss count as solved and "
             "tie) on: " + ", ".join(
      f"{a['wins'][k]}/{n} vs {k}" for k in a["refs"]) +
             f". Tasks where the learned optimizer diverged on a seed: "
             f"{a['diverged']}/{n}. Geometric-mean final-loss ratio, learned "
             f"over best tuned baseline: {_f(a['geomean_vs_best'])}. Global "
             "learning rates: " + ", ".join(f"{b} {lr:g}" for b, lr in
                                            a["global_lr"].items()) + ".")
  metric_rows = [r for r in a["rows"] if r["metric_learned"] is not None
                 and r["metric"] not in (None, "meta_objective")]
  if metric_rows:
    out.append("")
    out.append("Held-out metric, learned (default rate / tuned rate): "
               + ", ".join(
                   f"{r['task']} {r['metric']} {_f(r['metric_learned'])} / "
                   f"{_f(r.get('metric_learned*'))}" for r in metric_rows)
               + ".")
  return out + [""]


def plot(part: str, a: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = a["rows"]
  if not rows:
    return
  ncol = min(4, len(rows))
  nrow = math.ceil(len(rows) / ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow),
                           squeeze=False)
  for ax, r in zip(axes.flat, rows):
    def curves(opt, lr):
      return [x for x in a["records"] if x["task"] == r["task"] and
              x["optimizer"] == opt and
              x["hparams"].get("learning_rate") == lr]
    picks = [("learned", None, "learned", "C3")]
    if "learned*" in r:
      picks.append(("learned", r["learned*"][1],
                    f"learned* {r['learned*'][1]:g}", "C4"))
    for k, color in (("adam*", "C0"), ("rmsprop*", "C1"), ("sgdm*", "C2")):
      if k in r["refs"]:
        picks.append((k[:-1], r["refs"][k][1], f"{k} {r['refs'][k][1]:g}",
                      color))
    for opt, lr, label, color in picks:
      for i, x in enumerate(curves(opt, lr)):
        pts = [(s, v) for s, v in x.get("curve") or [] if v is not None]
        if pts:
          s, v = zip(*pts)
          ax.plot(s, v, color=color, lw=1, label=label if i == 0 else None)
    ax.set_yscale("log")
    ax.set_title(r["task"], fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(rows):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=6)
  fig.suptitle(f"{part}: training loss", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--lopt", default=None,
                  help="optimizer file (default: the shipped default, "
                  "metatrain.pretrained())")
  ap.add_argument("--workdir", default="/tmp/lopt-vs-baselines")
  ap.add_argument("--parts", default="heldout,small1k,retina")
  ap.add_argument("--seeds", type=int, default=0,
                  help="seeds per run (0: each suite's default)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="suite override applied to every part")
  ap.add_argument("--plots", default="", help="dir for PNG curve plots")
  ap.add_argument("--out", default="", help="also write the markdown here")
  ap.add_argument("--smoke", action="store_true",
                  help="tiny runs (tests): 20 steps, 1 seed, 1-2 lrs")
  args = ap.parse_args(argv)
  path = args.lopt or zoo.pretrained_path()
  source = watch.file_source(path)
  lines = [f"Optimizer: `{os.path.basename(path)}` ({source.id})", ""]
  for part in [p for p in args.parts.split(",") if p]:
    if part not in PARTS:
      print(f"unknown part {part!r}; known: {', '.join(PARTS)}",
            file=sys.stderr)
      return 2
    name, overrides = PARTS[part]
    overrides = list(overrides) + (SMOKE if args.smoke else [])
    if args.seeds:
      overrides.append(f"seeds={args.seeds}")
    suite = suites.load(name, overrides + list(args.set))
    recs = watch.evaluate_once(args.workdir, suite, source)
    a = analyse(recs, suite, source.id)
    part_lines = markdown(part, suite, a)
    print("\n".join(part_lines), flush=True)
    lines += part_lines
    if args.plots:
      os.makedirs(args.plots, exist_ok=True)
      plot(part, a, os.path.join(args.plots, f"vs_baselines_{part}.png"))
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
