"""Inner task-steps per second with the meta-gradient vs a plain Adam unroll.

Usage:
  python benchmarks/metatrain_throughput.py [--config default] [--set k=v]
      [--groups 4] [--length 40] [--repeats 5]
  python benchmarks/metatrain_throughput.py --e2e [--minutes 15]
      [--warm-minutes 5] [--workers 1] [--config default] [--out DIR]
  python benchmarks/metatrain_throughput.py --widths 8,16,32 [--groups 6]
  python benchmarks/metatrain_throughput.py --profile [--seconds 75]

``--e2e`` runs ``lopt train`` itself for ``--minutes`` with an empty
compile cache, then ``--warm-minutes`` on the cache it filled, and prints
each run's time to its first meta-step, meta-steps per minute, task-steps/s
(``counters.json``'s ``task_steps`` over ``train_seconds``), compiles, and
the efficiency: that rate over the run's own compile-free rate (the workers
time every group call that compiled nothing: ``warm_task_steps`` over
``warm_ms``). ``--widths`` prints the compile-excluded rate of sampled
groups against the groups' width. ``--profile`` runs a worker's loop of
meta-gradient calls (groups resampled as in training) and prints the rate of
the calls that compiled nothing, per family.

The default mode:

Samples the same task groups (N vmapped copies of one config each) for both
measurements, in one run:
- HRNN: ``unroll.group_meta_grad``, i.e. one truncation of ``--length``
  inner steps with the HRNN and truncated BPTT back to theta (what meta-
  training does);
- Adam: a jitted ``optax.adam`` unroll of the same tasks, same length, no
  meta-gradient (what plain training of the same tasks costs).
- and, to split the ratio into its factors: ``adam+f`` (Adam plus the
  full-data loss after each step, which the meta-objective needs) and
  ``hrnn fwd`` (the truncation without the meta-gradient);
- the cheaper ways to get a meta-gradient: ``bptt mb`` (BPTT with
  ``unroll.meta_loss="minibatch"``: no extra full-data pass), ``pes`` and
  ``pes mb`` (``pes.pes_meta_grad`` with N/2 antithetic pairs, so as many
  particles as the group has tasks, forward only);
- ``hrnn mb``: the truncation forward with the minibatch meta-loss, under
  one theta: the HRNN's own unroll, the floor of any meta-gradient
  estimator that runs the HRNN on these tasks.
Compilation is excluded (one warm-up call each). Prints task-steps/s for
each (a PES particle's step is a task-step) and each meta-gradient's
time over Adam's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from metatrain import tasks
from metatrain.optimizer import hrnn
from metatrain.training import config as config_lib
from metatrain.training import pes, unroll


@functools.partial(jax.jit, static_argnames=("task_config", "length",
                                             "full_loss"))
def adam_unroll(params, data, keys, *, task_config, length, full_loss=False):
  """Plain Adam on a group of tasks (leading axis N), no meta-gradient;
  ``full_loss``: also the full-data loss after each step, as the
  meta-objective needs."""
  task = tasks.build_task(task_config)
  tx = optax.adam(1e-3)

  def one(p, d, k):
    def body(carry, t):
      p, s = carry
      loss, g = task.loss_and_grad(p, d, jax.random.fold_in(k, t))
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
      return (p, s), task.full_loss(p, d) if full_loss else loss
    (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), jnp.arange(length))
    return p, losses

  return jax.vmap(one)(params, data, keys)


@functools.partial(jax.jit, static_argnames=("task_config", "hcfg", "ucfg",
                                             "length"))
def hrnn_forward(theta, states, keys, *, task_config, hcfg, ucfg, length):
  """The meta-training truncation (HRNN steps and meta-loss terms) without
  the meta-gradient."""
  fn = functools.partial(unroll._truncation, task=tasks.build_task(task_config),  # pylint: disable=protected-access
                         hcfg=hcfg, ucfg=ucfg, scan_len=length)
  return jax.vmap(fn, in_axes=(None, 0, 0, None))(theta, states, keys,
                                                   length)[0]


def _time(fn, repeats):
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t0) / repeats


# --- End-to-end mode: `lopt train` itself, cold and then warm. -------------

def _train_once(cmd: list[str], env: dict, seconds: float, log_path: str):
  """Runs ``cmd`` (a ``lopt train``) for ``seconds``, then SIGINT; returns
  (seconds from launch to the first meta-step's line or None, exit code)."""
  t0 = time.time()
  first = None
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = t0 + seconds
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    interrupted = False
    while True:
      timeout = max(0.0, deadline - time.time()) if not interrupted else 5.0
      if sel.select(timeout):
        line = proc.stderr.readline()
        if not line:
          break
        log.write(f"{time.time() - t0:8.1f} {line}")
        log.flush()
        if first is None and re.match(r"\s*step\s+\d+/", line):
          first = time.time() - t0
      elif not interrupted and time.time() >= deadline:
        proc.send_signal(signal.SIGINT)
        interrupted = True
    rc = proc.wait()
  return first, rc


def _counters(workdir: str) -> dict:
  path = os.path.join(workdir, "counters.json")
  if not os.path.exists(path):
    raise SystemExit(f"{path} is missing: the run did not end cleanly (see "
                     f"{workdir}.log)")
  with open(path) as f:
    return json.load(f)


def _compile_free_rate(cfg, groups: int, seed: int) -> float:
  """Task-steps/s of meta-gradient calls on ``groups`` groups sampled as a
  worker samples them, each timed after a warm-up call of the same length
  and keys (compilation excluded)."""
  from metatrain.training import meta_step
  theta = hrnn.init_theta(jax.random.PRNGKey(cfg.seed), cfg.hrnn)
  rng = np.random.default_rng(seed)
  ens = cfg.tasks.ensemble()
  steps = seconds = 0.0
  for _ in range(groups):
    g = meta_step.TaskGroup.sample(rng, ens, cfg, theta)
    state = g.states
    r = copy.deepcopy(rng)
    jax.block_until_ready(g.meta_grad(theta, r, cfg)[0])  # compiles
    for _ in range(2):
      g.states, g.age, r = state, 0, copy.deepcopy(rng)
      t = time.perf_counter()
      grad, _, n = g.meta_grad(theta, r, cfg)
      jax.block_until_ready(grad)
      seconds += time.perf_counter() - t
      steps += n
    rng = r
  return steps / seconds


def widths(args) -> None:
  """Compile-excluded task-steps/s of the config's groups against their
  width: PES pairs per group (``meta_grad.pes_pairs``) or, for BPTT, tasks
  per group (``unroll.tasks_per_group``); the same sampled configs each."""
  base = config_lib.load(args.config, args.set)
  pes_groups = base.meta_grad.estimator == "pes"
  knob = "meta_grad.pes_pairs" if pes_groups else "unroll.tasks_per_group"
  print(f"{knob:>24} {'members':>8} {'task-steps/s':>13} {'x first':>8}")
  first = None
  for w in args.widths:
    cfg = config_lib.load(args.config, list(args.set) + [f"{knob}={w}"])
    rate = _compile_free_rate(cfg, args.groups, args.seed)
    first = first or rate
    print(f"{w:>24} {2 * w if pes_groups else w:>8} {rate:>13,.0f} "
          f"{rate / first:>8.2f}", flush=True)


def profile(args) -> None:
  """Meta-gradient calls of groups sampled and resampled as a worker does,
  for ``--seconds``, on the persistent compile cache of the config: the
  compile-free rate of the real mix, and its time per family."""
  import collections  # pylint: disable=import-outside-toplevel
  from metatrain.training import meta_step, programs  # pylint: disable=import-outside-toplevel
  cfg = config_lib.load(args.config, args.set)
  programs.enable_persistent_cache(cfg.compile_cache_dir)
  theta = jax.device_put(hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn),
                         jax.devices()[0])
  ens, rng = cfg.tasks.ensemble(), np.random.default_rng(args.seed)
  groups = [meta_step.TaskGroup.sample(rng, ens, cfg, theta)
            for _ in range(cfg.tasks.num_groups)]
  secs, calls, steps = (collections.Counter() for _ in range(3))
  # Runs for ``--seconds``, and on until every group made a warm call: on a
  # slow machine the first calls may all compile, and a rate needs warm ones.
  t_end, other = time.time() + args.seconds, 0.0
  warm: set[int] = set()
  while time.time() < t_end or len(warm) < len(groups):
    for i, g in enumerate(groups):
      if g.age >= cfg.tasks.resample_every:
        groups[i] = g = meta_step.TaskGroup.sample(rng, ens, cfg, theta)
      before, t = programs.compile_counts(), time.perf_counter()
      grad, _, n = g.meta_grad(theta, rng, cfg)
      jax.block_until_ready(grad)
      dt = time.perf_counter() - t
      if programs.compile_counts() != before:  # compiled or loaded
        other += dt
        continue
      warm.add(i)
      fam = g.bucket.family
      secs[fam] += dt
      calls[fam] += 1
      steps[fam] += n
  tot = sum(secs.values())
  print(f"compile-free rate of the mix: {sum(steps.values()) / tot:,.0f} "
        f"task-steps/s over {tot:.0f} s of warm calls ({other:.0f} s of "
        f"calls that compiled or loaded a program)")
  print(f"{'family':<18} {'calls':>6} {'seconds':>8} {'share':>6} "
        f"{'task-steps/s':>13} {'ms/call':>8}")
  for fam in sorted(secs, key=lambda f: -secs[f]):
    print(f"{fam:<18} {calls[fam]:>6} {secs[fam]:>8.1f} "
          f"{secs[fam] / tot:>6.0%} {steps[fam] / secs[fam]:>13,.0f} "
          f"{1000 * secs[fam] / calls[fam]:>8.0f}")


def end_to_end(args) -> None:
  """``lopt train`` for ``--minutes`` cold (empty compile cache), then
  ``--warm-minutes`` warm (the cache the cold run filled)."""
  out = args.out or tempfile.mkdtemp(prefix="lopt-e2e-")
  os.makedirs(out, exist_ok=True)
  cache = os.path.join(out, "jax-cache")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
  rows = []
  for label, minutes in (("cold", args.minutes), ("warm", args.warm_minutes)):
    if minutes <= 0:
      continue
    workdir = os.path.join(out, label)
    cmd = [sys.executable, "-m", "infra.cli", "train", "--config",
           args.config, "--workers", str(args.workers), "--workdir", workdir,
           "--steps", "1000000"]
    for s in args.set:
      cmd += ["--set", s]
    print(f"{label}: {' '.join(cmd[2:])} for {minutes:g} min", flush=True)
    first, rc = _train_once(cmd, env, 60 * minutes, workdir + ".log")
    c = _counters(workdir)
    rows.append((label, minutes, first, rc, c))
  print(f"\n{'run':<5} {'min':>5} {'first step s':>12} {'meta-steps':>10} "
        f"{'steps/min':>9} {'task-steps':>11} {'train s':>8} "
        f"{'task-steps/s':>12} {'compile-free':>12} {'efficiency':>10} "
        f"{'compiles':>8}")
  for label, minutes, first, rc, c in rows:
    secs = float(c.get("train_seconds", 0)) or float("nan")
    ts = float(c.get("task_steps", 0))
    warm_s = float(c.get("warm_ms", 0)) / 1000 or float("nan")
    rate = float(c.get("warm_task_steps", 0)) / warm_s
    print(f"{label:<5} {minutes:>5g} "
          f"{(f'{first:.1f}' if first is not None else '-'):>12} "
          f"{c['step']:>10} {60 * c['step'] / secs:>9.1f} {ts:>11,.0f} "
          f"{secs:>8.0f} {ts / secs:>12,.0f} {rate:>12,.0f} "
          f"{ts / secs / rate:>10.2f} {c.get('compiles', '?'):>8}")
  print(f"(compile-free: the run's own rate over the group calls that "
        f"compiled nothing, from counters.json's warm_task_steps/warm_ms; "
        f"efficiency: task-steps/s over it; first step: seconds from launch "
        f"to the first meta-step's line; workdirs and logs in {out})")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="default")
  ap.add_argument("--set", action="append", default=[])
  ap.add_argument("--groups", type=int, default=6)
  ap.add_argument("--length", type=int, default=40)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--e2e", action="store_true",
                  help="end-to-end: run `lopt train` cold, then warm")
  ap.add_argument("--minutes", type=float, default=15.0)
  ap.add_argument("--warm-minutes", type=float, default=5.0)
  ap.add_argument("--workers", type=int, default=1)
  ap.add_argument("--out", default="", help="e2e workdirs (default: a "
                  "new temp dir)")
  ap.add_argument("--widths", type=lambda v: [int(x) for x in v.split(",")],
                  default=None, help="e.g. 8,16,32: task-steps/s against "
                  "the groups' width (PES pairs, or BPTT tasks per group)")
  ap.add_argument("--profile", action="store_true",
                  help="the compile-free rate of the real mix, per family")
  ap.add_argument("--seconds", type=float, default=75.0)
  args = ap.parse_args()
  if args.profile:
    profile(args)
    return
  if args.e2e:
    end_to_end(args)
    return
  if args.widths:
    widths(args)
    return
  cfg = config_lib.load(args.config, args.set)
  ucfg = cfg.unroll
  n = ucfg.tasks_per_group
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg.hrnn)
  ens = cfg.tasks.ensemble()
  rng = np.random.default_rng(args.seed)
  ucfg_mb = dataclasses.replace(ucfg, meta_loss="minibatch")
  pairs = max(1, n // 2)
  grads = ["hrnn+metagrad", "bptt mb", "pes", "pes mb"]
  cols = grads + ["hrnn fwd", "hrnn mb", "adam+f", "adam"]
  ratios = grads + ["hrnn mb"]
  count = {c: n for c in cols}
  count["pes"] = count["pes mb"] = 2 * pairs
  short = {"hrnn+metagrad": "bptt", "bptt mb": "bpttmb", "pes": "pes",
           "pes mb": "pesmb", "hrnn mb": "floor"}
  print(f"{'task group':<40} " + " ".join(f"{c:>13}" for c in cols) +
        " " + " ".join(f"{short[c] + '/A':>9}" for c in ratios))
  tot = dict.fromkeys(cols, 0.0)
  for _ in range(args.groups):
    tc = ens.sample(rng)
    states = unroll.init_group_states(theta, jax.random.PRNGKey(1),
                                      task_config=tc, hcfg=cfg.hrnn,
                                      ucfg=ucfg, num_tasks=n)
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    kw = dict(task_config=tc, length=args.length)
    pstate = {u: pes.init_pes_states(theta, jax.random.PRNGKey(1),
                                     task_config=tc, hcfg=cfg.hrnn, ucfg=u,
                                     num_pairs=pairs) for u in (ucfg, ucfg_mb)}
    pkeys = jax.random.split(jax.random.PRNGKey(2), pairs)

    def bptt_grad(u):
      return unroll.group_meta_grad(
          theta, states, keys, args.length, task_config=tc, hcfg=cfg.hrnn,
          ucfg=u, scan_len=args.length)[0]

    def pes_grad(u):
      return pes.pes_meta_grad(
          theta, pstate[u], pkeys, jax.random.PRNGKey(3), args.length,
          cfg.meta_grad.pes_std, task_config=tc, hcfg=cfg.hrnn, ucfg=u,
          scan_len=args.length)[0]

    fns = {
        "hrnn+metagrad": lambda: bptt_grad(ucfg),
        "bptt mb": lambda: bptt_grad(ucfg_mb),
        "pes": lambda: pes_grad(ucfg),
        "pes mb": lambda: pes_grad(ucfg_mb),
        "hrnn fwd": lambda: hrnn_forward(theta, states, keys, hcfg=cfg.hrnn,
                                         ucfg=ucfg, **kw),
        "hrnn mb": lambda: hrnn_forward(theta, states, keys, hcfg=cfg.hrnn,
                                        ucfg=ucfg_mb, **kw),
        "adam+f": lambda: adam_unroll(states.params, states.data, keys,
                                      full_loss=True, **kw),
        "adam": lambda: adam_unroll(states.params, states.data, keys, **kw),
    }
    # Seconds per task-step, so that columns of other widths compare.
    t = {c: _time(fns[c], args.repeats) / (count[c] * args.length)
         for c in cols}
    for c in cols:
      tot[c] += t[c] / args.groups
    print(f"{tc.name[:40]:<40} " + " ".join(f"{1 / t[c]:>13,.0f}"
                                            for c in cols) + " " +
          " ".join(f"{t[c] / t['adam']:>9.1f}" for c in ratios), flush=True)
  print(f"{'total':<40} " + " ".join(f"{1 / tot[c]:>13,.0f}" for c in cols)
        + " " + " ".join(f"{tot[c] / tot['adam']:>9.1f}" for c in ratios))
  h, a = tot["hrnn+metagrad"], tot["adam"]
  print(f"task-steps/s: HRNN with meta-gradient {1 / h:,.0f}, plain "
        f"Adam {1 / a:,.0f}; Adam is {h / a:.1f}x faster "
        f"({n} tasks per group, {args.length} steps, backend "
        f"{jax.default_backend()}). Where the factor comes from: the "
        f"meta-objective's full-data loss per step x{tot['adam+f'] / a:.2f}, "
        f"the HRNN step in place of Adam's x{tot['hrnn fwd'] / tot['adam+f']:.2f}"
        f", the meta-gradient (BPTT) x{h / tot['hrnn fwd']:.2f}. Cheaper "
        f"meta-gradients, time per task-step over Adam's: " +
        ", ".join(f"{c} {tot[c] / a:.1f}x" for c in grads[1:]) +
        f" (PES: {pairs} antithetic pairs, std {cfg.meta_grad.pes_std}). "
        f"Floor: the HRNN's forward unroll with the minibatch meta-loss "
        f"alone takes {tot['hrnn mb'] / a:.1f}x Adam's time per task-step.")

if __name__ == "__main__":
  main()
