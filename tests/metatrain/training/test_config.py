"""One config loader: a dict means the same optimizer on every path."""

import dataclasses
import json

import pytest

from metatrain.optimizer import hrnn_config
from metatrain.optimizer.hrnn_config import HRNNConfig
from metatrain.training import config as config_lib


def _stored_without(*fields):
  """A complete stored TrainConfig dict, as an old checkpoint holds it."""
  d = config_lib.to_dict(config_lib.load("tiny"))
  for f in fields:
    del d["hrnn"][f]
  return d


@pytest.mark.parametrize("field", sorted(hrnn_config.LEGACY_DEFAULTS))
def test_a_stored_config_without_a_new_field_loads_the_same_on_both_paths(
    field):
  d = _stored_without(field)
  via_train = config_lib.from_dict(config_lib.TrainConfig, d).hrnn
  via_hrnn = HRNNConfig.from_dict(d["hrnn"])
  assert via_train == via_hrnn
  assert getattr(via_hrnn, field) == hrnn_config.LEGACY_DEFAULTS[field]
  assert getattr(HRNNConfig(), field) != hrnn_config.LEGACY_DEFAULTS[field]


def test_presets_and_partial_files_take_todays_defaults(tmp_path):
  assert config_lib.load("default").hrnn.nominal_adam is True
  assert config_lib.load("default").hrnn.lr_head_gain == 10.0
  # default is the shipped optimizer's recipe, hrnn-v1's; v2 is issue 23's
  # candidate: the user sets the global step, sign PES, per-task rates,
  # task lives, images.
  assert config_lib.load("default") == config_lib.load("v1")
  v2 = config_lib.load("v2")
  assert v2.hrnn.global_step == "fixed"
  assert v2.meta_grad.pes_loss_diff == "sign"
  assert v2.unroll.lr_range == (3e-4, 3e-2)
  assert v2.unroll.task_steps_range == (100.0, 2000.0)
  assert {"image_mlp", "image_conv"} <= set(dict(
      v2.tasks.ensemble().weights))
  v1 = config_lib.load("v1")  # hrnn-v1's recipe
  assert v1.hrnn.global_step == "learned" and not v1.unroll.lr_range
  assert "image_mlp" not in dict(v1.tasks.ensemble().weights)
  # hrnn-v2's recipe: v1's, training only the step-size readouts.
  sched = config_lib.load("schedule")
  assert sched.meta_grad.train_only == ("w_lr", "b_lr", "stepsize_offset")
  assert sched == dataclasses.replace(v1, meta_grad=sched.meta_grad)
  assert dataclasses.replace(sched.meta_grad, train_only=()) == v1.meta_grad
  assert config_lib.load("tiny").hrnn == HRNNConfig()
  assert config_lib.load("paper").hrnn.nominal_adam is False
  path = tmp_path / "mine.json"
  path.write_text(json.dumps({"hrnn": {"lr_head_gain": 5.0}}))
  cfg = config_lib.load(str(path))
  assert cfg.hrnn == HRNNConfig(lr_head_gain=5.0)


def test_the_resolved_config_round_trips_exactly():
  for name in config_lib.PRESETS:
    cfg = config_lib.load(name)
    assert config_lib.from_dict(config_lib.TrainConfig,
                                config_lib.to_dict(cfg)) == cfg
    assert HRNNConfig.from_dict(cfg.hrnn.to_dict()) == cfg.hrnn


@pytest.mark.parametrize("d,needle", [
    ({"hrnn": {"bogus": 1}}, "unknown config key config.hrnn.bogus"),
    ({"hrnn": {"param_units": "ten"}}, "config.hrnn.param_units must be an "
     "integer"),
    ({"hrnn": {"use_attention": 1}}, "config.hrnn.use_attention must be "
     "true/false"),
    ({"hrnn": {"init_lr_range": 3}}, "config.hrnn.init_lr_range must be a "
     "list"),
])
def test_bad_hrnn_fields_name_their_path(d, needle):
  with pytest.raises(ValueError, match=needle):
    config_lib.from_dict(config_lib.TrainConfig, d)


@pytest.mark.parametrize("override", ["unroll.truncations_mean=1e400",
                                      "unroll.truncations_mean=-1e999",
                                      "meta_opt.learning_rate=NaN",
                                      "hrnn.init_lr_range=[1e-6, Infinity]"])
def test_non_finite_numbers_are_refused_where_json_could_not_store_them(
    override, tmp_path, capsys):
  from infra import cli  # pylint: disable=import-outside-toplevel
  key = override.split("=")[0]
  with pytest.raises(ValueError, match=f"config.{key} must be a finite "
                     "number"):
    config_lib.load("tiny", [override])
  wd = tmp_path / "w"
  assert cli.main(["train", "--workdir", str(wd), "--set", override]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "must be a finite number" in err[0]
  assert not wd.exists()  # no config.json with Infinity in it


def test_pes_loss_diff_takes_its_three_modes_and_names_them_otherwise():
  for mode in ("raw", "sign", "normalized"):
    cfg = config_lib.load("v2", [f"meta_grad.pes_loss_diff={mode}"])
    assert cfg.meta_grad.pes_loss_diff == mode
  with pytest.raises(ValueError, match="'raw', 'sign' or 'normalized'"):
    config_lib.load("v2", ["meta_grad.pes_loss_diff=rank"])
