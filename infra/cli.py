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
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from metatrain import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = _load_config(args)
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
  t.set_defaults(func=_cmd_train)

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
