"""``lopt evaluate``: argument checks, signals, the final table.

Exit codes: 0 done; 1 some runs raised (they are not recorded, and a rerun
retries them); 2 bad input (unknown suite or key, missing workdir, dataset
or checkpoint, unreadable ``.lopt``, and with ``--once`` a newest
checkpoint that cannot be read), with a one-line error naming the fix;
130 interrupted (a rerun finishes what is missing).
"""

from __future__ import annotations

import os
import signal
import sys

from evaluators import records, suites, watch
from infra.parser import UsageError


def _shard(text: str) -> tuple[int, int]:
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
  if not 0 <= i < n:
    raise ValueError(f"--shard {text!r}: need 0 <= I < N")
  return i, n


def main(args) -> int:
  try:
    suite = suites.load(args.suite, args.set or [])
    shard = _shard(args.shard)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if args.poll <= 0:
    raise UsageError("--poll must be > 0")
  workdir = args.workdir
  src = None
  if args.lopt:
    try:  # before anything is created in workdir
      src = watch.file_source(args.lopt)
    except ValueError as e:
      raise UsageError(str(e)) from None
    os.makedirs(workdir, exist_ok=True)
  elif not os.path.isdir(workdir):
    raise UsageError(f"workdir {workdir} does not exist: start `lopt train "
                  f"--workdir {workdir}` first, or pass --lopt FILE")
  stop = {"flag": False}

  def handler(signum, _frame):
    print(f"lopt evaluate: {signal.Signals(signum).name}: stopping after "
          "the current run; rerun to finish", file=sys.stderr, flush=True)
    stop["flag"] = True

  old = {s: signal.signal(s, handler) for s in (signal.SIGINT,
                                                signal.SIGTERM)}
  try:
    try:
      ev = watch.Evaluator(workdir, suite, shard=shard,
                           should_stop=lambda: stop["flag"])
    except (FileNotFoundError, ValueError) as e:  # missing dataset, ...
      raise UsageError(str(e)) from None
    try:
      if src is not None:
        ev.evaluate(src)
        shown = src.id
      else:
        try:
          ev.follow(once=args.once, poll_s=args.poll)
        except watch.NoCheckpointError as e:
          raise UsageError(str(e)) from None
        except ValueError as e:  # --once: the newest step is unreadable
          raise UsageError(
              f"cannot evaluate the newest checkpoint: {e}. `lopt train` "
              "sets a damaged step aside when it resumes; or evaluate a "
              "file with --lopt") from None
        shown = ev.evaluated
    finally:
      ev.close()
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  recs = records.read(ev.writer.path)
  if shown is not None:  # only the table of what this run evaluated
    print("\n".join(watch.table(recs, shown)))
  c = ev.counters
  print(f"lopt evaluate: {c['runs']} runs, {c['cached']} from the baseline "
        f"cache, {c['skipped']} already recorded, {c['errors']} errors; "
        f"records in {ev.writer.path}")
  if stop["flag"]:
    return 130
  return 1 if c["errors"] else 0
