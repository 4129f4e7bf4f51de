"""Trains any problem with any optax transformation and records the run.

A ``Problem`` is pure functions plus a batch source; an ``Optimizer`` builds
an optax transformation from traced arguments (a learning rate, or a learned
optimizer's meta-parameters), so one compiled program serves every learning
rate of a baseline and every checkpoint of a learned optimizer.

Steps run in chunks: one jitted ``lax.scan`` over ``chunk`` steps, fed the
chunk's stacked batches. Small problems use long chunks (few dispatches);
ImageNet-sized ones use a chunk of 1. Everything a comparison needs is
recorded: the training-loss curve, optional exact (full-batch) losses, the
held-out metrics at ``eval_every`` steps, the wall time per step (compile
excluded) and whether the run diverged.

A run *diverges* when a loss stops being finite or exceeds
``divergence_factor * (first loss + 1)``. It stops there, and its final
loss is ``inf`` (``None`` in JSON): it loses every comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Hashable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain.training import programs

Batch = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
  """A training problem (identity-hashed: build each one once and reuse it).

  Attributes:
    name: display name.
    key: hashable identity of the problem's settings (compile cache key and
      record key); two problems with equal keys must be identical.
    init: ``key -> (params, aux)``; aux is carried state that is not
      optimized (BatchNorm statistics, a task's data).
    loss: ``(params, aux, batch, key) -> (loss, new_aux)``, the training
      (minibatch) loss; ``batch`` is None when ``batches`` is None.
    loss_and_grad: optional ``(params, aux, batch, key) -> ((loss,
      new_aux), grads)`` for gradients that are not the loss's (noisy or
      sparse gradient tasks); default ``jax.value_and_grad(loss)``.
    batches: ``seed -> iterator of numpy batches`` (None: the loss samples
      its own minibatches from ``key``).
    track: optional ``(params, aux) -> scalar`` computed at the start and
      after every step inside the scan, e.g. a small task's exact
      full-batch loss; the run then also reports the meta-objective
      ``mean_t log(f_t / f_0)`` (as meta-training defines it) as the
      metric ``meta_objective``.
    evaluate: optional ``(params, aux, batch) -> dict`` of held-out
      metrics, each a mean over the batch; its ``"loss"`` entry, if any, is
      the final loss, and an optional ``"weight"`` entry is the number of
      real examples in a padded batch.
    eval_batches: ``() -> iterable of batches`` for ``evaluate``; metrics
      are averaged over them, weighted by ``weight`` or the batch size.
    metric: the name of the headline held-out metric in ``evaluate``'s
      output (e.g. ``"accuracy"``), or "" for none.
    higher_is_better: direction of ``metric``.
  """

  name: str
  key: Hashable
  init: Callable[[jax.Array], tuple[Any, Any]]
  loss: Callable[..., tuple[jax.Array, Any]]
  batches: Callable[[int], Iterator[Batch]] | None = None
  loss_and_grad: Callable[..., tuple[tuple[jax.Array, Any], Any]] | None = None
  track: Callable[[Any, Any], jax.Array] | None = None
  evaluate: Callable[[Any, Any, Any], dict[str, jax.Array]] | None = None
  eval_batches: Callable[[], Iterable[Batch]] | None = None
  metric: str = ""
  higher_is_better: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
  """An optax transformation built from traced arguments.

  Attributes:
    name: ``"adam"``, ``"learned"``, ...
    family: hashable compile key: programs are shared by optimizers of one
      family (e.g. every Adam learning rate, every checkpoint of one HRNN
      config).
    build: ``args -> optax.GradientTransformation``, called inside jit.
    args: pytree of arrays (learning rate, theta).
    hparams: JSON-safe description for records.
  """

  name: str
  family: Hashable
  build: Callable[[Any], optax.GradientTransformation]
  args: Any
  hparams: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunResult:
  """What one training run recorded (JSON-safe via ``to_json``)."""

  steps: int  # steps asked for
  steps_done: int
  curve: list[tuple[int, float]]  # (step, training loss before the step)
  track_curve: list[tuple[int, float]]  # (step, tracked loss), from step 0
  eval_curve: list[tuple[int, dict[str, float]]]
  final_loss: float  # inf when diverged
  best_loss: float
  diverged: bool
  diverged_at: int | None
  metrics: dict[str, float]  # held-out metrics after the last step
  sec_per_step: float  # median over chunks, compile excluded
  compile_s: float
  wall_s: float

  def to_json(self, max_points: int = 200) -> dict[str, Any]:
    """A JSON-safe dict; curves thinned to ``max_points``, inf -> None."""
    return {
        "steps": self.steps, "steps_done": self.steps_done,
        "curve": _thin(self.curve, max_points),
        "track_curve": _thin(self.track_curve, max_points),
        "eval_curve": [[s, _clean(m)] for s, m in self.eval_curve],
        "final_loss": _num(self.final_loss),
        "best_loss": _num(self.best_loss),
        "diverged": self.diverged, "diverged_at": self.diverged_at,
        "metrics": _clean(self.metrics),
        "sec_per_step": self.sec_per_step, "compile_s": self.compile_s,
        "wall_s": self.wall_s,
    }


def _num(x: float) -> float | None:
  """Finite floats pass; inf/nan become None (JSON has no inf)."""
  x = float(x)
  return x if math.isfinite(x) else None


def _clean(d: dict[str, Any]) -> dict[str, float | None]:
  return {k: _num(v) for k, v in d.items()}


def _thin(curve: list, n: int) -> list:
  """At most ``n`` points, evenly spaced, always keeping the last."""
  if len(curve) <= n:
    return [[s, _num(v)] for s, v in curve]
  idx = np.unique(np.linspace(0, len(curve) - 1, n).round().astype(int))
  return [[curve[i][0], _num(curve[i][1])] for i in idx]


def _to_device(tree):
  return jax.tree_util.tree_map(jnp.asarray, tree)


# XLA options for programs that run once (a big model's initializers take
# a minute to compile at the default optimization level on a CPU).
_FAST_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}
_CACHE: dict[Hashable, Any] = {}  # (problem, family) -> jitted functions
_COMPILED: dict[Hashable, Any] = {}  # ... + chunk signature -> executable


def _programs(problem: Problem, opt: Optimizer):
  """The jitted (init, chunk, evaluate) functions of a (problem, family)."""
  key = (problem.key, opt.family)
  if key in _CACHE:
    return _CACHE[key]
  build = opt.build
  grad_fn = problem.loss_and_grad or jax.value_and_grad(problem.loss,
                                                         has_aux=True)

  # A model's initializers run once per run: cheap compilation matters more
  # than their speed. The optimizer's init is compiled normally (an HRNN
  # draws per-parameter learning rates, slow at the lowest level).
  init_problem = functools.partial(jax.jit, compiler_options=_FAST_COMPILE)(
      problem.init)
  init_opt = jax.jit(lambda params, args: build(args).init(params))

  def init(seed_key, args):
    params, aux = init_problem(seed_key)
    return params, aux, init_opt(params, args)

  @jax.jit
  def chunk(params, aux, opt_state, args, batches, keys):
    tx = build(args)

    def body(carry, xs):
      p, a, s = carry
      batch, k = xs
      (loss, a), g = grad_fn(p, a, batch, k)
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
      tracked = (problem.track(p, a) if problem.track is not None
                 else jnp.zeros((), jnp.float32))
      return (p, a, s), (loss.astype(jnp.float32),
                         tracked.astype(jnp.float32))

    carry = (params, aux, opt_state)
    if keys.shape[0] == 1:
      # No loop for one step: XLA:CPU runs convolutions inside a while
      # loop about 8x slower than outside one (jax 0.10).
      carry, out = body(carry, jax.tree_util.tree_map(lambda x: x[0],
                                                      (batches, keys)))
      losses, tracked = (x[None] for x in out)
    else:
      carry, (losses, tracked) = jax.lax.scan(body, carry, (batches, keys))
    return (*carry, losses, tracked)

  evaluate = (jax.jit(problem.evaluate) if problem.evaluate is not None
              else None)
  track = jax.jit(problem.track) if problem.track is not None else None
  _CACHE[key] = (init, chunk, evaluate, track)
  return _CACHE[key]


def clear_cache() -> None:
  """Forgets the jitted functions (e.g. after ``programs.clear``)."""
  _CACHE.clear()
  _COMPILED.clear()


def _signature(tree) -> tuple:
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return (str(treedef),) + tuple((np.shape(x), np.dtype(x.dtype).name)
                                 for x in leaves)


def _executable(fn, cache_key, call_args, fast_compile: bool = False
                ) -> tuple[Any, float]:
  """The compiled ``fn`` for these argument shapes, and its compile time
  (0 when it was compiled before)."""
  key = cache_key + (_signature(call_args[4]), _signature(call_args[5]),
                     fast_compile)
  if key in _COMPILED:
    return _COMPILED[key], 0.0
  t0 = time.perf_counter()
  exe = fn.lower(*call_args).compile(_FAST_COMPILE if fast_compile else None)
  _COMPILED[key] = exe
  return exe, time.perf_counter() - t0


def _stack(batches: list[Batch]) -> Batch:
  return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def _finite(x: float) -> bool:
  return bool(np.isfinite(x))


def meta_objective(losses: list[float]) -> float:
  """``mean_{t>=1} log(f_t / (f_0 + 1e-6) + 1e-6)`` of a loss curve that
  starts at ``f_0``: meta-training's objective (lower is better)."""
  f = np.asarray(losses, np.float64)
  return float(np.mean(np.log(f[1:] / (f[0] + 1e-6) + 1e-6)))


def run(problem: Problem, opt: Optimizer, *, steps: int, seed: int,
        chunk: int = 50, eval_every: int = 0,
        divergence_factor: float = 1e3, fast_compile: bool = False,
        log: Callable[[str], None] | None = None) -> RunResult:
  """Trains ``problem`` with ``opt`` for ``steps`` steps from seed ``seed``.

  The problem instance, its minibatches and its per-step keys depend only
  on ``seed``, so every optimizer sees the same problem for the same seed.

  Args:
    problem: what to train.
    opt: how to train it.
    steps: optimizer steps.
    seed: problem seed.
    chunk: steps per jitted call (also the granularity of the divergence
      check); clipped to ``eval_every`` when that is set.
    eval_every: held-out evaluation period in steps (0: only at the end).
    divergence_factor: a loss above ``factor * (first loss + 1)`` diverged.
    fast_compile: compile the training step at XLA's lowest optimization
      level: much faster to compile, slower to run (smoke tests).
    log: receives a progress line per evaluation, for long runs.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  chunk = max(1, min(chunk, steps, eval_every or steps))
  if programs.note(("eval-run", problem.key, opt.family)):
    clear_cache()
  init, chunk_fn, evaluate, track = _programs(problem, opt)
  t_start = time.perf_counter()
  root = jax.random.PRNGKey(seed)
  k_init, k_steps = jax.random.split(root)
  args = _to_device(opt.args)
  params, aux, opt_state = init(k_init, args)
  batch_iter = problem.batches(seed) if problem.batches is not None else None
  curve, track_curve, eval_curve = [], [], []
  if track is not None:
    track_curve.append((0, float(track(params, aux))))
  times, compile_s = [], 0.0
  first = None
  diverged_at = None
  done = 0
  metrics: dict[str, float] = {}

  def do_eval(step):
    sums: dict[str, float] = {}
    count = 0
    for batch in problem.eval_batches():
      m = {k: float(v) for k, v in evaluate(params, aux, batch).items()}
      n = m.pop("weight", None)
      if n is None:
        n = len(jax.tree_util.tree_leaves(batch)[0])
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + n * v
      count += n
    m = {k: v / max(count, 1) for k, v in sums.items()}
    eval_curve.append((step, m))
    return m

  while done < steps:
    n = min(chunk, steps - done)
    keys = jax.vmap(lambda t: jax.random.fold_in(k_steps, t))(
        jnp.arange(done, done + n))
    batches = (_stack([next(batch_iter) for _ in range(n)])
               if batch_iter is not None else None)
    call_args = (params, aux, opt_state, args, batches, keys)
    exe, c_s = _executable(chunk_fn, (problem.key, opt.family), call_args,
                           fast_compile)
    compile_s += c_s
    t0 = time.perf_counter()
    params, aux, opt_state, losses, tracked = exe(*call_args)
    losses, tracked = np.asarray(losses), np.asarray(tracked)
    times.append((time.perf_counter() - t0) / n)
    for i in range(n):
      step, loss = done + i, float(losses[i])
      curve.append((step, loss))
      if problem.track is not None:
        track_curve.append((step + 1, float(tracked[i])))
      if first is None:  # the divergence reference: f_0 where tracked
        first = track_curve[0][1] if track_curve else loss
      watched = [loss] + ([float(tracked[i])] if problem.track else [])
      if diverged_at is None and any(
          not _finite(v) or v > divergence_factor * (abs(first) + 1.0)
          for v in watched):
        diverged_at = step
    done += n
    if diverged_at is not None:
      break
    if evaluate is not None and (done == steps or (
        eval_every and done % eval_every == 0)):
      metrics = do_eval(done)
      if log is not None:
        log(f"  {problem.name} {opt.name} seed {seed}: step {done}/{steps} "
            f"loss {curve[-1][1]:.4g} " + " ".join(
                f"{k} {v:.4g}" for k, v in metrics.items()))
      if "loss" in metrics and not _finite(metrics["loss"]):
        diverged_at = done
        break

  diverged = diverged_at is not None
  if diverged:
    final = math.inf
  elif "loss" in metrics:
    final = metrics["loss"]
  elif track_curve:
    final = track_curve[-1][1]
  else:  # mean training loss over the last tenth of the run
    tail = [v for _, v in curve[-max(1, len(curve) // 10):]]
    final = float(np.mean(tail))
  finite_losses = [v for _, v in (track_curve[1:] or curve) if _finite(v)]
  best = min(finite_losses) if finite_losses and not diverged else math.inf
  if track_curve and not diverged:
    metrics = dict(metrics, meta_objective=meta_objective(
        [v for _, v in track_curve]))
  if diverged:  # no held-out figure of a diverged run counts
    names = set(metrics) | ({problem.metric} if problem.metric else set())
    metrics = {k: math.nan for k in sorted(names)}
  later = times[1:] or times
  return RunResult(
      steps=steps, steps_done=done, curve=curve, track_curve=track_curve,
      eval_curve=eval_curve, final_loss=final, best_loss=best,
      diverged=diverged, diverged_at=diverged_at, metrics=metrics,
      sec_per_step=float(np.median(later)), compile_s=compile_s,
      wall_s=time.perf_counter() - t_start)
