"""The shipped learned optimizer (metatrain/pretrained/*.lopt): real file."""

import math

import optax
import pytest

import metatrain
from evaluators import baselines, problems, runner
from metatrain import config as config_lib


def test_shipped_optimizer_loads_with_its_provenance():
  assert "hrnn-v1" in metatrain.zoo.available()
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
  assert info["train_config"]["hrnn"] == metatrain.read_optimizer(
      metatrain.pretrained_path())[0].to_dict()
  # `lopt train` with the default preset retrains what ships.
  default = config_lib.to_dict(config_lib.load("default"))
  for part in ("hrnn", "unroll", "meta_opt", "meta_grad", "tasks"):
    assert default[part] == info["train_config"][part], part
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
