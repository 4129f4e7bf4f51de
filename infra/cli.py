"""The ``lopt`` command line."""

from __future__ import annotations

import argparse
import os
import platform
import sys

import metatrain

# glibc's allocator hands big freed blocks back to the OS, so every XLA
# temporary is freshly mapped (page faults on each step): this keeps one
# arena and all freed memory in the process. LOPT_MALLOC=default opts out.
KEEP_MALLOC = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
               "glibc.malloc.trim_threshold=100000000000")
_HEAVY = ("train", "evaluate", "demo")


def _cmd_demo(args) -> int:
  from metatrain import demo  # pylint: disable=import-outside-toplevel
  demo.run(steps=args.steps, seed=args.seed)
  return 0


def _cmd_tasks(args) -> int:
  overrides = list(args.set or [])
  if args.no_mlps:
    overrides.append("tasks.include_mlps=false")
  cfg = _load_config(argparse.Namespace(config=args.config, set=overrides))
  for line in cfg.tasks.ensemble().describe():
    print(line)
  return 0


def _load_config(args):
  from metatrain import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    return config_lib.load(args.config, args.set or [])
  except ValueError as e:
    print(f"lopt: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def _cmd_train(args) -> int:
  import dataclasses  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  from metatrain import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = _load_config(args)
  if args.evaluators is not None:
    if args.evaluators < 0:
      print("lopt: error: --evaluators must be >= 0", file=sys.stderr)
      return 2
    cfg = dataclasses.replace(cfg, evaluator=dataclasses.replace(
        cfg.evaluator, count=args.evaluators))
  if cfg.evaluator.count:
    if args.workers == 0:
      print("lopt: error: --evaluators needs Ray workers (not --workers 0);"
            " run `lopt evaluate --workdir W` beside it instead",
            file=sys.stderr)
      return 2
    from evaluators import suites  # pylint: disable=import-outside-toplevel
    try:
      suites.load(cfg.evaluator.suite, list(cfg.evaluator.suite_overrides))
    except ValueError as e:
      print(f"lopt: error: evaluator: {e}", file=sys.stderr)
      return 2
  if args.steps is not None and args.steps < 1:
    print("lopt: error: --steps must be >= 1", file=sys.stderr)
    return 2
  if args.workers is not None and args.workers < 0:
    print("lopt: error: --workers must be >= 0", file=sys.stderr)
    return 2
  if (msg := _resume_mismatch(cfg, args.workdir)) is not None:
    print(f"lopt: error: {msg}", file=sys.stderr)
    return 2
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "config.json"), "w") as f:
    json.dump(config_lib.to_dict(cfg), f, indent=2, sort_keys=True)
  if args.workers == 0:
    from metatrain import local_train  # pylint: disable=import-outside-toplevel
    local_train.train(cfg, steps=args.steps)
    return 0
  from metatrain import launcher  # pylint: disable=import-outside-toplevel
  return launcher.run(cfg, args)


def _resume_mismatch(cfg, workdir: str) -> str | None:
  """Why resuming ``workdir`` with ``cfg`` would change the optimizer, if so.

  Meta-parameters are only meaningful for the HRNN config they were trained
  with (e.g. the nominal-Adam start reads them differently), so resuming a
  checkpoint under another ``hrnn`` config is refused.
  """
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  from metatrain import checkpoints  # pylint: disable=import-outside-toplevel
  from metatrain.hrnn_config import HRNNConfig  # pylint: disable=import-outside-toplevel
  with checkpoints.Checkpointer(workdir, read_only=True) as ckpt:
    latest = ckpt.latest_step()
    if latest is None:
      return None
    saved = ckpt.restore_meta(latest).get("config", {}).get("hrnn")
  if saved is None:
    return None
  old, now = HRNNConfig.from_dict(saved).to_dict(), cfg.hrnn.to_dict()
  changed = {k: v for k, v in old.items() if v != now[k]}
  if not changed:
    return None
  diff = [f"hrnn.{k}: checkpoint {v!r}, now {now[k]!r}"
          for k, v in changed.items()]
  sets = " ".join(f"--set hrnn.{k}={_json_value(v)}"
                  for k, v in changed.items())
  return (f"{workdir}/checkpoints (step {latest}) was trained with another "
          f"optimizer config ({'; '.join(diff)}); resume with the same "
          f"settings ({sets}) or start a new --workdir")


def _json_value(v) -> str:
  import json  # pylint: disable=import-outside-toplevel
  return json.dumps(v).replace(" ", "")


def _cmd_evaluate(args) -> int:
  from evaluators import cli_evaluate  # pylint: disable=import-outside-toplevel
  return cli_evaluate.main(args)


def _cmd_prepare(args) -> int:
  from evaluators import imagenet  # pylint: disable=import-outside-toplevel
  try:
    path = imagenet.prepare(args.manual_dir, args.data_dir)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"lopt: error: {e}", file=sys.stderr)
    return 2
  print(f"imagenet2012 is ready in {path}; evaluate with `lopt evaluate "
        f"--suite imagenet --set data_dir={path}`")
  return 0


def _cmd_monitor(args) -> int:
  import time  # pylint: disable=import-outside-toplevel
  from evaluators import report  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(args.workdir):
    print(f"lopt: error: workdir {args.workdir} does not exist: start "
          f"`lopt train --workdir {args.workdir}` first", file=sys.stderr)
    return 2
  if args.interval <= 0:
    print("lopt: error: --interval must be > 0", file=sys.stderr)
    return 2
  try:
    while True:
      recs = report.load(args.workdir)
      if args.watch:
        print("\033[2J\033[H", end="")  # clear the terminal
      print("\n".join(report.table(recs)), flush=True)
      if args.html:
        report.write_html(args.workdir, args.html)
        print(f"report: {args.html}", flush=True)
      if not args.watch:
        return 0
      time.sleep(args.interval)
  except KeyboardInterrupt:
    return 0


def _cmd_export(args) -> int:
  from infra import export_cmd  # pylint: disable=import-outside-toplevel
  try:
    if args.inspect:
      print(export_cmd.inspect(args.inspect))
      return 0
    if not args.workdir or not args.out:
      raise export_cmd.ExportError("export needs --workdir W and --out "
                                   "FILE.lopt (or --inspect FILE.lopt)")
    meta = export_cmd.export_checkpoint(args.workdir, args.out, args.step,
                                        args.best)
  except (ValueError, FileNotFoundError) as e:
    print(f"lopt: error: {e}", file=sys.stderr)
    return 2
  ev = meta["evaluation"]
  summary = ("no evaluation recorded" if ev is None else
             f"learned wins {ev['tasks_won']}/{ev['tasks']} tasks of suite "
             f"{ev['suite']}, geometric-mean ratio "
             f"{ev['geomean_ratio_to_best_baseline']}")
  print(f"wrote {args.out}: checkpoint step {meta['source']['step']} "
        f"({meta['source']['selected_by']}); {summary}. Use it with "
        f"metatrain.load_optimizer({args.out!r})")
  return 0


MONITOR_EXAMPLES = """examples:
  lopt monitor --workdir runs/default
  lopt monitor --workdir runs/default --html report.html
  lopt monitor --workdir runs/default --html report.html --watch
  tensorboard --logdir runs/default/tb        # live training curves
"""

EXPORT_EXAMPLES = """examples:
  lopt export --workdir runs/default --out my.lopt             # newest
  lopt export --workdir runs/default --best --out best.lopt    # best evaluated
  lopt export --workdir runs/default --step 500 --out s500.lopt
  lopt export --inspect best.lopt
"""

EVALUATE_EXAMPLES = """examples:
  lopt evaluate --workdir runs/default                 # follow new checkpoints
  lopt evaluate --workdir runs/default --once          # newest checkpoint, then exit
  lopt evaluate --workdir runs/eval --lopt my.lopt     # an exported optimizer
  lopt evaluate --workdir W --once --suite imagenet --set data_dir=~/tfds
  lopt evaluate --workdir W --once --suite small --set steps=100 --set seeds=1
"""


def _cmd_launch(args) -> int:
  from infra import launch  # pylint: disable=import-outside-toplevel
  return launch.main(args)


def build_parser(parser_class=argparse.ArgumentParser
                 ) -> argparse.ArgumentParser:
  """The ``lopt`` parser; ``parser_class`` also builds the subcommands'."""
  p = parser_class(
      prog="lopt",
      description="Meta-train learned optimizers (hierarchical RNN, "
      "Wichrowska et al. 2017) and ship them as optax transformations.")
  p.add_argument("--version", action="version",
                 version=f"lopt {metatrain.__version__}")
  sub = p.add_subparsers(dest="command", metavar="COMMAND")
  d = sub.add_parser("demo", help="train a small problem with the untrained "
                     "HRNN and with Adam, and print both losses")
  d.add_argument("--steps", type=int, default=300)
  d.add_argument("--seed", type=int, default=0)
  d.set_defaults(func=_cmd_demo)

  t = sub.add_parser("train", help="meta-train the HRNN optimizer")
  t.add_argument("--workdir", default="runs/default",
                 help="output dir: config.json, checkpoints/, tb/")
  t.add_argument("--config", default="default",
                 help="preset name (default, tiny, paper) or a JSON file")
  t.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a config field, e.g. --set unroll.steps_mean=50")
  t.add_argument("--address", default=None,
                 help="Ray address; 'auto' joins a running cluster. "
                 "Default: start a local Ray instance")
  t.add_argument("--workers", type=int, default=None,
                 help="unroll workers (default: as many as the Ray cluster "
                 "fits, leaving a CPU for the learner); 0 runs everything in "
                 "this process without Ray")
  t.add_argument("--steps", type=int, default=None,
                 help="meta-steps (default: the config's steps)")
  t.add_argument("--dashboard", action="store_true",
                 help="start the Ray dashboard (bound to 127.0.0.1)")
  t.add_argument("--evaluators", type=int, default=None, metavar="N",
                 help="also run N evaluator actors on the config's "
                 "evaluator.suite (default suite: small); records in "
                 "WORKDIR/eval/records.jsonl")
  t.set_defaults(func=_cmd_train)

  e = sub.add_parser(
      "evaluate", help="evaluate checkpoints (or a .lopt file) against "
      "tuned Adam, RMSProp and SGD-momentum",
      epilog=EVALUATE_EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  e.add_argument("--workdir", required=True,
                 help="the training run's workdir; records go to "
                 "WORKDIR/eval/records.jsonl, TensorBoard to WORKDIR/tb/eval")
  e.add_argument("--suite", default="small",
                 help="small (default), heldout, imagenet or retina")
  mode = e.add_mutually_exclusive_group()
  mode.add_argument("--follow", action="store_true",
                    help="keep evaluating new checkpoints (the default)")
  mode.add_argument("--once", action="store_true",
                    help="evaluate the newest checkpoint, print the "
                    "comparison and exit")
  e.add_argument("--lopt", metavar="FILE",
                 help="evaluate this exported optimizer instead of the "
                 "workdir's checkpoints (implies --once)")
  e.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a suite field, e.g. --set steps=100")
  e.add_argument("--poll", type=float, default=30.0, metavar="SECONDS",
                 help="seconds between checkpoint polls with --follow")
  e.add_argument("--shard", default="0/1", metavar="I/N",
                 help="run every N-th unit starting at I (split a suite "
                 "over N evaluators)")
  e.set_defaults(func=_cmd_evaluate)

  m = sub.add_parser(
      "monitor", help="the evaluators' results: a terminal table (learned "
      "vs tuned baselines per task, trend over checkpoints) and an HTML "
      "report", epilog=MONITOR_EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  m.add_argument("--workdir", required=True)
  m.add_argument("--html", metavar="FILE",
                 help="also write a self-contained HTML report with plots")
  m.add_argument("--watch", action="store_true",
                 help="refresh the table (and report) every --interval s")
  m.add_argument("--interval", type=float, default=30.0)
  m.set_defaults(func=_cmd_monitor)

  x = sub.add_parser(
      "export", help="write a checkpoint as a single .lopt optimizer file "
      "(or --inspect one)", epilog=EXPORT_EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  x.add_argument("--workdir")
  pick = x.add_mutually_exclusive_group()
  pick.add_argument("--step", type=int, help="this checkpoint step")
  pick.add_argument("--best", action="store_true",
                    help="the checkpoint with the best evaluator score")
  x.add_argument("--out", metavar="FILE.lopt")
  x.add_argument("--inspect", metavar="FILE.lopt",
                 help="print a .lopt file's metadata and exit")
  x.set_defaults(func=_cmd_export)

  pr = sub.add_parser("prepare", help="prepare an evaluation dataset "
                      "(imagenet2012 from your manual download)")
  pr.add_argument("dataset", choices=["imagenet"])
  pr.add_argument("--manual-dir", required=True,
                  help="holds ILSVRC2012_img_train.tar and "
                  "ILSVRC2012_img_val.tar")
  pr.add_argument("--data-dir", default=None,
                  help="TFDS data dir (default: $TFDS_DATA_DIR or "
                  "~/tensorflow_datasets)")
  pr.set_defaults(func=_cmd_prepare)

  from infra import launch  # pylint: disable=import-outside-toplevel
  launch.add_parser(sub).set_defaults(func=_cmd_launch)

  k = sub.add_parser("tasks", help="list the meta-training task families")
  k.add_argument("--no-mlps", action="store_true",
                 help="the paper's text: no neural networks in the ensemble")
  k.add_argument("--config", default="default",
                 help="preset name or JSON file whose tasks.* settings to show")
  k.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="as for train, e.g. --set 'tasks.weights=[\"mlp=3\"]'")
  k.set_defaults(func=_cmd_tasks)
  return p


def malloc_env(environ: dict[str, str]) -> dict[str, str] | None:
  """``environ`` with the allocator kept (None: nothing to change)."""
  if environ.get("LOPT_MALLOC", "keep") != "keep":
    return None
  if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
    return None  # already set, by us or by the user
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(
      t for t in (environ.get("GLIBC_TUNABLES", ""), KEEP_MALLOC) if t)
  return env


def main(argv: list[str] | None = None) -> int:
  # glibc reads its tunables at process start: the command line's heavy
  # commands re-run themselves once with them set; Ray workers and
  # evaluators inherit them (metatrain/launcher.py passes them on).
  if (argv is None and len(sys.argv) > 1 and sys.argv[1] in _HEAVY and
      (env := malloc_env(dict(os.environ))) is not None):
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "infra.cli",
                               *sys.argv[1:]], env)
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "func", None):
    parser.print_help()
    return 0
  return int(args.func(args) or 0)


if __name__ == "__main__":
  sys.exit(main())
