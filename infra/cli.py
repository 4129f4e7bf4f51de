"""The ``lopt`` command line."""

from __future__ import annotations

import argparse
import sys

import metatrain


def _cmd_demo(args) -> int:
  from metatrain import demo  # pylint: disable=import-outside-toplevel
  demo.run(steps=args.steps, seed=args.seed)
  return 0


def _cmd_tasks(args) -> int:
  from metatrain import tasks  # pylint: disable=import-outside-toplevel
  ens = tasks.default_ensemble(include_mlps=not args.no_mlps)
  for line in ens.describe():
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
  import os  # pylint: disable=import-outside-toplevel
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
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "config.json"), "w") as f:
    json.dump(config_lib.to_dict(cfg), f, indent=2, sort_keys=True)
  if args.workers == 0:
    from metatrain import local_train  # pylint: disable=import-outside-toplevel
    local_train.train(cfg, steps=args.steps)
    return 0
  from metatrain import launcher  # pylint: disable=import-outside-toplevel
  return launcher.run(cfg, args)


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


EVALUATE_EXAMPLES = """examples:
  lopt evaluate --workdir runs/default                 # follow new checkpoints
  lopt evaluate --workdir runs/default --once          # newest checkpoint, then exit
  lopt evaluate --workdir runs/eval --lopt my.lopt     # an exported optimizer
  lopt evaluate --workdir W --once --suite imagenet --set data_dir=~/tfds
  lopt evaluate --workdir W --once --suite small --set steps=100 --set seeds=1
"""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
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

  k = sub.add_parser("tasks", help="list the meta-training task families")
  k.add_argument("--no-mlps", action="store_true",
                 help="the paper's text: no neural networks in the ensemble")
  k.set_defaults(func=_cmd_tasks)
  return p


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "func", None):
    parser.print_help()
    return 0
  return int(args.func(args) or 0)


if __name__ == "__main__":
  sys.exit(main())
