"""Meta-training configuration: frozen dataclasses, named presets, overrides.

A config is built from a preset name (``default``, ``tiny``) or a JSON file,
then ``--set a.b=c`` overrides are applied with type checking. The resolved
config is written to ``workdir/config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.optimizer.structs import from_dict
from metatrain.training.unroll import UnrollConfig


@dataclasses.dataclass(frozen=True)
class MetaOptConfig:
  """The meta-optimizer applied to theta."""

  name: str = "adam"  # "adam" or "rmsprop" (the paper's: lr 1e-6, decay 0.9)
  learning_rate: float = 3e-3
  rmsprop_decay: float = 0.9
  clip_value: float = 1e4  # elementwise clip of the meta-gradient (reference)
  clip_norm: float = 1.0  # then a global-norm clip; 0 disables

  def __post_init__(self):
    if self.name not in ("adam", "rmsprop"):
      raise ValueError(f"meta_opt.name must be 'adam' or 'rmsprop', got "
                       f"{self.name!r}")
    if not self.learning_rate > 0:
      raise ValueError("meta_opt.learning_rate must be > 0")


ESTIMATORS = ("bptt", "pes", "mix")


@dataclasses.dataclass(frozen=True)
class MetaGradConfig:
  """How task groups estimate the meta-gradient (metatrain/pes.py).

  "bptt": truncated backprop through time; "pes": Persistent Evolution
  Strategies (forward only, unbiased over truncations); "mix": each sampled
  group uses PES with probability ``mix_pes_fraction``, else BPTT.
  Published PES learned-optimizer runs used std 0.01, 8-16 pairs per task
  family and truncations of 50 steps.
  """

  estimator: str = "bptt"
  pes_std: float = 0.01  # perturbation stdev per meta-parameter
  pes_pairs: int = 8  # antithetic pairs (2x particles) per PES group
  mix_pes_fraction: float = 0.5  # "mix": chance that a new group uses PES
  # How a PES pair's two losses weigh its perturbation: "raw" (their
  # difference: the unbiased estimate), "sign" (only its sign, as VeLO:
  # blind to each task's loss scale) or "normalized" (the difference over
  # the RMS of its group's differences: blind to the task's scale, keeping
  # the pairs' relative sizes); ``pes.pes_meta_grad``.
  pes_loss_diff: str = "raw"
  # Scale each task group's meta-gradient (one truncation, BPTT or PES) to
  # unit global norm before groups are averaged, so that every group's
  # direction counts the same. Off, a group whose BPTT gradient explodes
  # (norms up to 2e12 in run bp) is the whole averaged gradient, which the
  # meta-optimizer's norm clip then only shrinks; on, it is blind to each
  # task's loss and gradient scale, as sign PES is within a group. The
  # logged |g| is then the norm of the groups' mean unit vector: 1 when
  # they agree, about 1/sqrt(groups) when their directions are unrelated.
  normalize_groups: bool = False
  # Meta-train only these top-level entries of theta (e.g. ["w_lr",
  # "w_update", "shortcut"], the readouts: at the Adam start the only
  # entries with a meta-gradient); the others stay at their start. PES
  # perturbs only these, so its noise is not spread over the ~8,300 entries
  # whose true gradient is zero (benchmarks/README.md, "Where the
  # meta-gradient is"); BPTT gradients are zeroed outside them. Empty (the
  # default): all of theta. ``TrainConfig`` checks the names.
  train_only: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "train_only",
                       tuple(str(k) for k in self.train_only))
    if len(set(self.train_only)) != len(self.train_only):
      raise ValueError(f"meta_grad.train_only names an entry twice: "
                       f"{list(self.train_only)}")
    if self.pes_loss_diff not in ("raw", "sign", "normalized"):
      raise ValueError(f"meta_grad.pes_loss_diff must be 'raw', 'sign' or "
                       f"'normalized', "
                       f"got {self.pes_loss_diff!r}")
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"meta_grad.estimator must be one of "
                       f"{', '.join(ESTIMATORS)}, got {self.estimator!r}")
    if not (self.pes_std > 0 and self.pes_std < float("inf")):
      raise ValueError(f"meta_grad.pes_std must be a finite number > 0, got "
                       f"{self.pes_std!r}")
    if self.pes_pairs < 1:
      raise ValueError(f"meta_grad.pes_pairs must be >= 1, got "
                       f"{self.pes_pairs!r}")
    if not 0.0 <= self.mix_pes_fraction <= 1.0:
      raise ValueError(f"meta_grad.mix_pes_fraction must be in [0, 1], got "
                       f"{self.mix_pes_fraction!r}")


@dataclasses.dataclass(frozen=True)
class TasksConfig:
  """Which tasks are meta-trained on, and how groups are formed."""

  num_groups: int = 4  # task groups (configs) per meta-step
  resample_every: int = 25  # meta-steps before a group gets a new config
  include_mlps: bool = True  # the paper's text excludes NNs; its code didn't
  families: tuple[str, ...] = ()  # restrict to these families (equal weight)
  # Sampling weights, "family=weight", replacing that family's weight in the
  # mix chosen above (default or ``families``, MLPs or not); 0 drops it, and
  # a family not in the mix stays out. E.g. ["mlp=3", "fn2d=1"].
  # ``lopt tasks`` shows the resulting mix.
  weights: tuple[str, ...] = ()

  def __post_init__(self):
    if self.num_groups < 1 or self.resample_every < 1:
      raise ValueError("tasks.num_groups and tasks.resample_every must be >= 1")
    from metatrain.tasks import FAMILIES  # pylint: disable=import-outside-toplevel
    unknown = [f for f in self.families if f not in FAMILIES]
    if unknown:
      raise ValueError(f"tasks.families: unknown family {unknown[0]!r} "
                       f"(known: {', '.join(sorted(FAMILIES))})")
    self.ensemble()  # bad weights fail here, with the config

  def ensemble(self):
    """The ``metatrain.tasks.Ensemble`` these settings sample from."""
    from metatrain import tasks  # pylint: disable=import-outside-toplevel
    weights = {}
    for entry in self.weights:
      name, sep, value = str(entry).partition("=")
      try:
        w = float(value) if sep else float("nan")
      except ValueError:
        w = float("nan")
      if not w >= 0 or w == float("inf"):
        raise ValueError(f"tasks.weights: {entry!r} is not 'family=weight' "
                         "with a finite weight >= 0, e.g. 'mlp=3'")
      if name not in tasks.FAMILIES:
        raise ValueError(f"tasks.weights: unknown family {name!r} (known: "
                         f"{', '.join(sorted(tasks.FAMILIES))})")
      if name in weights:
        raise ValueError(f"tasks.weights: {name!r} is weighted twice")
      weights[name] = w
    return tasks.ensemble_for(self.include_mlps, self.families, weights)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
  """Resources and behaviour of each unroll worker."""

  num_cpus: float = 1.0
  num_gpus: float = 0.0  # 1 on GPU hosts
  tpus: int = 0  # chips per host on TPU VMs, e.g. 4 (resources={"TPU": 4})
  truncations_per_call: int = 1  # K truncations per group per compute()
  # Ray restarts of each worker; -1 = unlimited (long runs outlive several
  # XLA:CPU stalls). A worker down for 300 s in a row is dropped anyway.
  max_restarts: int = -1
  # One group truncation (compile included) running longer than this is an
  # XLA:CPU stall: the worker exits and Ray restarts it (0: never).
  stall_timeout_s: float = 300.0
  # A compute() call pending longer than this (a frozen or unreachable
  # worker) makes the learner kill the actor so Ray restarts it (0: never).
  call_timeout_s: float = 900.0

  def __post_init__(self):
    if (self.call_timeout_s < 0 or self.stall_timeout_s < 0 or
        self.max_restarts < -1):
      raise ValueError("worker.call_timeout_s/stall_timeout_s must be >= 0 "
                       "(0: never) and worker.max_restarts >= -1 "
                       "(-1: unlimited)")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """How the central learner aggregates asynchronous meta-gradients."""

  grads_per_update: int = 0  # MetaGrads averaged per update; 0 = #workers
  max_staleness: int = 4  # drop grads computed on theta older than this
  keep_last: int = 3  # checkpoints: the last K steps ...
  # ... plus one every M steps (0: none). Every save by default: a checkpoint
  # is ~0.3 MB, and the evaluators' best (often an early one: short-horizon
  # bias) must still exist for `lopt export --best` to pick it.
  keep_every: int = 25
  save_every: int = 25  # meta-steps between checkpoints

  def __post_init__(self):
    if self.grads_per_update < 0 or self.max_staleness < 0:
      raise ValueError("learner.grads_per_update/max_staleness must be >= 0")
    if self.save_every < 1 or self.keep_last < 1:
      raise ValueError("learner.save_every and keep_last must be >= 1")


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
  """Evaluator actors run beside training (``lopt train --evaluators N``)."""

  count: int = 0  # evaluator actors; --evaluators N sets it
  suite: str = "small"  # see evaluators/suites.py
  suite_overrides: tuple[str, ...] = ()  # e.g. ["steps=100", "seeds=1"]
  num_cpus: float = 1.0
  num_gpus: float = 0.0
  poll_s: float = 30.0  # seconds between checkpoint polls
  # The evaluator processes' nice level: on a machine that training fills,
  # they take CPU only when it leaves some (0: training's priority).
  nice: int = 10
  # After the last meta-step, wait this long for the evaluators to finish
  # the final checkpoint (Ctrl-C does not wait).
  final_timeout_s: float = 3600.0

  def __post_init__(self):
    if not 0 <= self.nice <= 19:
      raise ValueError("evaluator.nice must be in 0..19 (0: the same "
                       "priority as training)")
    if self.count < 0 or self.poll_s <= 0 or self.final_timeout_s < 0:
      raise ValueError("evaluator.count and final_timeout_s must be >= 0 and "
                       "evaluator.poll_s > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a meta-training run needs."""

  hrnn: HRNNConfig = HRNNConfig()
  unroll: UnrollConfig = UnrollConfig()
  meta_opt: MetaOptConfig = MetaOptConfig()
  meta_grad: MetaGradConfig = MetaGradConfig()
  tasks: TasksConfig = TasksConfig()
  worker: WorkerConfig = WorkerConfig()
  learner: LearnerConfig = LearnerConfig()
  evaluator: EvaluatorConfig = EvaluatorConfig()
  seed: int = 0
  steps: int = 1000  # meta-steps
  log_every: int = 10
  # JAX's on-disk compile cache, shared by the workers, the evaluators and
  # later runs: "auto" (programs.default_cache_dir(): ~/.cache/lopt/jax-
  # <versions>, or $JAX_COMPILATION_CACHE_DIR), a directory, or "" (off).
  compile_cache_dir: str = "auto"
  # Single-process training (--workers 0) exits with code 3, naming the
  # group, when one meta-step runs longer than this (0: never).
  stall_timeout_s: float = 900.0

  def __post_init__(self):
    if self.meta_grad.train_only:
      known = theta_entries(self.hrnn)
      unknown = [k for k in self.meta_grad.train_only if k not in known]
      if unknown:
        raise ValueError(
            f"meta_grad.train_only: {unknown[0]!r} is not an entry of this "
            f"optimizer's theta (it has: {', '.join(known)})")


def theta_entries(hcfg: HRNNConfig) -> tuple[str, ...]:
  """The top-level entries of theta under ``hcfg``, as ``init_theta`` makes
  them (shapes only: nothing is computed)."""
  import jax  # pylint: disable=import-outside-toplevel
  from metatrain.optimizer import hrnn  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(lambda k: hrnn.init_theta(k, hcfg),
                          jax.random.PRNGKey(0))
  return tuple(shapes)


def _merge(base: dict, over: dict) -> dict:
  out = dict(base)
  for k, v in over.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(
        out.get(k), dict) else v
  return out


# The recipe of hrnn-v1 (benchmarks/runs.md, run pes8): PES meta-gradients,
# Adam 1e-3 on theta, the step-size head 10x faster, an ensemble weighted
# towards neural networks (55% mlp, logistic and matmul_algorithm), a
# checkpoint every 10 steps (the 1000-step validation peak is narrow and
# early, ~40 steps; checkpoints are ~0.3 MB; `lopt export --best`).
_V1 = {"meta_grad": {"estimator": "pes"},
       "meta_opt": {"learning_rate": 1e-3},
       "hrnn": {"lr_head_gain": 10.0},
       "tasks": {"weights": ["mlp=3", "logistic=3", "matmul_algorithm=1.5",
                             "fn2d=1", "quadratic=1.5", "bowl=1"]},
       "learner": {"save_every": 10, "keep_every": 10}}

# Issue 23's candidate recipe (benchmarks/runs.md, v2r; not shipped): v1 plus
# the real-image families (ReLU/GELU MLPs and tiny ConvNets on 8x8
# Fashion-MNIST and photo patches; needs the dataset), a fixed global step
# (the step's RMS is Adam's at the user's rate: meta-training learns where
# the step goes, the user sets its size), per-task rates log-uniform in
# [3e-4, 3e-2], tasks living 100-2,000 steps (log-uniform) from random
# offsets, sign-of-difference PES (blind to each task's loss scale), and
# Adam 3e-4 on theta (1e-3 drifted after ~1,000 meta-steps in session 28).
_V2 = _merge(_V1, {
    "meta_opt": {"learning_rate": 3e-4},
    "hrnn": {"global_step": "fixed"},
    "unroll": {"lr_range": [3e-4, 3e-2],
               "task_steps_range": [100.0, 2000.0]},
    "meta_grad": {"pes_loss_diff": "sign"},
    "tasks": {"weights": [*_V1["tasks"]["weights"], "image_mlp=2",
                          "image_conv=1.5"]}})

# hrnn-v2's recipe (benchmarks/runs.md, session 39): v1's, meta-training only
# the step-size readouts. The direction readout stays at its zero start, so
# the update is Adam's rescaled per parameter and over the run, by log-rates
# read out of the (untrained) RNNs' states. hrnn-v1's update is Adam's
# direction (cosine 0.95-0.99) with a step rising from 2.7x to 8x Adam's
# (benchmarks/step_profile.py), and its RNN corrections cost on the image
# tasks; this keeps the first part only.
_SCHEDULE = _merge(_V1, {"meta_grad": {
    "train_only": ["w_lr", "b_lr", "stepsize_offset"]}})

PRESETS: dict[str, dict[str, Any]] = {
    # The recipe of the shipped optimizer (metatrain.pretrained()): still
    # hrnn-v1's, since no v2 checkpoint beat it on validation (runs.md, v2r).
    "default": _V1,
    "v1": _V1,
    "v2": _V2,
    "schedule": _SCHEDULE,
    # Small enough for tests and smoke runs: a few seconds per meta-step.
    "tiny": {"unroll": {"tasks_per_group": 2, "min_steps": 10,
                        "max_steps": 10,
                        "truncations_mean": 3.0},
             "tasks": {"num_groups": 2, "resample_every": 1000,
                       "include_mlps": False},
             "steps": 20, "log_every": 5},
    # The 2017 reference's unroll lengths (slow on CPU).
    "paper": {"unroll": {"steps_mean": 200.0, "min_steps": 50,
                         "max_steps": 1600, "truncations_mean": 40.0},
              "meta_opt": {"name": "rmsprop", "learning_rate": 1e-6,
                           "clip_norm": 0.0},
              "hrnn": {"nominal_adam": False, "lr_correction_range": 0.0}},
}


def to_dict(cfg) -> dict[str, Any]:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def parse_override(item: str) -> tuple[list[str], Any]:
  """Parses ``a.b=value``; the value is JSON if it parses, else a string."""
  if "=" not in item:
    raise ValueError(f"--set {item!r}: expected key=value")
  key, raw = item.split("=", 1)
  try:
    value = json.loads(raw)
  except json.JSONDecodeError:
    value = raw
  return key.strip().split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> None:
  """Applies ``a.b=value`` overrides to a config dict in place; unknown keys
  raise ValueError naming them."""
  for item in overrides:
    path, value = parse_override(item)
    node = d
    for i, part in enumerate(path[:-1]):
      if not isinstance(node.get(part), dict):
        raise ValueError(f"unknown config key {'.'.join(path[:i + 1])}")
      node = node[part]
    if path[-1] not in node:
      raise ValueError(f"unknown config key {'.'.join(path)}")
    node[path[-1]] = value


def load(name_or_path: str = "default", overrides: list[str] = ()
         ) -> TrainConfig:
  """Resolves a preset name or JSON path plus ``--set`` overrides."""
  # A preset or file gives only the fields it changes: the rest are today's
  # defaults (never the legacy defaults of stored configs, see structs).
  if name_or_path in PRESETS:
    d = _merge(to_dict(TrainConfig()), PRESETS[name_or_path])
  elif os.path.exists(name_or_path):
    try:
      with open(name_or_path) as f:
        loaded = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"cannot read config {name_or_path}: {e}") from None
    d = _merge(to_dict(TrainConfig()), loaded)
  else:
    raise ValueError(f"unknown config {name_or_path!r}: not a preset "
                     f"({', '.join(PRESETS)}) nor an existing JSON file")
  apply_overrides(d, overrides)
  return from_dict(TrainConfig, d)
