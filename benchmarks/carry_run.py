"""Carry a meta-training run across machines that are not kept.

A session's machine may be gone the next day, and a run's workdir with it.
This copies what `lopt train` needs to resume a run, and what its
provenance needs, into a small directory that can be committed (a
checkpoint is ~0.3 MB):

- ``config.json``, ``run_info.json`` (every session's command and
  hardware), ``counters.json``, ``best_checkpoint.json`` if any, the
  evaluators' ``eval/records.jsonl`` if any, and ``lopt.log``;
- the newest complete checkpoint, plus the kept-best one and any steps
  named with ``--steps``.

To resume: copy the directory to a workdir and run the same command:

    python benchmarks/carry_run.py --workdir /work/runs/v2r \\
        --out benchmarks/runs/v2r
    git add benchmarks/runs/v2r && git commit -m "run v2r at step N"
    # on another machine:
    cp -r benchmarks/runs/v2r /tmp/v2r
    lopt train --workdir /tmp/v2r ...   # the run's command; it resumes

A run that is still training can be carried: only complete checkpoints are
copied (a step directory with Orbax's commit marker).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from metatrain.distributed.checkpoint_dirs import is_complete_step_dir  # noqa: E402
from metatrain.distributed.workdir import Workdir  # noqa: E402

_FILES = ("config", "run_info", "counters", "best_checkpoint", "records",
          "log")


def complete_steps(workdir: str) -> list[int]:
  """The steps of ``workdir``'s complete checkpoints, ascending."""
  root = Workdir(workdir).checkpoints
  if not os.path.isdir(root):
    return []
  steps = []
  for name in os.listdir(root):
    if name.isdigit() and is_complete_step_dir(pathlib.Path(root, name)):
      steps.append(int(name))
  return sorted(steps)


def carry(workdir: str, out: str, extra_steps: tuple[int, ...] = ()
          ) -> list[int]:
  """Copies ``workdir``'s resumable state into ``out``; the steps copied."""
  src, dst = Workdir(workdir), Workdir(out)
  if not os.path.exists(src.config):
    raise SystemExit(f"carry_run: {workdir} is not a lopt run (no "
                     "config.json); give the --workdir of `lopt train`")
  steps = complete_steps(workdir)
  if not steps:
    raise SystemExit(f"carry_run: {workdir} has no complete checkpoint yet; "
                     "wait for the first save (learner.save_every)")
  keep = {steps[-1], *extra_steps}
  if os.path.exists(src.best_checkpoint):
    with open(src.best_checkpoint) as f:
      keep.add(int(json.load(f)["step"]))
  missing = sorted(keep - set(steps))
  if missing:
    raise SystemExit(f"carry_run: no complete checkpoint at step(s) "
                     f"{missing} in {workdir} (complete: {steps})")
  # Replace the whole copy: a carried directory holds one state of the run.
  tmp = out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp_dir = Workdir(tmp)
  os.makedirs(tmp_dir.checkpoints)
  for name in _FILES:
    path = getattr(src, name)
    if os.path.exists(path):
      os.makedirs(os.path.dirname(getattr(tmp_dir, name)), exist_ok=True)
      shutil.copy2(path, getattr(tmp_dir, name))
  for step in sorted(keep):
    shutil.copytree(os.path.join(src.checkpoints, str(step)),
                    os.path.join(tmp_dir.checkpoints, str(step)))
  shutil.rmtree(dst.path, ignore_errors=True)
  os.replace(tmp, dst.path)
  return sorted(keep)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="the run's workdir")
  p.add_argument("--out", required=True,
                 help="where to put the copy (replaced), e.g. "
                 "benchmarks/runs/NAME")
  p.add_argument("--steps", default="",
                 help="comma-separated extra checkpoint steps to carry")
  args = p.parse_args(argv)
  extra = tuple(int(s) for s in args.steps.split(",") if s.strip())
  steps = carry(args.workdir, args.out, extra)
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(args.out) for f in fs)
  print(f"carry_run: {args.out}: checkpoints {steps}, {size / 1e6:.1f} MB; "
        f"resume with `cp -r {args.out} WORKDIR` and the run's command")
  return 0


if __name__ == "__main__":
  sys.exit(main())
