"""The ``lopt`` command line's parser and its one error type (a leaf module).

``infra.cli`` runs the commands and ``infra.launch`` validates a job's
arguments by parsing them here, as ``lopt`` would; neither imports the
other. A command that meets bad input raises ``UsageError``; ``cli.main``
prints its message as one line, ``lopt: error: ...``, and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

LAUNCH_ACTIONS = ("train", "evaluate", "status", "logs", "stop", "list")


class UsageError(Exception):
  """Bad input the user can fix; the message is one line naming the fix."""


class RaisingParser(argparse.ArgumentParser):
  """An ArgumentParser that raises UsageError instead of exiting."""

  def error(self, message):
    raise UsageError(message)


class _Version(argparse.Action):
  """``--version``: the version, then the HRNN kernel's status line."""

  def __call__(self, parser, namespace, values, option_string=None):
    from metatrain import __version__
    from metatrain.optimizer import hrnn_kernel
    print(f"lopt {__version__}")
    print(hrnn_kernel.status_line())
    sys.stdout.flush()
    parser.exit()


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

LAUNCH_EXAMPLES = """examples:
  ray dashboard infra/clusters/gcp-tpu.yaml     # tunnel (leave it running)
  lopt launch --cluster infra/clusters/gcp-tpu.yaml train \\
      --workdir /mnt/runs/tpu --set worker.tpus=4
  lopt launch --cluster infra/clusters/gcp-tpu.yaml \\
      --entrypoint-resources '{"TPU": 4}' evaluate --workdir /mnt/runs/tpu \\
      --suite imagenet --set data_dir=/mnt/tfds
  lopt launch --cluster FILE train --config my.json   # my.json travels along
  lopt launch list
  lopt launch status lopt-train-20250101-120000-ab12
  lopt launch logs lopt-train-20250101-120000-ab12 --follow
  lopt launch stop lopt-train-20250101-120000-ab12
  lopt launch --address http://127.0.0.1:8266 list   # another tunnel port

Train jobs get `--address auto` (join the cluster) unless given. Use absolute
--workdir paths on storage every node sees. The Jobs API needs the cluster's
token: ~/.ray/auth_token, or set RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN.
"""


DEFAULT_WORKDIR = "runs/default"

TRAIN_EXAMPLES = """examples:
  lopt train                                   # local Ray, runs/default
  lopt train --config tiny --steps 20          # a smoke test in minutes
  lopt train --workdir runs/a --evaluators 1   # evaluate checkpoints as it trains
  lopt train --set tasks.num_groups=8 --set learner.save_every=5
  lopt train --address auto --workdir /mnt/runs/a   # join a running cluster

Ctrl-C saves a checkpoint and stops; the same command resumes. One trainer
per workdir (WORKDIR/train.lock). `meta_loss` is the mean log(loss / initial
loss) of the current unrolls: negative while tasks train, lower is better.
"""


def build_parser(parser_class=argparse.ArgumentParser
                 ) -> argparse.ArgumentParser:
  """The ``lopt`` parser; ``parser_class`` also builds the subcommands'."""
  p = parser_class(
      prog="lopt",
      description="Meta-train learned optimizers (hierarchical RNN, "
      "Wichrowska et al. 2017) and ship them as optax transformations.")
  p.add_argument("--version", action=_Version, nargs=0,
                 help="print the version and the HRNN kernel's status")
  sub = p.add_subparsers(dest="command", metavar="COMMAND")
  d = sub.add_parser("demo", help="train a small problem with the untrained "
                     "HRNN and with Adam, and print both losses")
  d.add_argument("--steps", type=int, default=300,
                 help="training steps of each optimizer (default 300)")
  d.add_argument("--seed", type=int, default=0,
                 help="seed of the problem's data and init (default 0)")
  d.set_defaults(command="demo")

  t = sub.add_parser("train", help="meta-train the HRNN optimizer",
                     epilog=TRAIN_EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  t.add_argument("--workdir", default=DEFAULT_WORKDIR,
                 help="output dir: config.json, checkpoints/, tb/, lopt.log "
                 f"(default: {DEFAULT_WORKDIR})")
  t.add_argument("--config", default="default",
                 help="preset name (default: the shipped optimizer's "
                 "recipe, = v1; v2; schedule (hrnn-v2's); tiny; paper) "
                 "or a JSON file")
  t.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a config field, e.g. --set tasks.num_groups=8")
  t.add_argument("--address", default=None,
                 help="Ray address; 'auto' joins a running cluster. "
                 "Default: start a local Ray instance")
  t.add_argument("--workers", type=int, default=None,
                 help="unroll workers (default: as many as the Ray cluster "
                 "fits, leaving a CPU for the learner); 0: one in-process "
                 "worker, no Ray (same checkpoints, TensorBoard and resume)")
  t.add_argument("--steps", type=int, default=None,
                 help="meta-steps (default: the config's steps)")
  t.add_argument("--dashboard", action="store_true",
                 help="start the Ray dashboard (bound to 127.0.0.1)")
  t.add_argument("--evaluators", type=int, default=None, metavar="N",
                 help="also run N evaluator actors on the config's "
                 "evaluator.suite (default suite: small); records in "
                 "WORKDIR/eval/records.jsonl")
  t.set_defaults(command="train")

  e = sub.add_parser(
      "evaluate", help="evaluate checkpoints (or a .lopt file) against "
      "tuned Adam, RMSProp and SGD-momentum",
      epilog=EVALUATE_EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  e.add_argument("--workdir", default=DEFAULT_WORKDIR,
                 help="the training run's workdir; records go to "
                 "WORKDIR/eval/records.jsonl, TensorBoard to WORKDIR/tb/eval "
                 f"(default: {DEFAULT_WORKDIR})")
  e.add_argument("--suite", default="small",
                 help="small (default), heldout, validation, imagenet or "
                 "retina")
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
  e.set_defaults(command="evaluate")

  m = sub.add_parser(
      "monitor", help="the evaluators' results: a terminal table (learned "
      "vs tuned baselines per task, trend over checkpoints) and an HTML "
      "report", epilog=MONITOR_EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  m.add_argument("--workdir", default=DEFAULT_WORKDIR,
                 help="the run whose WORKDIR/eval/records.jsonl to show "
                 f"(default: {DEFAULT_WORKDIR})")
  m.add_argument("--html", metavar="FILE",
                 help="also write a self-contained HTML report with plots")
  m.add_argument("--watch", action="store_true",
                 help="refresh the table (and report) every --interval s")
  m.add_argument("--interval", type=float, default=30.0, metavar="SECONDS",
                 help="seconds between refreshes with --watch (default 30)")
  m.set_defaults(command="monitor")

  x = sub.add_parser(
      "export", help="write a checkpoint as a single .lopt optimizer file "
      "(or --inspect one)", epilog=EXPORT_EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  x.add_argument("--workdir", default=DEFAULT_WORKDIR,
                 help="the run whose checkpoints to export (default: "
                 f"{DEFAULT_WORKDIR})")
  pick = x.add_mutually_exclusive_group()
  pick.add_argument("--step", type=int, help="this checkpoint step")
  pick.add_argument("--best", action="store_true",
                    help="the checkpoint with the best evaluator score")
  x.add_argument("--out", metavar="FILE.lopt",
                 help="the file to write (required, unless --inspect); its "
                 "directory must exist")
  x.add_argument("--inspect", metavar="FILE.lopt",
                 help="print a .lopt file's metadata and exit")
  x.set_defaults(command="export")

  pr = sub.add_parser("prepare", help="prepare an evaluation dataset "
                      "(imagenet2012 from your manual download)")
  pr.add_argument("dataset", choices=["imagenet"])
  pr.add_argument("--manual-dir", required=True,
                  help="holds ILSVRC2012_img_train.tar and "
                  "ILSVRC2012_img_val.tar")
  pr.add_argument("--data-dir", default=None,
                  help="TFDS data dir (default: $TFDS_DATA_DIR or "
                  "~/tensorflow_datasets)")
  pr.set_defaults(command="prepare")

  _add_launch(sub).set_defaults(command="launch")

  k = sub.add_parser("tasks", help="list the meta-training task families")
  k.add_argument("--no-mlps", action="store_true",
                 help="the paper's text: no neural networks in the ensemble")
  k.add_argument("--config", default="default",
                 help="preset name or JSON file whose tasks.* settings to show")
  k.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="as for train, e.g. --set 'tasks.weights=[\"mlp=3\"]'")
  k.set_defaults(command="tasks")
  dr = sub.add_parser("doctor", help="check this install: versions, jax "
                      "backend and devices, the HRNN CPU kernel")
  dr.set_defaults(command="doctor")
  return p


def _add_launch(sub) -> argparse.ArgumentParser:
  """Adds ``lopt launch`` to the ``lopt`` subcommands."""
  p = sub.add_parser(
      "launch", help="run train/evaluate as Ray jobs on a cluster (Jobs API)",
      description="Submit `lopt train` or `lopt evaluate` to a Ray cluster "
      "through Ray's Jobs API, and follow, list or stop the jobs.",
      epilog=LAUNCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cluster", metavar="FILE",
                 help="cluster file (infra/clusters/*.yaml): validated, and "
                 "gives the dashboard port and how to open the tunnel; "
                 "required to submit")
  p.add_argument("--address", metavar="URL",
                 help="Jobs API address (default: http://127.0.0.1:PORT, "
                 "the tunnel to the cluster file's dashboard port, 8265)")
  p.add_argument("--entrypoint-resources", metavar="JSON",
                 help='Ray resources for the job\'s driver, e.g. '
                 '\'{"TPU": 4}\' to run it on a TPU host')
  p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                 metavar="N", help="CPUs reserved for the job's driver")
  p.add_argument("action", choices=LAUNCH_ACTIONS, metavar="ACTION",
                 help="train or evaluate [ARGS of lopt train/evaluate]; "
                 "status JOB_ID; logs JOB_ID [--follow]; stop JOB_ID; list")
  p.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS",
                 help="the arguments of that action (e.g. lopt train's)")
  return p
