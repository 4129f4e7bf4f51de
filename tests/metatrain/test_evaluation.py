"""Held-out evaluation: every optimizer sees the same problems."""

import jax
import numpy as np

from metatrain import evaluation, hrnn, unroll
from metatrain.hrnn_config import HRNNConfig
from metatrain.tasks import TaskConfig, build_task

QUAD = TaskConfig("quadratic", (("dim", 4), ("noise", 0.0)))
KEY = jax.random.PRNGKey(7)


def _initial_losses(num_tasks):
  task = build_task(QUAD)
  task_keys, _ = unroll.problem_keys(KEY, num_tasks)
  return np.array([float(task.full_loss(*task.init(unroll.init_key(k))))
                   for k in task_keys])


def test_adam_and_hrnn_start_from_the_same_problems():
  f0 = _initial_losses(3)
  assert len(set(np.round(f0, 6))) == 3  # distinct instances
  adam0 = np.asarray(evaluation.adam_final_loss(
      0.0, KEY, task_config=QUAD, num_tasks=3, steps=5))
  np.testing.assert_allclose(adam0, f0, rtol=1e-6)  # lr 0: never moves
  hcfg = HRNNConfig()
  _, final = evaluation.hrnn_final_loss(
      hrnn.init_theta(jax.random.PRNGKey(0), hcfg), KEY, task_config=QUAD,
      hcfg=hcfg, num_tasks=3, steps=1)
  # The untrained HRNN's first step is tiny, so it ends next to f0.
  np.testing.assert_allclose(np.asarray(final), f0, rtol=1e-2)


def test_tuned_adam_returns_the_best_grid_point():
  lrs = (1e-4, 1e-2, 1e-1)
  loss, lr = evaluation.tuned_adam(KEY, QUAD, num_tasks=2, steps=50, lrs=lrs)
  per_lr = [float(np.mean(np.asarray(evaluation.adam_final_loss(
      x, KEY, task_config=QUAD, num_tasks=2, steps=50)))) for x in lrs]
  assert lr in lrs and loss == min(per_lr)
  assert loss < _initial_losses(2).mean()
