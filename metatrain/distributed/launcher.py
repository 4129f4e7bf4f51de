"""``lopt train`` on Ray: start or join Ray, run workers and the learner.

Without ``--address`` a local Ray instance is started, sized to this machine
(dashboard off unless asked for, and then bound to 127.0.0.1; Ray's token
authentication is left on). With ``--address auto`` it joins a running
cluster. The learner resumes from the newest complete checkpoint in
``workdir/checkpoints``; Ctrl-C or SIGTERM saves a final checkpoint and shuts
Ray down cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from typing import Any

import jax
import numpy as np

from metatrain import files
from metatrain.distributed import checkpoint_pin, checkpoints, learner
from metatrain.distributed.workdir import Workdir
from metatrain.distributed.worker import UnrollWorker, actor_options
from metatrain.optimizer import hrnn
from metatrain.training import meta_step, programs
from metatrain.training import config as config_lib
from metatrain.training.config import TrainConfig


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def init_ray(address: str | None, dashboard: bool = False) -> bool:
  """Starts or joins Ray; returns True if this call connected to it."""
  import ray  # pylint: disable=import-outside-toplevel
  if ray.is_initialized():
    return False
  env = {"env_vars": {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}}
  if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):  # infra/cli.py
    env["env_vars"]["GLIBC_TUNABLES"] = os.environ["GLIBC_TUNABLES"]
  if address:
    ray.init(address=address, runtime_env=env, log_to_driver=True)
  else:
    # WARNING: no "Started a local Ray instance" line; lopt says what it
    # started. (infra/cli.py sets RAY_AUTH_MODE=token for local starts.)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=dashboard,
             dashboard_host="127.0.0.1", runtime_env=env,
             log_to_driver=True, logging_level=logging.WARNING)
  return True


def theta_digest(theta) -> str:
  """Short SHA-256 of theta's bytes, to show resumes are bit-exact."""
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for path, x in sorted(jax.tree_util.tree_leaves_with_path(theta),
                        key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
  return h.hexdigest()[:16]


def _ray_nodes() -> list[dict]:
  if "ray" not in sys.modules:
    return []
  import ray  # pylint: disable=import-outside-toplevel
  return ray.nodes() if ray.is_initialized() else []


def hardware_info() -> dict[str, Any]:
  """The driver host and the Ray cluster's nodes (none without Ray), for
  provenance."""
  import platform  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f
                  if l.startswith("model name")), cpu)
  except OSError:
    pass
  nodes = [{"host": n.get("NodeManagerHostname", ""),
            "resources": {k: v for k, v in n.get("Resources", {}).items()
                          if k in ("CPU", "GPU", "TPU", "memory")}}
           for n in _ray_nodes() if n.get("Alive")]
  return {"driver_host": socket.gethostname(), "driver_cpu": cpu,
          "jax_backend": jax.default_backend(),
          "driver_devices": sorted({d.device_kind for d in jax.devices()}),
          "nodes": nodes}


def record_session(workdir: str, start_step: int) -> None:
  """Appends this session (command, time, hardware) to run_info.json."""
  path = Workdir(workdir).run_info
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, ValueError):
    info = {"sessions": []}
  info["sessions"].append({
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "command": " ".join(["lopt", *sys.argv[1:]]),
      "start_step": start_step, "hardware": hardware_info()})
  files.write_atomic(path, json.dumps(info, indent=2))


def resume(ckpt: checkpoints.Checkpointer, opt_state_template: Any,
           log=_log) -> dict[str, Any] | None:
  """The newest good checkpoint, setting aside what cannot be resumed.

  Only for the trainer holding the workdir lock. Incomplete numbered step
  dirs (an interrupted save) and steps whose arrays fail their digests
  are renamed ``<step>.corrupt-<time>`` with one warning line each, and the
  next older step is tried; Orbax temporary dirs of saves that can never
  finish are removed. Any other restore failure (e.g. a meta-optimizer
  config that no longer matches the saved state) raises: that checkpoint
  is fine, the command is not.
  """
  for step, path in ckpt.set_aside_incomplete():
    log(f"lopt: warning: checkpoint step {step} is incomplete (an "
        f"interrupted save); set aside as {path}")
  for path in ckpt.remove_stale_tmp():
    log(f"lopt: note: removed the partial save {path} of an earlier run")
  for step in reversed(ckpt.all_steps()):
    try:
      return ckpt.restore(step, opt_state_template=opt_state_template)
    except checkpoints.CorruptCheckpointError as e:
      path = ckpt.set_aside(step)
      log(f"lopt: warning: checkpoint step {step} is corrupt ({e.reason}); "
          f"set aside as {path}; trying the step before it")
  return None


def _duration(seconds: float) -> str:
  """``1h05m``, ``12m``, ``40s``: the time left at the rate so far."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


class ResourceError(ValueError):
  """The workers asked for do not fit the local Ray instance."""


def check_fit(cfg: TrainConfig, n_workers: int, resources: dict[str, float],
              local: bool, log=_log) -> None:
  """Refuses (local Ray) or warns about (a cluster) workers that cannot fit.

  On the local instance that ``lopt train`` started, actors that do not fit
  would wait forever; a cluster may still grow (an autoscaler), so there
  it is a warning.
  """
  need = {"CPU": n_workers * cfg.worker.num_cpus +
                 cfg.evaluator.count * cfg.evaluator.num_cpus,
          "GPU": n_workers * cfg.worker.num_gpus +
                 cfg.evaluator.count * cfg.evaluator.num_gpus,
          "TPU": n_workers * cfg.worker.tpus}
  short = {k: (v, resources.get(k, 0)) for k, v in need.items()
           if v > resources.get(k, 0) + 1e-9}
  if not short:
    return
  what = ", ".join(f"{v:g} {k} (it has {have:g})" for k, (v, have) in
                   short.items())
  msg = (f"{n_workers} worker{'s' if n_workers != 1 else ''} (worker."
         f"num_cpus={cfg.worker.num_cpus:g} each) and {cfg.evaluator.count} "
         f"evaluator(s) need {what}")
  if local:
    fit = int((resources.get("CPU", 0) - cfg.evaluator.count *
               cfg.evaluator.num_cpus) // max(cfg.worker.num_cpus, 1e-9))
    raise ResourceError(f"{msg} on this machine's Ray; use --workers "
                        f"{max(fit, 1)} or fewer (or omit --workers)")
  log(f"lopt: warning: {msg} in the cluster now; the rest start when nodes "
      "join")


def _wait_started(ray, refs, every_s: float = 30.0) -> list[int]:
  """The workers' pids, saying every ``every_s`` how many have started."""
  t0 = time.time()
  while True:
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=every_s)
    if len(ready) == len(refs):
      return ray.get(refs)
    _log(f"lopt train: {len(ready)} of {len(refs)} workers started after "
         f"{time.time() - t0:.0f}s (waiting for resources)")


def default_num_workers(cfg: TrainConfig) -> int:
  """Workers that fit the cluster, leaving one CPU for the learner."""
  import ray  # pylint: disable=import-outside-toplevel
  res = ray.cluster_resources()
  if cfg.worker.num_gpus:
    return max(1, int(res.get("GPU", 0) // cfg.worker.num_gpus))
  if cfg.worker.tpus:
    return max(1, int(res.get("TPU", 0) // cfg.worker.tpus))
  cpus = (res.get("CPU", 1) - 1 -
          cfg.evaluator.count * cfg.evaluator.num_cpus)
  return max(1, int(cpus // cfg.worker.num_cpus))


class _TB:
  """TensorBoard scalars (tensorboardX), flushed every step."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.w = SummaryWriter(logdir)

  def step(self, step: int, metrics: dict[str, Any], counters: dict) -> None:
    for k in ("meta_loss", "grad_norm", "staleness", "task_steps_per_s",
              "task_nonfinite", "task_diverged"):
      if k in metrics and np.isfinite(metrics[k]):
        self.w.add_scalar(f"train/{k}", metrics[k], step)
    for k in ("stale", "duplicate", "nonfinite", "worker_failures",
              "worker_timeouts", "worker_errors", "evaluator_errors",
              "skipped_updates", "compiles", "cache_hits", "task_steps"):
      self.w.add_scalar(f"counters/{k}", counters.get(k, 0), step)
    for wid, v in metrics.get("per_worker_steps_per_s", {}).items():
      self.w.add_scalar(f"workers/{wid}/task_steps_per_s", v, step)
    self.w.flush()

  def close(self) -> None:
    self.w.close()


def run(cfg: TrainConfig, args, evaluator_pool=None,
        best_checkpoint: checkpoint_pin.Pick | None = None) -> int:
  """Runs meta-training (distributed, or in one process); returns a process
  exit code.

  ``args.workers == 0`` runs the same learner, checkpoints, TensorBoard,
  counters and resume with one in-process ``UnrollWorker`` and no Ray.
  ``evaluator_pool``: the class that runs ``cfg.evaluator.count``
  evaluator actors beside training (``evaluators.actor.EvaluatorPool``,
  passed in by the command line: evaluators is a layer above this one).
  ``best_checkpoint``: chooses the best fully evaluated step among those
  on disk (``evaluators.best.BestCheckpoint``); before each save that step
  is pinned, so retention keeps it (``checkpoint_pin.keep_best``).
  """
  workdir = args.workdir
  local = args.workers == 0
  steps_target = args.steps if args.steps is not None else cfg.steps
  opt = meta_step.meta_optimizer(cfg.meta_opt)
  if local:
    if cfg.evaluator.count:
      raise ValueError("evaluators need Ray workers (not --workers 0)")
    ray, started_ray, n_workers = None, False, 1
  else:
    import ray  # pylint: disable=import-outside-toplevel
    started_ray = init_ray(args.address, getattr(args, "dashboard", False))
    n_workers = args.workers or default_num_workers(cfg)
    try:
      check_fit(cfg, n_workers, ray.cluster_resources(), local=started_ray,
                log=_log)
    except ResourceError:
      if started_ray:
        ray.shutdown()
      raise
  with warnings.catch_warnings():
    # resume() below reports (and sets aside) what the reader would warn of.
    warnings.simplefilter("ignore", UserWarning)
    ckpt = checkpoints.Checkpointer(
        workdir,
        checkpoints.CheckpointConfig(keep_last=cfg.learner.keep_last,
                                     keep_every=cfg.learner.keep_every,
                                     save_every=cfg.learner.save_every))
  theta = hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn)
  state = learner.LearnerState(theta, opt.init(theta), 0, {})
  rng = np.random.default_rng(cfg.seed)
  r = resume(ckpt, state.opt_state)
  if r is not None:
    state = learner.LearnerState(r["theta"], r["opt_state"], r["step"],
                                 dict(r["counters"]))
    rng.bit_generator.state = r["rng_state"]
    _log(f"resumed from {workdir}/checkpoints step {r['step']} (theta "
         f"{theta_digest(state.theta)})")
  if state.step >= steps_target:
    _log(f"already at step {state.step} >= --steps {steps_target}; nothing "
         "to do")
    ckpt.close()
    if started_ray:
      ray.shutdown()
    return 0

  stop = {"flag": False}

  def _handler(signum, _frame):
    _log(f"received {signal.Signals(signum).name}: saving a final "
         "checkpoint and shutting down")
    stop["flag"] = True

  old = {s: signal.signal(s, _handler) for s in (signal.SIGINT,
                                                 signal.SIGTERM)}
  cfg_dict = config_lib.to_dict(cfg)
  if (freed := programs.trim_cache(cfg.compile_cache_dir)):  # no workers yet
    _log(f"lopt train: trimmed the compile cache by {freed / 2**20:.0f} MiB")
  seed = int(rng.integers(2**31))
  if local:
    workers, calls = [UnrollWorker(0, cfg_dict, seed)], learner.LocalCalls()
    pids = [os.getpid()]
  else:
    actor = ray.remote(UnrollWorker).options(**actor_options(cfg.worker))
    workers, calls = [actor.remote(i, cfg_dict, seed)
                      for i in range(n_workers)], None
    pids = _wait_started(ray, [w.pid.remote() for w in workers])
  with open(Workdir(workdir).workers, "w") as f:
    json.dump({"pids": pids}, f)
  batch = cfg.learner.grads_per_update or n_workers
  if (advice := programs.map_limit_advice()) is not None:
    _log(advice)
  who = ("1 in-process worker" if local else
         f"{n_workers} worker{'s' if n_workers != 1 else ''}")
  _log(f"lopt train: {who} x "
       f"{cfg.tasks.num_groups} groups x "
       f"{cfg.unroll.tasks_per_group} tasks, batch {batch}, steps "
       f"{state.step} -> {steps_target}, workdir {workdir}")
  tb = _TB(Workdir(workdir).tb)
  t0, start_step = time.time(), state.step
  cpu0 = time.process_time()
  base = dict(state.counters)  # restored counters of earlier sessions
  record_session(workdir, start_step)
  evals = None
  if cfg.evaluator.count:
    if evaluator_pool is None:
      raise ValueError("evaluator.count > 0 needs an evaluator_pool class "
                       "(lopt train passes evaluators.actor.EvaluatorPool)")
    evals = evaluator_pool(workdir, cfg.evaluator.suite,
                          list(cfg.evaluator.suite_overrides),
                          cfg.evaluator.count,
                          num_cpus=cfg.evaluator.num_cpus,
                          num_gpus=cfg.evaluator.num_gpus,
                          poll_s=cfg.evaluator.poll_s,
                          nice=cfg.evaluator.nice)
    _log(f"lopt train: {cfg.evaluator.count} evaluator(s) on suite "
         f"{cfg.evaluator.suite}; records in {Workdir(workdir).records}")

  def keep_best() -> None:
    if best_checkpoint is None:
      return
    try:
      step = checkpoint_pin.keep_best(ckpt, best_checkpoint)
    except Exception as e:  # pylint: disable=broad-except
      _log(f"lopt: warning: could not keep the best evaluated checkpoint "
           f"({type(e).__name__}: {e}); retention goes on without it")
      return
    if step is not None:
      _log(f"lopt train: step {step} is the best evaluated checkpoint so "
           "far; kept whatever the retention")

  def save(st: learner.LearnerState, force: bool = False) -> None:
    if force or st.step % cfg.learner.save_every == 0:
      keep_best()
    ckpt.save(st.step, theta=st.theta, opt_state=st.opt_state,
              counters=st.counters, rng_state=rng.bit_generator.state,
              config=cfg_dict, force=force)

  def sync_session_counters(st: learner.LearnerState) -> None:
    st.counters["train_seconds"] = round(
        base.get("train_seconds", 0) + time.time() - t0, 1)
    # CPU time of this process, all threads: all of meta-training's compute
    # with --workers 0 (Ray workers' time is their own).
    st.counters["train_cpu_seconds"] = round(
        base.get("train_cpu_seconds", 0) + time.process_time() - cpu0, 1)
    if evals is not None:
      for k, v in evals.counters.items():
        st.counters[k] = base.get(k, 0) + v

  def on_step(st: learner.LearnerState, m: dict) -> None:
    if evals is not None:
      evals.poll()
    sync_session_counters(st)
    tb.step(st.step, m, st.counters)
    if (st.step % cfg.log_every == 0 or st.step == steps_target or
        st.step - start_step <= 3):
      rate = (st.step - start_step) / max(time.time() - t0, 1e-9)
      eta = _duration((steps_target - st.step) / max(rate, 1e-9))
      _log(f"step {st.step:>6}/{steps_target}  eta {eta}  meta_loss "
           f"{m['meta_loss']:+.4f}  |g| {m['grad_norm']:.3g}  stale "
           f"{m['staleness']:.1f}  task-steps/s {m['task_steps_per_s']:,.0f}"
           f"  steps/s {rate:.2f}  dropped stale/dup/nan "
           f"{st.counters.get('stale', 0)}/{st.counters.get('duplicate', 0)}"
           f"/{st.counters.get('nonfinite', 0)}  restarts "
           f"{st.counters.get('worker_failures', 0)}  timeouts "
           f"{st.counters.get('worker_timeouts', 0)}  errors "
           f"{st.counters.get('worker_errors', 0)}  compiles "
           f"{st.counters.get('compiles', 0)}")
    save(st)

  save_failed = False
  try:
    state = learner.run(state, workers, opt, steps=steps_target,
                        max_staleness=cfg.learner.max_staleness,
                        batch_size=batch, on_step=on_step,
                        should_stop=lambda: stop["flag"],
                        call_timeout_s=cfg.worker.call_timeout_s,
                        max_failures=(cfg.worker.max_restarts + 1
                                      if cfg.worker.max_restarts >= 0 else 0),
                        calls=calls)
    sync_session_counters(state)
    save(state, force=True)
    ckpt.wait()
    _log(f"done at step {state.step}; checkpoints in {workdir}/checkpoints")
    if evals is not None and not stop["flag"]:
      evals.finish(state.step, cfg.evaluator.final_timeout_s,
                   should_stop=lambda: stop["flag"])
      keep_best()  # the pin a resumed run keeps, now with the final step
      sync_session_counters(state)
  except checkpoints.CheckpointSaveError:
    save_failed = True
    raise
  finally:
    # Every part is shut down even if one fails; a save error raised by
    # close() (an async save that failed) goes up unless one already does.
    close_error = None
    try:
      ckpt.close()
    except checkpoints.CheckpointSaveError as e:
      close_error = e
    tb.close()
    if evals is not None:
      evals.shutdown()
    for w in workers if not local else ():
      ray.kill(w, no_restart=True)
    if started_ray:
      ray.shutdown()  # with --address this only disconnects the driver
    for s, h in old.items():
      signal.signal(s, h)
    if close_error is not None and not save_failed:
      raise close_error
  with open(Workdir(workdir).counters, "w") as f:
    json.dump({"step": state.step, **state.counters}, f, indent=2)
  return 130 if stop["flag"] and state.step < steps_target else 0
