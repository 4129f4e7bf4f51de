"""``lopt monitor``: the evaluator records as a terminal table and an HTML
report.

The table shows, per task at the newest fully evaluated checkpoint, the
learned optimizer's final loss at its default rate and at its tuned rate,
Adam's at 1e-3, each tuned baseline's (with its learning rate), the ratios
of the three comparisons (default against default, tuned against tuned,
untuned against tuned; ``records.summarize``) and the untuned ratio's trend
over earlier checkpoints. The HTML report is one self-contained file
(plots embedded as PNG): loss curves on a log scale, learned against the
best-tuned baselines; the meta-training curves from TensorBoard; and the
evaluation across checkpoints.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from typing import Any

import numpy as np

from evaluators import records, tb_events
from metatrain import files
from metatrain.distributed.workdir import Workdir


def _fmt(v: float | None, nd: int = 4) -> str:
  if v is None:
    return "-"
  if math.isinf(v):
    return "diverged"
  if math.isnan(v):
    return "-"
  return f"{v:.{nd}g}"


def load(workdir: str) -> list[dict[str, Any]]:
  return records.read(Workdir(workdir).records)


def evaluated_sources(recs: list[dict[str, Any]]) -> list[str]:
  """Sources with at least one complete task row, oldest first."""
  out = []
  for src in records.sources(recs):
    rows = records.summarize(recs, src)
    if any(r["winner"] != "incomplete" for r in rows):
      out.append(src)
  return out


def _lr_cell(loss: float, lr: Any, width: int = 18) -> str:
  return f"{_fmt(loss) + ' (' + format(lr, 'g') + ')':>{width}}"


def summary_lines(s: dict[str, Any]) -> list[str]:
  """The comparisons' headline lines from a ``records.score``."""
  n = s["tasks"]

  def one(label, wins, geo, what):
    if geo is None:
      return f"{label}: not evaluated ({what})"
    return (f"{label}: learned wins {wins}/{n} tasks, geometric-mean ratio "
            f"{_fmt(geo, 3)}")

  return [
      one("default vs default (learned at its default rate vs Adam 1e-3)",
          s["wins_default"], s["geomean_default"], "no Adam 1e-3 runs"),
      one("tuned vs tuned (learned rate swept vs the best tuned baseline)",
          s["wins_tuned"], s["geomean_tuned"],
          "no learned-rate sweep: suite learned_lrs=[]"),
      one("tuned vs tuned Adam (learned rate swept vs Adam tuned per task)",
          s["wins_tuned_adam"], s["geomean_tuned_adam"],
          "no learned-rate sweep or no Adam runs"),
      one("untuned vs tuned (learned at its default rate vs the best tuned "
          "baseline)", s["wins"], s["geomean_ratio"], "incomplete")
      + f"; {s['diverged']} diverged"
      + ("" if s["complete"] else " (evaluation incomplete)"),
      *filter(None, [records.unbracketed_note(s)])]


def table(recs: list[dict[str, Any]], trend: int = 5) -> list[str]:
  """The monitor's terminal table for the newest evaluated source."""
  srcs = evaluated_sources(recs)
  if not srcs:
    return ["no evaluated checkpoint yet: run `lopt evaluate --workdir W` "
            "(or `lopt train --evaluators 1`)"]
  src = srcs[-1]
  rows = records.summarize(recs, src)
  names = sorted({n for r in rows for n in r["baselines"]})
  older = srcs[-trend:-1]
  past = {s: {r["task"]: r["ratio"] for r in records.summarize(recs, s)}
          for s in older}
  head = (f"{'task':<24} {'learned':>10} {'learned* (lr)':>18} "
          f"{'adam 1e-3':>10} "
          + " ".join(f"{n + '* (lr)':>18}" for n in names) +
          f" {'untuned':>8} {'tuned':>8} {'default':>8}  untuned trend ("
          f"{', '.join(older + [src])})")
  lines = [f"newest evaluated: {src}  (final loss, lower is better; x* = "
           "tuned per task; ratios: untuned = learned / best tuned "
           "baseline, tuned = learned* / best tuned baseline, default = "
           "learned / Adam 1e-3; below 1 the learned optimizer wins; "
           "diverged loses)", head]
  for r in rows:
    cells = []
    for n in names:
      v = r["baselines"].get(n)
      cells.append(_lr_cell(*v) if v else f"{'-':>18}")
    tuned = (_lr_cell(r["learned_tuned"], r["learned_lr"])
             if r["learned_lr"] is not None else f"{'-':>18}")
    hist = [past[s].get(r["task"]) for s in older] + [r["ratio"]]
    lines.append(f"{r['task'][:24]:<24} {_fmt(r['learned']):>10} {tuned} "
                 f"{_fmt(r['adam_default']):>10} "
                 + " ".join(cells) + f" {_fmt(r['ratio'], 3):>8} "
                 f"{_fmt(r['ratio_tuned'], 3):>8} "
                 f"{_fmt(r['ratio_default'], 3):>8}  "
                 + " ".join(_fmt(h, 3) for h in hist))
  return lines + summary_lines(records.score(rows))


# ---------------------------------------------------------------------------
# HTML.


def _png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.close(fig)
  return base64.b64encode(buf.getvalue()).decode()


def _curve(r: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  pts = r.get("track_curve") or r.get("curve") or []
  pts = [(s, v) for s, v in pts if v is not None and v > 0]
  if not pts:
    return np.zeros(0), np.zeros(0)
  s, v = (np.array(x, float) for x in zip(*pts))
  return s, v


def _smooth(v: np.ndarray, n: int = 20) -> np.ndarray:
  if len(v) < 2 * n:
    return v
  k = np.ones(n) / n
  return np.concatenate([v[:n - 1], np.convolve(v, k, mode="valid")])


def _loss_curves(recs, src, task):
  """Learned (each seed; at its default and its tuned rate) vs each
  baseline at its tuned learning rate."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = {r["task"]: r for r in records.summarize(recs, src)}
  row = rows[task]
  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  mine = [r for r in recs if r["source"] == src and r["task"] == task]
  colors = {"learned": "C3", "adam": "C0", "rmsprop": "C1", "sgdm": "C2"}
  styles = ("-", "--", ":", "-.")  # one line style per seed
  colors["learned*"] = "C4"
  for r in mine:
    name, lr = r["optimizer"], r["hparams"].get("learning_rate")
    if name == "learned" and lr is not None:
      if lr != row["learned_lr"]:
        continue
      name = "learned*"  # at its tuned rate
    elif name != "learned" and row["baselines"].get(
        name, (None, None))[1] != lr:
      continue
    s, v = _curve(r)
    if not len(s):
      continue
    seed = r.get("seed", 0)
    label = name if lr is None else f"{name} lr {lr:g}"
    label += f" seed {seed}"
    if r.get("diverged"):
      label += " (diverged)"
    ax.plot(s, _smooth(v), color=colors.get(name, "k"), lw=1.2, alpha=0.85,
            ls=styles[seed % len(styles)], label=label)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss" if mine and mine[0].get("track_curve") else
                "training loss (smoothed)")
  ax.set_title(task)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  return _png(fig)


def _across_checkpoints(recs, srcs):
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  steps = [int(s.split(":")[1]) for s in srcs if s.startswith("step:")]
  if not steps:
    return None
  fig, axes = plt.subplots(1, 3, figsize=(16, 3.4))
  per_task: dict[str, list] = {}
  metric_task: dict[str, list] = {}
  geo: dict[str, list] = {}
  for step in steps:
    rows = records.summarize(recs, f"step:{step}")
    s = records.score(rows)
    for name, key in (("default", "geomean_default"),
                      ("tuned", "geomean_tuned"),
                      ("untuned", "geomean_ratio")):
      if s[key] is not None and math.isfinite(s[key]) and s[key] > 0:
        geo.setdefault(name, []).append((step, s[key]))
    for r in rows:
      if r["winner"] == "incomplete":
        continue
      per_task.setdefault(r["task"], []).append((step, r["ratio"]))
      if r["learned_metric"] is not None:
        metric_task.setdefault(f"{r['task']} {r['metric']}", []).append(
            (step, r["learned_metric"]))
  for task, pts in sorted(per_task.items()):
    finite = [(s, v) for s, v in pts if math.isfinite(v) and v > 0]
    if finite:
      axes[0].plot(*zip(*finite), marker="o", ms=3, label=task)
  axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
  axes[0].set_yscale("log")
  axes[0].set_title("final loss ratio learned / best tuned baseline")
  axes[0].set_xlabel("checkpoint step")
  for name, pts in sorted(metric_task.items()):
    axes[1].plot(*zip(*pts), marker="o", ms=3, label=name)
  axes[1].set_title("learned optimizer: held-out metric")
  axes[1].set_xlabel("checkpoint step")
  for name, pts in geo.items():
    axes[2].plot(*zip(*pts), marker="o", ms=3, label=name)
  axes[2].axhline(1.0, color="k", lw=0.8, ls="--")
  axes[2].set_yscale("log")
  axes[2].set_title("geometric-mean ratio per comparison")
  axes[2].set_xlabel("checkpoint step")
  for ax in axes:
    ax.grid(alpha=0.3)
    # From step 0: one checkpoint is a point on the run's axis, not the
    # middle of an axis from 28.5 to 31.5.
    ax.set_xlim(0, max(steps) * 1.05 + 1)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  return _png(fig)


def resume_steps(workdir: str) -> list[int]:
  """Steps at which a later ``lopt train`` session resumed (run_info.json)."""
  try:
    with open(Workdir(workdir).run_info) as f:
      sessions = json.load(f).get("sessions", [])
  except (OSError, ValueError, AttributeError):
    return []
  return sorted({int(x["start_step"]) for x in sessions[1:]
                 if isinstance(x, dict) and
                 isinstance(x.get("start_step"), int) and x["start_step"] > 0})


def _training(workdir):
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  scalars = tb_events.read_scalars(Workdir(workdir).tb)
  tags = [t for t in ("train/meta_loss", "train/grad_norm",
                      "train/task_steps_per_s") if scalars.get(t)]
  if not tags:
    return None
  resumes = resume_steps(workdir)
  fig, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3.2))
  axes = np.atleast_1d(axes)
  for ax, tag in zip(axes, tags):
    s, v = zip(*scalars[tag])
    ax.plot(s, v, lw=0.8, alpha=0.5)
    if len(v) > 20:
      ax.plot(s, _smooth(np.array(v)), lw=1.5)
    for i, step in enumerate(resumes):  # new task states: meta_loss jumps
      ax.axvline(step, color="0.5", lw=0.8, ls=":",
                 label="resumed" if i == 0 else None)
    if resumes:
      ax.legend(fontsize=7)
    ax.set_title(tag)
    ax.set_xlabel("meta-step")
    ax.grid(alpha=0.3)
  return _png(fig)


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#eee}td:first-child{
text-align:left}.win{color:#070;font-weight:bold}.lose{color:#a00}
img{margin:4px;border:1px solid #ddd}"""

# Marks the page once every plot decoded, for browsers and tests.
_CHECK = """<script>window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok++; });
  document.body.setAttribute('data-plots', imgs.length);
  document.body.setAttribute('data-plots-ok', ok);
});</script>"""


def html_report(workdir: str) -> str:
  """The self-contained HTML report of ``workdir``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  recs = load(workdir)
  srcs = evaluated_sources(recs)
  esc = html.escape
  now = datetime.datetime.now().isoformat(timespec="seconds")
  parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lopt "
           f"report: {esc(workdir)}</title><style>{_STYLE}</style></head>"
           f"<body><h1>lopt report</h1><p>workdir <code>{esc(workdir)}</code>"
           f", {len(recs)} records, generated {now}. Live curves: "
           f"<code>tensorboard --logdir {esc(workdir)}/tb</code>.</p>"]
  if srcs:
    src = srcs[-1]
    rows = records.summarize(recs, src)
    parts.append(
        f"<h2>Newest evaluated: {esc(src)}</h2><p>Final losses (lower is "
        "better). Three comparisons: <b>default</b> (the learned optimizer "
        "at its default rate against Adam at 1e-3), <b>tuned</b> (its rate "
        "swept like the baselines', against the best tuned baseline) and "
        "<b>untuned</b> (its default rate against the best tuned "
        "baseline); a ratio below 0.999 is a win (closer to 1 is a tie)."
        "</p><table><tr><th>task</th>"
        "<th>learned</th><th>learned tuned (lr)</th><th>adam 1e-3</th>"
        "<th>best baseline (lr)</th><th>baseline loss</th><th>default"
        "</th><th>tuned</th><th>untuned</th><th>metric</th><th>learned "
        "metric</th><th>learned tuned metric</th><th>baseline metric</th>"
        "</tr>")

    def cell(ratio):
      cls = "win" if ratio < 1 - records.TIE else "lose"
      return f"<td class='{cls}'>{_fmt(ratio, 3)}</td>"

    for r in rows:
      lr = r["baselines"][r["best"]][1] if r["best"] else None
      lt = (f"{_fmt(r['learned_tuned'])} ({_fmt(r['learned_lr'], 2)})"
            if r["learned_lr"] is not None else "-")
      parts.append(
          f"<tr><td>{esc(r['task'])}</td><td>{_fmt(r['learned'])}</td>"
          f"<td>{lt}</td><td>{_fmt(r['adam_default'])}</td><td>"
          f"{esc(str(r['best']))} ({_fmt(lr, 2)})</td><td>"
          f"{_fmt(r['best_loss'])}</td>{cell(r['ratio_default'])}"
          f"{cell(r['ratio_tuned'])}{cell(r['ratio'])}<td>"
          f"{esc(r['metric'])}</td><td>{_fmt(r['learned_metric'])}</td><td>"
          f"{_fmt(r['learned_tuned_metric'])}</td><td>"
          f"{_fmt(r['best_metric'])}</td></tr>")
    parts.append("</table><ul>" + "".join(
        f"<li>{esc(x)}</li>" for x in summary_lines(records.score(rows)))
                 + "</ul><h2>Loss curves (log scale)</h2>")
    for r in records.summarize(recs, src):
      parts.append(f"<img class='plot' alt='{esc(r['task'])}' src='data:image"
                   f"/png;base64,{_loss_curves(recs, src, r['task'])}'>")
    across = _across_checkpoints(recs, srcs)
    if across:
      parts.append("<h2>Evaluation across checkpoints</h2><img class='plot' "
                   f"alt='across checkpoints' src='data:image/png;base64,"
                   f"{across}'>")
  else:
    parts.append("<p>No evaluated checkpoint yet: run <code>lopt evaluate "
                 "--workdir W</code>.</p>")
  train = _training(workdir)
  if train:
    parts.append("<h2>Meta-training</h2><img class='plot' alt='meta-training'"
                 f" src='data:image/png;base64,{train}'>")
  parts.append(f"{_CHECK}</body></html>")
  return "".join(parts)


def write_html(workdir: str, path: str) -> None:
  """Writes the report atomically."""
  files.write_atomic(path, html_report(workdir))
