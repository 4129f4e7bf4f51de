"""The ``lopt`` command line."""

from __future__ import annotations

import errno
import logging
import os
import platform
import sys

from infra.parser import UsageError, build_parser

# glibc's allocator hands big freed blocks back to the OS, so every XLA
# temporary is freshly mapped (page faults on each step): this keeps one
# arena and all freed memory in the process. LOPT_MALLOC=default opts out.
KEEP_MALLOC = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
               "glibc.malloc.trim_threshold=100000000000")
_HEAVY = ("train", "evaluate", "demo")


def _cmd_demo(args) -> int:
  from metatrain.training import demo
  demo.run(steps=args.steps, seed=args.seed)
  return 0


def _cmd_tasks(args) -> int:
  overrides = list(args.set or [])
  if args.no_mlps:
    overrides.append("tasks.include_mlps=false")
  cfg = load_config(args.config, overrides)
  for line in cfg.tasks.ensemble().describe():
    print(line)
  return 0


def _warn(msg: str) -> None:
  print(f"lopt: warning: {' '.join(msg.split())}", file=sys.stderr,
        flush=True)


def load_config(name_or_path: str, overrides: list[str] | None):
  """``config.load``, its ValueError as a UsageError."""
  from metatrain.training import config as config_lib
  try:
    return config_lib.load(name_or_path, overrides or [])
  except ValueError as e:
    raise UsageError(str(e)) from None


def _cmd_train(args) -> int:
  import dataclasses  # pylint: disable=import-outside-toplevel
  if (args.address is None and args.workers != 0 and
      "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules):
    # A local Ray instance: token auth on, as Ray's default is, but said
    # explicitly, so that Ray does not warn at every start that it turned
    # it on. Ray reads this when it is imported. (Set RAY_AUTH_MODE to
    # choose otherwise; a joined cluster keeps Ray's own detection.)
    os.environ["RAY_AUTH_MODE"] = "token"
  cfg = load_config(args.config, args.set)
  if args.evaluators is not None:
    if args.evaluators < 0:
      raise UsageError("--evaluators must be >= 0")
    cfg = dataclasses.replace(cfg, evaluator=dataclasses.replace(
        cfg.evaluator, count=args.evaluators))
  if cfg.evaluator.count:
    if args.workers == 0:
      raise UsageError("--evaluators needs Ray workers (not --workers 0); "
                       "run `lopt evaluate --workdir W` beside it instead")
    from evaluators import suites  # pylint: disable=import-outside-toplevel
    try:
      suites.load(cfg.evaluator.suite, list(cfg.evaluator.suite_overrides))
    except ValueError as e:
      raise UsageError(f"evaluator: {e}") from None
  if args.steps is not None and args.steps < 1:
    raise UsageError("--steps must be >= 1")
  if args.workers is not None and args.workers < 0:
    raise UsageError("--workers must be >= 0")
  from metatrain.distributed import workdir_lock
  lock = workdir_lock.WorkdirLock(args.workdir, warn=_warn)
  try:
    lock.acquire()
  except workdir_lock.WorkdirBusyError as e:
    raise UsageError(str(e)) from None
  try:
    if (msg := _resume_mismatch(cfg, args.workdir)) is not None:
      raise UsageError(msg)
    return _train_logged(cfg, args)
  finally:
    lock.release()


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _train_logged(cfg, args) -> int:
  """Trains; a failed save or a full disk is one line and exit 2, with
  the libraries' tracebacks in ``workdir/lopt.log``."""
  import json  # pylint: disable=import-outside-toplevel
  from infra import run_log  # pylint: disable=import-outside-toplevel
  from metatrain import files  # pylint: disable=import-outside-toplevel
  from metatrain.distributed import checkpoints, launcher
  from metatrain.training import config as config_lib
  from metatrain.distributed.workdir import Workdir  # pylint: disable=import-outside-toplevel
  log = run_log.RunLog(args.workdir, " ".join(["lopt", *sys.argv[1:]]))
  log.install()
  try:
    path = Workdir(args.workdir).config
    files.write_atomic(
        path, json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True))
    from evaluators.best import BestCheckpoint  # pylint: disable=import-outside-toplevel
    pool, suite = None, None
    if cfg.evaluator.count:
      from evaluators.actor import EvaluatorPool as pool  # pylint: disable=import-outside-toplevel
      suite = cfg.evaluator.suite  # steps must be fully evaluated on it
    best = BestCheckpoint(args.workdir, suite,
                          list(cfg.evaluator.suite_overrides))
    return launcher.run(cfg, args, evaluator_pool=pool, best_checkpoint=best)
  except (checkpoints.CheckpointSaveError,
          checkpoints.CheckpointRestoreError, launcher.ResourceError) as e:
    log.fail(str(e), e)
    return 2
  except OSError as e:
    if e.errno not in _DISK_ERRORS:
      raise
    log.fail(_disk_error(args.workdir, e), e)
    return 2
  finally:
    log.close()


def _disk_error(workdir: str, e: OSError) -> str:
  from metatrain.distributed import checkpoint_dirs
  stored = checkpoint_dirs.stored_config(workdir)
  return checkpoint_dirs.disk_failure(
      f"cannot write {e.filename or workdir}", e.strerror, workdir,
      stored[0] if stored else None)


def _resume_mismatch(cfg, workdir: str) -> str | None:
  """Why resuming ``workdir`` with ``cfg`` would change the optimizer, if so.

  Meta-parameters are only meaningful for the HRNN config they were trained
  with (e.g. the nominal-Adam start reads them differently), so resuming a
  checkpoint under another ``hrnn`` config is refused.
  """
  from metatrain.distributed import checkpoint_dirs
  from metatrain.optimizer.hrnn_config import HRNNConfig  # pylint: disable=import-outside-toplevel
  stored = checkpoint_dirs.stored_config(workdir)  # no JAX before Ray forks
  if stored is None:
    return None
  latest, saved = stored[0], stored[1].get("hrnn")
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
  from infra.commands import evaluate as evaluate_cmd  # pylint: disable=import-outside-toplevel
  return evaluate_cmd.main(args)


def _cmd_prepare(args) -> int:
  from evaluators import imagenet  # pylint: disable=import-outside-toplevel
  try:
    path = imagenet.prepare(args.manual_dir, args.data_dir)
  except (FileNotFoundError, ValueError, ImportError) as e:
    raise UsageError(str(e)) from None
  print(f"imagenet2012 is ready in {path}; evaluate with `lopt evaluate "
        f"--suite imagenet --set data_dir={path}`")
  return 0


def _cmd_monitor(args) -> int:
  import time  # pylint: disable=import-outside-toplevel
  from evaluators import report  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(args.workdir):
    raise UsageError(f"workdir {args.workdir} does not exist: start "
                     f"`lopt train --workdir {args.workdir}` first")
  if args.interval <= 0:
    raise UsageError("--interval must be > 0")
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
  from infra.commands import export as export_cmd  # pylint: disable=import-outside-toplevel
  try:
    if args.inspect:
      print(export_cmd.inspect(args.inspect))
      return 0
    if not args.out:
      raise UsageError("export needs --out FILE.lopt (or --inspect "
                       "FILE.lopt)")
    meta = export_cmd.export_checkpoint(args.workdir, args.out, args.step,
                                        args.best)
  except (ValueError, FileNotFoundError) as e:
    raise UsageError(str(e)) from None
  ev = meta["evaluation"]
  summary = ("no evaluation recorded" if ev is None else
             f"learned wins {ev['tasks_won']}/{ev['tasks']} tasks of suite "
             f"{ev['suite']}, geometric-mean ratio "
             f"{_ratio(ev['geomean_ratio_to_best_baseline'])}")
  print(f"wrote {args.out}: checkpoint step {meta['source']['step']} "
        f"({meta['source']['selected_by']}); {summary}. Use it with "
        f"metatrain.load_optimizer({args.out!r})")
  return 0


def _ratio(v) -> str:
  return "n/a (diverged)" if v is None else f"{v:.3g}"


def _cmd_launch(args) -> int:
  from infra import launch  # pylint: disable=import-outside-toplevel
  return launch.main(args)


def _cmd_doctor(args) -> int:
  del args
  from infra import doctor  # pylint: disable=import-outside-toplevel
  return doctor.main()


COMMANDS = {"demo": _cmd_demo, "train": _cmd_train,
            "evaluate": _cmd_evaluate, "monitor": _cmd_monitor,
            "export": _cmd_export, "prepare": _cmd_prepare,
            "launch": _cmd_launch, "tasks": _cmd_tasks,
            "doctor": _cmd_doctor}


class _Notes(logging.Handler):
  """Prints library INFO notes (e.g. a missing HRNN kernel) to stderr."""

  def emit(self, record):
    print(f"lopt: note: {record.getMessage()}", file=sys.stderr, flush=True)


def _show_notes() -> None:
  log = logging.getLogger("metatrain.optimizer.hrnn_kernel")
  if not any(isinstance(h, _Notes) for h in log.handlers):
    log.addHandler(_Notes())
    log.setLevel(logging.INFO)


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
  """Runs ``lopt``; bad input (UsageError) is one line and exit code 2."""
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
  if not getattr(args, "command", None):
    parser.print_help()
    return 0
  if args.command in _HEAVY:
    _show_notes()
  try:
    return int(COMMANDS[args.command](args) or 0)
  except UsageError as e:
    print(f"lopt: error: {' '.join(str(e).split())}", file=sys.stderr,
          flush=True)
    return 2


if __name__ == "__main__":
  sys.exit(main())
