"""The shipped learned optimizer (metatrain/pretrained/*.lopt): real file."""

import dataclasses
import math

import jax
import numpy as np
import optax
import pytest

import metatrain
from evaluators import baselines, problems, runner
from metatrain.training import config as config_lib


def test_shipped_optimizer_loads_with_its_provenance():
  assert "hrnn-v1" in metatrain.optimizer.zoo.available()
  tx = metatrain.pretrained()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  info = metatrain.pretrained_info()
  for key in ("name", "train_config", "meta_training", "evaluation",
              "selection"):
    assert key in info, f"metadata lacks {key!r}: {sorted(info)}"
  session = info["meta_training"]["sessions"][0]
  assert session["command"].startswith("lopt train")
  assert session["hardware"]["jax_backend"]
  assert info["meta_training"]["seconds"] > 0
  assert info["selection"]["split"] == "validation"
  assert metatrain.HRNNConfig.from_dict(
      info["train_config"]["hrnn"]) == metatrain.read_optimizer(
          metatrain.pretrained_path())[0]
  # `lopt train` with the default preset retrains what ships, but for the
  # truncation lengths: fixed at 40 steps since issue 22 (one program per
  # task bucket); hrnn-v1 had 10 + Exp(30) steps, capped at 320 (the same
  # mean).
  default = config_lib.to_dict(config_lib.load("default"))
  assert (metatrain.HRNNConfig.from_dict(default["hrnn"]) ==
          metatrain.HRNNConfig.from_dict(info["train_config"]["hrnn"]))
  # Fields added since (e.g. meta_grad.pes_loss_diff, unroll.lr_range) read
  # back as the defaults that reproduce hrnn-v1's behaviour.
  stored = config_lib.to_dict(config_lib.from_dict(
      config_lib.TrainConfig, info["train_config"]))
  for part in ("meta_opt", "meta_grad", "tasks"):
    assert default[part] == stored[part], part
  lengths = ("steps_mean", "min_steps", "max_steps")
  shipped = dict(stored["unroll"])
  assert {k: shipped.pop(k) for k in lengths} == {
      "steps_mean": 30.0, "min_steps": 10, "max_steps": 320}
  assert {k: v for k, v in default["unroll"].items()
          if k not in lengths} == shipped
  assert [default["unroll"][k] for k in lengths] == [0.0, 40, 40]
  with pytest.raises(ValueError, match="no shipped optimizer 'nope'"):
    metatrain.pretrained("nope")


def test_hrnn_v2_is_the_schedule_recipe_with_adams_direction():
  """hrnn-v2 trained only the step-size readouts: every other entry of its
  theta is its run's untrained start (rebuilt here from the run's seed, to
  the rounding of the tests' XLA flags), its direction readout is zero (so
  its direction is Adam's), and it was chosen on validation."""
  assert {"hrnn-v1", "hrnn-v2"} <= set(metatrain.optimizer.zoo.available())
  config, theta, info = metatrain.read_optimizer(
      metatrain.pretrained_path("hrnn-v2"))
  sched = config_lib.load("schedule")
  assert info["train_config"]["meta_grad"]["train_only"] == list(
      sched.meta_grad.train_only)
  assert dataclasses.replace(config, init_lr=sched.hrnn.init_lr) == sched.hrnn
  assert info["selection"]["split"] == "validation"
  start = metatrain.init_theta(
      jax.random.PRNGKey(info["train_config"]["seed"]), config)
  trained = set(sched.meta_grad.train_only)
  for name in theta:
    moved = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        theta[name], start[name])))
    if name in trained:
      assert moved > 1e-3, name
    else:
      assert moved < 1e-6, (name, moved)
  assert not np.any(np.asarray(theta["w_update"]))


@pytest.mark.parametrize("name", ["hrnn-v1", "hrnn-v2"])
def test_shipped_optimizer_beats_adam_default_on_digits_mlp(name):
  """300 steps on scikit-learn's digits (an MLP never meta-trained on)."""
  problem = problems.build("digits_mlp", batch_size=64, eval_examples=500)
  config, theta, _ = metatrain.read_optimizer(metatrain.pretrained_path(name))
  kw = dict(steps=300, seed=0, chunk=300)
  learned = runner.run(problem, baselines.learned(config, theta), **kw)
  adam = runner.run(problem, baselines.baseline("adam", 1e-3), **kw)
  assert not learned.diverged and math.isfinite(learned.final_loss)
  assert learned.final_loss < adam.final_loss, (
      f"shipped optimizer {learned.final_loss:.4g} vs Adam(1e-3) "
      f"{adam.final_loss:.4g}")
