"""The ``lopt`` command line."""

from __future__ import annotations

import argparse
import sys

import metatrain


def _cmd_demo(args) -> int:
  from metatrain import demo  # pylint: disable=import-outside-toplevel
  demo.run(steps=args.steps, seed=args.seed)
  return 0


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
