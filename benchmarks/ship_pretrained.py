"""Ships a meta-training run's best checkpoint as metatrain/pretrained/NAME.

Usage:
  python benchmarks/ship_pretrained.py --workdir W [--name hrnn-v1]
      [--step N] [--note TEXT]

The checkpoint is chosen on the evaluators' records of ``W`` (run them on
the ``validation`` suite: ``lopt train --evaluators 1 --set
evaluator.suite=validation``), never on the held-out test tasks, exactly as
``lopt export --best`` does; ``--step`` ships a given step instead. The
file's metadata is ``lopt export``'s (training config, command, hardware,
meta-training time, the validation evaluation) plus the name, how it was
selected, and ``--note``.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from infra import export_cmd  # noqa: E402
from metatrain import export  # noqa: E402


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--name", default="hrnn-v1")
  ap.add_argument("--step", type=int, default=None)
  ap.add_argument("--note", default="")
  args = ap.parse_args(argv)
  out = os.path.join(ROOT, "metatrain", "pretrained", f"{args.name}.lopt")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = out + ".tmp"
  meta = export_cmd.export_checkpoint(args.workdir, tmp, step=args.step,
                                      best=args.step is None)
  config, theta, _ = export.read_optimizer(tmp)
  ev = meta.get("evaluation") or {}
  meta.update(name=args.name, note=args.note, selection={
      "split": "validation",
      "suite": ev.get("suite"),
      "rule": ("lowest geometric-mean final-loss ratio to the best tuned "
               "baseline over the suite's tasks" if args.step is None
               else f"--step {args.step}"),
      "step": meta["source"]["step"]})
  export.save_optimizer(tmp, config, theta, meta)
  os.replace(tmp, out)
  print(f"shipped {out}: step {meta['source']['step']}, validation "
        f"geomean ratio {ev.get('geomean_ratio_to_best_baseline')}, "
        f"won {ev.get('tasks_won')}/{ev.get('tasks')}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
