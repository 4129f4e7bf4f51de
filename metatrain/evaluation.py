"""Held-out evaluation: the HRNN and tuned optax baselines on the same tasks.

Every function draws the same problem instances and minibatch keys for the
same ``key``, so optimizers are compared on identical problems.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatrain import programs, unroll
from metatrain.hrnn_config import HRNNConfig
from metatrain.tasks import TaskConfig, build_task

ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def hrnn_final_loss(theta, key, *, task_config: TaskConfig,
                    hcfg: HRNNConfig, num_tasks: int = 4, steps: int = 200):
  """(meta-objective, final full loss), each (num_tasks,), for the HRNN."""
  programs.note(("evaluate", task_config, hcfg, num_tasks, steps))
  return unroll.evaluate(theta, key, task_config=task_config, hcfg=hcfg,
                         num_tasks=num_tasks, steps=steps)


@functools.partial(jax.jit, static_argnames=("task_config", "num_tasks",
                                             "steps"))
def adam_final_loss(lr, key, *, task_config: TaskConfig, num_tasks: int = 4,
                    steps: int = 200):
  """Final full loss of Adam(lr), (num_tasks,), on ``evaluate``'s problems."""
  task = build_task(task_config)
  tx = optax.adam(lr)

  def one(task_key, run_key):
    params, data = task.init(unroll.init_key(task_key))
    k_steps = unroll.steps_key(run_key)

    def body(carry, t):
      p, s = carry
      _, g = task.loss_and_grad(p, data, jax.random.fold_in(k_steps, t))
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (params, tx.init(params)),
                             jnp.arange(steps))
    f = task.full_loss(p, data)
    return jnp.where(jnp.isfinite(f), f, jnp.inf)

  return jax.vmap(one)(*unroll.problem_keys(key, num_tasks))


def tuned_adam(key, task_config: TaskConfig, num_tasks: int = 4,
               steps: int = 200, lrs=ADAM_LRS) -> tuple[float, float]:
  """Best mean final loss over the lr grid: returns (loss, best lr)."""
  programs.note(("adam", task_config, num_tasks, steps))
  results = [(float(np.mean(np.asarray(adam_final_loss(
      lr, key, task_config=task_config, num_tasks=num_tasks, steps=steps)))),
              lr) for lr in lrs]
  return min(results)
