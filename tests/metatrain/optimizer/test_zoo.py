"""The shipped learned optimizer (metatrain/pretrained/*.lopt): real file."""

import math

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


def test_shipped_optimizer_beats_adam_default_on_digits_mlp():
  """300 steps on scikit-learn's digits (an MLP never meta-trained on)."""
  problem = problems.build("digits_mlp", batch_size=64, eval_examples=500)
  config, theta, _ = metatrain.read_optimizer(metatrain.pretrained_path())
  kw = dict(steps=300, seed=0, chunk=300)
  learned = runner.run(problem, baselines.learned(config, theta), **kw)
  adam = runner.run(problem, baselines.baseline("adam", 1e-3), **kw)
  assert not learned.diverged and math.isfinite(learned.final_loss)
  assert learned.final_loss < adam.final_loss, (
      f"shipped optimizer {learned.final_loss:.4g} vs Adam(1e-3) "
      f"{adam.final_loss:.4g}")
