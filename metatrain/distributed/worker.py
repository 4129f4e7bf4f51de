"""The UnrollWorker: a Ray actor that computes meta-gradients.

It holds several vmapped task groups and keeps their unroll states across
calls. Each ``compute`` receives theta (sent as an ObjectRef, which Ray
resolves) with its step, runs K truncations per group and returns a
``MetaGrad``. Groups are spread round-robin over the host's local devices,
so a host with several accelerators uses them all.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any

import jax
import numpy as np

from metatrain.training import config as config_lib
from metatrain.training import meta_step, programs


@dataclasses.dataclass(frozen=True)
class MetaGrad:
  """One worker's averaged meta-gradient and what produced it."""

  worker_id: int
  seq: int  # per-worker sequence number, unique across actor restarts
  theta_step: int  # the learner step of the theta it was computed with
  grads: Any  # pytree of numpy arrays, theta's structure
  metrics: dict[str, float]


def actor_options(wcfg: config_lib.WorkerConfig) -> dict[str, Any]:
  """Ray actor options declaring the worker's resources."""
  opts: dict[str, Any] = {"num_cpus": wcfg.num_cpus,
                          "max_restarts": wcfg.max_restarts,
                          "max_task_retries": 0}
  if wcfg.num_gpus:
    opts["num_gpus"] = wcfg.num_gpus
  if wcfg.tpus:
    opts["resources"] = {"TPU": wcfg.tpus}
  return opts


def _restarted_by_ray() -> bool:
  """True in an actor incarnation that Ray restarted after a failure."""
  try:
    import ray  # pylint: disable=import-outside-toplevel
    if not ray.is_initialized():
      return False
    with warnings.catch_warnings():
      # Ray 2.60's own property reads its deprecated ``actor_id`` and warns
      # "Use get_actor_id() instead" in every worker; nothing of ours to fix.
      warnings.simplefilter("ignore", DeprecationWarning)
      return bool(ray.get_runtime_context().was_current_actor_reconstructed)
  except Exception:  # pylint: disable=broad-except
    return False  # not inside a Ray actor


class GroupError(RuntimeError):
  """An exception raised while a worker ran one task group.

  The worker has already dropped the group, so its next call samples a new
  one; the learner counts the error and carries on.
  """


class UnrollWorker:
  """Computes meta-gradients for the learner (wrap with ``ray.remote``)."""

  def __init__(self, worker_id: int, train_config: dict, seed: int):
    self.worker_id = worker_id
    self.cfg = config_lib.from_dict(config_lib.TrainConfig, train_config)
    programs.enable_persistent_cache(self.cfg.compile_cache_dir)
    self._compiles = programs.compile_counts()  # counted per call from here
    self.ensemble = self.cfg.tasks.ensemble()
    self.devices = jax.local_devices()
    self.groups: list[meta_step.TaskGroup] = []
    # Sequence numbers must stay unique when Ray restarts this actor (which
    # re-runs __init__), so each incarnation starts from its start time.
    start_ms = time.time_ns() // 1_000_000
    self.seq = start_ms << 20
    # A restarted worker samples new task groups: replaying the groups of an
    # incarnation that hung or crashed could fail the same way again. The
    # first incarnation's groups stay reproducible.
    salt = [start_ms] if _restarted_by_ray() else []
    self.rng = np.random.default_rng([seed, worker_id, *salt])
    self.running = "starting"
    # A group truncation (compile included) stuck past the limit ends this
    # process; Ray restarts the actor and the learner carries on.
    self.watchdog = meta_step.StallWatchdog(
        self.cfg.worker.stall_timeout_s,
        lambda: f"worker {worker_id} on {self.running}",
        lambda m: print(m, flush=True))
    self.watchdog.stop()  # armed only while compute() runs

  def _device(self, i: int):
    """The local device that group ``i`` runs on (round-robin)."""
    return self.devices[i % len(self.devices)]

  def _new_group(self, i: int, theta) -> meta_step.TaskGroup:
    return meta_step.TaskGroup.sample(self.rng, self.ensemble, self.cfg,
                                        jax.device_put(theta, self._device(i)))

  def _ensure_groups(self, theta) -> None:
    """Samples missing groups, and groups dropped after an error."""
    for i in range(self.cfg.tasks.num_groups):
      if i == len(self.groups):
        self.groups.append(None)
      if self.groups[i] is None:
        self.groups[i] = self._new_group(i, theta)

  def compute(self, theta, theta_step: int) -> MetaGrad:
    """Runs K truncations on every group with ``theta``."""
    t0 = time.perf_counter()
    self.running = "sampling its task groups"
    self.watchdog.beat()
    self._ensure_groups(theta)
    results, task_steps = [], 0
    warm_steps, warm_s = 0, 0.0  # group calls that compiled nothing
    for _ in range(self.cfg.worker.truncations_per_call):
      for i, g in enumerate(self.groups):
        if g.age >= self.cfg.tasks.resample_every:
          self.running = f"sampling group {i + 1}"
          self.watchdog.beat()
          self.groups[i] = g = self._new_group(i, theta)
        th = jax.device_put(theta, self._device(i))
        t_g = time.perf_counter()
        c_g = programs.compile_counts()
        self.running = f"group {i + 1} {g.config.name} (age {g.age})"
        self.watchdog.beat()
        try:
          grad, metrics, n = g.meta_grad(th, self.rng, self.cfg)
        except Exception as e:  # pylint: disable=broad-except
          # A Python or XLA error in one group must not end the run: drop
          # the group (the next call resamples it) and tell the learner.
          self.groups[i] = None
          self.watchdog.stop()
          raise GroupError(f"worker {self.worker_id} group {i + 1} "
                           f"{g.config.name}: {type(e).__name__}: {e}"
                           ) from e
        grad = jax.device_get(grad)  # waits for the result
        now_c = programs.compile_counts()
        compiled = now_c["compiles"] - c_g["compiles"]
        if now_c == c_g:  # neither compiled nor loaded a program
          warm_steps += n
          warm_s += time.perf_counter() - t_g
        if compiled:  # shows life while programs compile (warm-up only)
          print(f"worker {self.worker_id}: group {i + 1}/{len(self.groups)} "
                f"{g.config.name} (bucket {g.bucket.name}): "
                f"{time.perf_counter() - t_g:.1f}s incl. {compiled} "
                f"compile{'s' if compiled != 1 else ''}", flush=True)
        results.append((grad, metrics))
        task_steps += n
    grad, m = meta_step.average_grads(results)
    self.watchdog.stop()  # idle between calls is not a stall
    dt = time.perf_counter() - t0
    now = programs.compile_counts()
    m.update(task_steps=float(task_steps), seconds=dt,
             warm_task_steps=float(warm_steps),
             warm_ms=float(round(1000 * warm_s)),
             task_steps_per_s=task_steps / dt,
             compiles=float(now["compiles"] - self._compiles["compiles"]),
             cache_hits=float(now["cache_hits"] -
                              self._compiles["cache_hits"]))
    self._compiles = now
    out = MetaGrad(self.worker_id, self.seq, int(theta_step),
                   jax.tree_util.tree_map(np.asarray, grad), m)
    self.seq += 1
    return out

  def pid(self) -> int:
    return os.getpid()
