"""Asynchronous Orbax checkpoints of the meta-training state.

Layout: ``workdir/checkpoints/<step>/`` holds four Orbax items that form two
logical parts:

* ``state`` (arrays: theta, meta-optimizer state) + ``state_meta`` (JSON:
  counters, RNG state, config, digests): everything needed to resume;
* ``lopt`` (arrays: theta) + ``lopt_meta`` (JSON: config, digest): all an
  evaluator needs.

Arrays are stored as host numpy arrays, so restoring needs no devices or
shardings of the writer. SHA-256 digests of the arrays are stored in the JSON
parts and checked on restore, so corrupt data raises instead of returning
garbage.

A step dir counts as complete only if its ``_CHECKPOINT_METADATA`` file (which
Orbax 0.12 stamps with ``commit_timestamp_nsecs`` when it finalises a save)
parses and all four item dirs exist. Readers skip incomplete numbered dirs,
Orbax temporary dirs (``*.orbax-checkpoint-tmp*``) and foreign entries with a
warning, and never delete anything. The trainer, which holds the workdir's
lock (``metatrain/workdir_lock.py``) and so knows that no other save is in
progress, sets incomplete and corrupt steps aside (``set_aside``: renamed to
``<step>.corrupt-<time>``, kept for inspection, then ignored by everyone) and
removes the temporary dirs of saves that can no longer finish
(``remove_stale_tmp``).

Retention: the ``keep_last`` newest complete steps are kept, plus every step
that is a multiple of ``keep_every`` (if > 0). E.g. keep_last=2, keep_every=5
and steps 1..12 keep {5, 10, 11, 12}. The trainer also pins its best
evaluated step (``protect``; ``checkpoint_pin.py``), kept whatever the rules
above say, across resumes too, until a better one replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

# The layout and errors (checkpoint_dirs.py) are part of this module's API.
from metatrain.distributed.checkpoint_dirs import (  # pylint: disable=unused-import
    ASIDE_MARK, COMMIT_FILE, ORBAX_ROOT_ENTRIES, STEP_RE, TMP_MARK,
    CheckpointRestoreError, CheckpointSaveError, CorruptCheckpointError,
    disk_failure, is_complete_step_dir, os_error_text)
from metatrain.distributed.checkpoint_pin import PinnedStep, read_pin, write_pin
from metatrain.distributed.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Checkpoint cadence and retention.

  Attributes:
    keep_last: number of newest complete steps to keep (>= 1).
    keep_every: also keep forever every step that is a multiple of this
      (0: none).
    save_every: ``save`` writes only steps that are multiples of this, unless
      forced.
    async_save: write in a background thread; see ``Checkpointer.wait``.
  """

  keep_last: int = 3
  keep_every: int = 0
  save_every: int = 50
  async_save: bool = True


def _to_host(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)


def _digest(tree: Any) -> str:
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class _CompleteStepsFormat(ocp.path.step.NameFormat):
  """Orbax's standard step naming that only lists complete step dirs."""

  base: Any = dataclasses.field(
      default_factory=ocp.path.step.standard_name_format)

  def build_name(self, step: int) -> str:
    return self.base.build_name(step)

  def find_all(self, base_path: Any) -> Iterator[Any]:
    return iter([m for m in self.base.find_all(base_path)
                 if is_complete_step_dir(Path(m.path))])

  def find_step(self, base_path: Any, step: int) -> Any:
    return self.base.find_step(base_path, step)


class Checkpointer:
  """Saves and restores meta-training checkpoints under workdir/checkpoints."""

  def __init__(self, workdir: str, cfg: CheckpointConfig = CheckpointConfig(),
               read_only: bool = False):
    """Opens (in read-only mode without creating) the checkpoint dir."""
    if cfg.keep_last < 1 or cfg.keep_every < 0 or cfg.save_every < 1:
      raise ValueError(f"invalid {cfg}: need keep_last >= 1, keep_every >= 0"
                       " and save_every >= 1")
    self.cfg, self.read_only = cfg, read_only
    self.directory = Path(Workdir(workdir).checkpoints).absolute()
    self.pin_path = Workdir(workdir).best_checkpoint
    self._warned: set[str] = set()
    self._in_flight: set[int] = set()
    self._failed: set[int] = set()  # steps whose save failed
    fmt = _CompleteStepsFormat()
    if read_only:
      opts = ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0,
          step_name_format=fmt, enable_async_checkpointing=False)
    else:
      self._pin = PinnedStep((self.protected() or {}).get("step"))
      keep: list[Any] = [ocm.LatestN(n=cfg.keep_last), self._pin]
      if cfg.keep_every:
        keep.append(ocm.EveryNSteps(interval_steps=cfg.keep_every))
      opts = ocp.CheckpointManagerOptions(
          step_name_format=fmt, enable_async_checkpointing=cfg.async_save,
          save_decision_policy=ocm.FixedIntervalPolicy(cfg.save_every),
          preservation_policy=ocm.AnyPreservationPolicy(keep),
          cleanup_tmp_directories=False)
    self._opts = opts
    self._mngr_obj: ocp.CheckpointManager | None = None
    if not read_only:
      self._mngr_obj = ocp.CheckpointManager(self.directory, options=opts)
    self.all_steps()  # warn about skipped entries on open

  @property
  def _mngr(self) -> ocp.CheckpointManager:
    """The Orbax manager; a read-only one is opened on first use, once the
    run has saved (Orbax would warn about a missing or read-only dir)."""
    if self._mngr_obj is None:
      absl_log = logging.getLogger("absl")
      level = absl_log.level
      absl_log.setLevel(logging.ERROR)  # "Given directory is read only"
      try:
        self._mngr_obj = ocp.CheckpointManager(self.directory,
                                               options=self._opts)
      finally:
        absl_log.setLevel(level)
    return self._mngr_obj

  def save(self, step: int, *, theta: Any, opt_state: Any,
           counters: dict[str, int], rng_state: dict[str, Any],
           config: dict[str, Any], force: bool = False) -> bool:
    """Starts saving ``step`` (asynchronously if configured).

    Args:
      step: the learner step.
      theta: meta-parameters, a dict pytree of arrays.
      opt_state: the optax meta-optimizer state.
      counters: learner counters (JSON-safe).
      rng_state: a JSON-safe RNG state, e.g.
        ``np.random.Generator.bit_generator.state``.
      config: JSON-safe config dict (tuples come back as lists).
      force: save even if ``step`` is not a multiple of ``save_every``.

    Returns:
      Whether a save was started (False if skipped by cadence or if ``step``
      is already saved).
    """
    if self.read_only:
      raise PermissionError(
          f"Checkpointer on {self.directory} is read-only; cannot save step"
          f" {step}")
    if step in self._mngr.all_steps():
      return False
    target = self.directory / str(step)
    if target.exists():  # an interrupted earlier save of this step
      self.set_aside(step)
    theta, opt_state = _to_host(theta), _to_host(opt_state)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave({"theta": theta, "opt_state": opt_state}),
        state_meta=ocp.args.JsonSave({
            "step": step, "counters": counters, "rng_state": rng_state,
            "config": config, "theta_digest": _digest(theta),
            "opt_state_digest": _digest(opt_state)}),
        lopt=ocp.args.StandardSave(theta),
        lopt_meta=ocp.args.JsonSave(
            {"step": step, "config": config, "theta_digest": _digest(theta)}))
    try:
      saved = self._mngr.save(step, args=args, force=force)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax first waits for the previous async save: that may be what
      # failed.
      failed = min(self._in_flight) if self._in_flight else step
      raise self._save_failed(failed, e, also=(step,)) from e
    if saved:
      self._in_flight.add(step)
    return bool(saved)

  def wait(self) -> None:
    """Blocks until pending saves (and retention deletions) are finished.

    Raises:
      CheckpointSaveError: an asynchronous save failed; its partial
        temporary dir is removed.
    """
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step = max(self._in_flight) if self._in_flight else None
      raise self._save_failed(step, e) from e
    self._in_flight.clear()

  def _save_failed(self, step: int | None, e: Exception,
                   also: tuple[int, ...] = ()) -> CheckpointSaveError:
    """Removes the temporary dirs of the failed saves (in flight, ``step``
    and ``also``); the error to raise, naming ``step``."""
    # Best effort now; again in close(), when Orbax's other threads for
    # these saves have certainly stopped writing.
    self._failed |= set(self._in_flight) | set(also) | (
        {step} if step is not None else set())
    self._remove_tmp(self._failed)
    self._in_flight.clear()
    what = f"step {step}" if step is not None else "a checkpoint"
    return CheckpointSaveError(disk_failure(
        f"could not save {what} in {self.directory}", os_error_text(e),
        self.directory, self.latest_step()))

  def _remove_tmp(self, steps) -> None:
    for s in steps:
      for p in self.directory.glob(f"{s}{TMP_MARK}*"):
        shutil.rmtree(p, ignore_errors=True)

  @property
  def protected_step(self) -> int | None:
    """The pinned best step this trainer keeps (None: none, or read-only)."""
    return None if self.read_only else self._pin.step

  def protected(self) -> dict[str, Any] | None:
    """The pin file: ``{"step", "info", "pinned_at"}``, or None."""
    return read_pin(self.pin_path)

  def protect(self, step: int, info: dict[str, Any] | None = None) -> None:
    """Pins complete step ``step`` as the run's best (trainer only).

    From the next save on, retention keeps it whatever ``keep_last`` and
    ``keep_every`` say, and releases the previously pinned step. The pin
    file (with the JSON-safe ``info``) survives resumes.
    """
    if self.read_only:
      raise PermissionError(f"Checkpointer on {self.directory} is read-only")
    if step not in self.retained_steps():
      raise ValueError(f"cannot keep step {step} as the best: not a complete"
                       f" checkpoint in {self.directory} (or being deleted)")
    write_pin(self.pin_path, step, info or {})
    self._pin.step = step

  def retained_steps(self) -> list[int]:
    """Complete steps that retention has not released (a released one can
    be on disk while Orbax deletes it in the background); trainer only."""
    listed = set(self._mngr.all_steps())
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # steps being deleted
      return [s for s in self.all_steps() if s in listed]

  def set_aside(self, step: int) -> Path:
    """Renames step dir ``step`` to ``<step>.corrupt-<time>``; returns it.

    Only for the trainer holding the workdir lock. The dir is kept (for
    inspection or recovery) and ignored by every reader from then on, so it
    can never make a later save of ``step`` fail.
    """
    if self.read_only:
      raise PermissionError(f"Checkpointer on {self.directory} is read-only")
    src = self.directory / str(step)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dst = self.directory / f"{step}{ASIDE_MARK}{stamp}"
    n = 1
    while dst.exists():
      n += 1
      dst = self.directory / f"{step}{ASIDE_MARK}{stamp}-{n}"
    src.rename(dst)
    if self._mngr_obj is not None:
      self._mngr_obj.reload()
    return dst

  def set_aside_incomplete(self) -> list[tuple[int, Path]]:
    """Sets aside every incomplete numbered step dir (trainer only)."""
    out = []
    if not self.directory.is_dir():
      return out
    for p in sorted(self.directory.iterdir()):
      if (STEP_RE.fullmatch(p.name) and p.is_dir() and
          not is_complete_step_dir(p)):
        out.append((int(p.name), self.set_aside(int(p.name))))
    return out

  def remove_stale_tmp(self) -> list[Path]:
    """Removes Orbax temporary dirs of saves that cannot finish any more.

    Only for the trainer holding the workdir lock, before its first save:
    no other process saves into this directory, so these are the partial
    writes of a killed or failed run, never resumable.
    """
    out = []
    if not self.directory.is_dir():
      return out
    for p in sorted(self.directory.iterdir()):
      if TMP_MARK in p.name and p.name.split(".")[0] not in {
          str(s) for s in self._in_flight}:
        shutil.rmtree(p, ignore_errors=True)
        out.append(p)
    return out

  def all_steps(self) -> list[int]:
    """Complete steps on disk, ascending; warns once about skipped entries."""
    if not self.directory.is_dir():
      return []
    steps = []
    for p in sorted(self.directory.iterdir()):
      name, why = p.name, None
      if STEP_RE.fullmatch(name) and p.is_dir():
        if is_complete_step_dir(p):
          steps.append(int(name))
          continue
        why = (f"incomplete checkpoint (no committed {COMMIT_FILE} or missing"
               " items; an interrupted save, a partial copy or a step being"
               " deleted)")
      elif TMP_MARK in name:
        if name.split(".")[0] in {str(s) for s in self._in_flight}:
          continue  # our own save in progress
        why = "uncommitted Orbax temporary dir (interrupted or ongoing save)"
      elif name in ORBAX_ROOT_ENTRIES or ASIDE_MARK in name:
        continue  # Orbax's metadata; steps set aside (already reported)
      else:
        why = "not a checkpoint step"
      if str(p) not in self._warned:
        self._warned.add(str(p))
        warnings.warn(f"checkpoints: skipped {p}: {why}", stacklevel=2)
    return sorted(steps)

  def latest_step(self) -> int | None:
    """Newest complete step on disk, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _resolve(self, step: int | None) -> tuple[int, Path]:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
      step = steps[-1]
    path = self.directory / str(step)
    if step not in steps:
      raise ValueError(
          f"step dir {path} is not a complete checkpoint (complete steps:"
          f" {steps}); remove it or restore an earlier step")
    return step, path

  def _restore(self, step: int, path: Path, **items: Any) -> Any:
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointRestoreError(
          f"failed to restore checkpoint step dir {path}"
          f" ({type(e).__name__}: {' '.join(str(e).split())[:300]}). If it"
          " is corrupt, remove it or restore"
          " an earlier step; if opt_state_template differs from the saved"
          " meta-optimizer state, pass a matching one.") from e

  @staticmethod
  def _check(tree: Any, digest: str, what: str, path: Path) -> None:
    if _digest(tree) != digest:
      raise CorruptCheckpointError(
          path, f"{what} does not match its stored digest")

  def restore_lopt(self, step: int | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns ``(config, theta)`` of ``step`` (default: latest complete).

    theta is a dict of numpy arrays. Raises ValueError for an incomplete or
    corrupt step, FileNotFoundError if there is no checkpoint at all.
    """
    step, path = self._resolve(step)
    r = self._restore(step, path, lopt=ocp.args.StandardRestore(),
                      lopt_meta=ocp.args.JsonRestore())
    theta, meta = r["lopt"], r["lopt_meta"]
    self._check(theta, meta["theta_digest"], "theta", path)
    return meta["config"], theta

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON part of ``state`` (counters, RNG state, config, step)."""
    step, path = self._resolve(step)
    return self._restore(step, path,
                         state_meta=ocp.args.JsonRestore())["state_meta"]

  def restore(self, step: int | None = None, *,
              opt_state_template: Any) -> dict[str, Any]:
    """Restores everything needed to resume training.

    Args:
      step: the step to restore; default the latest complete one.
      opt_state_template: a meta-optimizer state (or abstract
        ``jax.ShapeDtypeStruct`` tree) of the saved structure, e.g.
        ``optax.adam(1e-3).init(theta)``; NamedTuples come back as such.

    Returns:
      Dict with keys theta, opt_state (numpy leaves), counters, rng_state,
      config and step.
    """
    step, path = self._resolve(step)
    try:
      _, theta = self.restore_lopt(step)
    except CheckpointRestoreError as e:  # needs no template: damaged files
      raise CorruptCheckpointError(
          path, f"its theta cannot be read ({e.__cause__!r:.200})") from e
    target = {"theta": theta, "opt_state": jax.tree.map(
        lambda x: np.zeros(x.shape, x.dtype), opt_state_template)}
    try:
      r = self._restore(step, path, state=ocp.args.StandardRestore(target),
                        state_meta=ocp.args.JsonRestore())
    except CheckpointRestoreError as e:
      # The template, or the files? Read the state as stored, untemplated:
      # if that fails too, the files are damaged.
      try:
        self._restore(step, path, state=ocp.args.StandardRestore(),
                      state_meta=ocp.args.JsonRestore())
      except CheckpointRestoreError:
        raise CorruptCheckpointError(
            path, f"its state cannot be read ({e.__cause__!r:.200})") from e
      raise
    state, meta = r["state"], r["state_meta"]
    self._check(state["theta"], meta["theta_digest"], "theta", path)
    self._check(state["opt_state"], meta["opt_state_digest"], "opt_state",
                path)
    return {"theta": state["theta"], "opt_state": state["opt_state"],
            "counters": meta["counters"], "rng_state": meta["rng_state"],
            "config": meta["config"], "step": step}

  def close(self) -> None:
    """Waits for pending saves and releases Orbax resources.

    Raises:
      CheckpointSaveError: a pending save failed. The temp dirs of failed
        saves are removed once Orbax's threads have stopped writing.
    """
    error = None
    if not self.read_only:
      try:
        self.wait()
      except CheckpointSaveError as e:
        error = e
    if self._mngr_obj is not None:
      try:
        self._mngr_obj.close()
      except Exception as e:  # pylint: disable=broad-except
        if not self._failed:
          raise
        error = error or self._save_failed(None, e)
    self._remove_tmp(self._failed)
    if error is not None:
      raise error

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
