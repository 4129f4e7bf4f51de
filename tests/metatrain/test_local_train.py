"""Single-process meta-training improves the meta-objective."""

import jax
import numpy as np

from metatrain import config as config_lib
from metatrain import local_train, unroll
from metatrain.tasks import TaskConfig

EVAL = [TaskConfig("quadratic", (("dim", 10), ("noise", 0.0))),
        TaskConfig("bowl", (("cond", 5.0), ("angle", 0.0), ("noise", 0.0)))]


def _meta_objective(theta, hcfg):
  vals = [unroll.evaluate(theta, jax.random.PRNGKey(123), task_config=c,
                          hcfg=hcfg, num_tasks=4, steps=20)[0] for c in EVAL]
  return float(np.mean([np.mean(np.asarray(v)) for v in vals]))


def test_short_meta_training_lowers_meta_objective():
  cfg = config_lib.load("tiny", [
      'tasks.families=["quadratic", "bowl"]', "meta_opt.learning_rate=0.03",
      "steps=25", "unroll.min_steps=10", "unroll.max_steps=10",
      "unroll.steps_mean=0", "seed=1"])
  lines = []
  trainer = local_train.train(cfg, log=lines.append)
  before = _meta_objective(local_train.MetaTrainer(cfg).theta, cfg.hrnn)
  after = _meta_objective(trainer.theta, cfg.hrnn)
  assert trainer.step == 25
  print(f"meta-objective before {before:.4f} after {after:.4f}")
  assert after < before - 0.03, (before, after)
  assert any("meta_loss" in l and "task-steps/s" in l for l in lines)
  assert trainer.counters["num_nonfinite"] == 0
  assert all(np.all(np.isfinite(np.asarray(x)))
             for x in jax.tree_util.tree_leaves(trainer.theta))


def test_meta_optimizer_choices():
  for name in ("adam", "rmsprop"):
    cfg = config_lib.load("tiny", [f"meta_opt.name={name}"])
    opt = local_train.meta_optimizer(cfg.meta_opt)
    theta = {"a": np.ones(3, np.float32)}
    st = opt.init(theta)
    upd, _ = opt.update({"a": np.array([np.inf, 1e9, -1.0], np.float32)},
                        st, theta)
    assert np.all(np.isfinite(np.asarray(upd["a"])))
