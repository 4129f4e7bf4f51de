"""Save/load of the .lopt optimizer file, and its clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import metatrain
from metatrain.optimizer import export, hrnn

CFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(1), CFG)


def _updates(tx, steps=3):
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(())}
  loss = lambda p: jnp.sum(p["w"] ** 2) + p["b"] ** 2
  state = tx.init(params)
  out = []
  for _ in range(steps):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(u)
  return out


def _write(path, obj):
  path.write_bytes(serialization.msgpack_serialize(obj))
  return path


def _valid_blob():
  return {"format": "lopt", "version": 1,
          "config": json.dumps(CFG.to_dict()),
          "theta": jax.tree_util.tree_map(np.asarray, THETA),
          "metadata": json.dumps({"steps": 3})}


def test_round_trip_gives_identical_updates(tmp_path):
  path = tmp_path / "opt.lopt"
  metatrain.save_optimizer(path, CFG, THETA, {"steps": 12, "note": "x"})
  config, theta, meta = metatrain.read_optimizer(path)
  assert config == CFG
  assert meta == {"steps": 12, "note": "x"}
  a = _updates(metatrain.hrnn_optax(CFG, THETA))
  b = _updates(metatrain.load_optimizer(path))
  for ua, ub in zip(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(ua), jax.tree_util.tree_leaves(ub)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_file_is_plain_msgpack_not_pickle(tmp_path):
  path = tmp_path / "opt.lopt"
  metatrain.save_optimizer(path, CFG, THETA)
  raw = serialization.msgpack_restore(path.read_bytes())
  assert raw["format"] == "lopt" and raw["version"] == export.VERSION
  assert b"pickle" not in path.read_bytes()[:64]


def test_ablation_config_round_trips(tmp_path):
  cfg = hrnn.HRNNConfig(use_attention=True, num_timescales=2,
                        init_lr_range=(1e-5, 1e-3))
  theta = hrnn.init_theta(jax.random.PRNGKey(2), cfg)
  metatrain.save_optimizer(tmp_path / "a.lopt", cfg, theta)
  config, _, _ = metatrain.read_optimizer(tmp_path / "a.lopt")
  assert config == cfg


def test_wrong_format(tmp_path):
  blob = _valid_blob()
  blob["format"] = "something-else"
  path = _write(tmp_path / "bad.lopt", blob)
  with pytest.raises(ValueError, match=r"bad\.lopt.*wrong format"):
    metatrain.load_optimizer(path)


def test_unknown_version(tmp_path):
  blob = _valid_blob()
  blob["version"] = 99
  path = _write(tmp_path / "v99.lopt", blob)
  with pytest.raises(ValueError, match=r"v99\.lopt.*unknown lopt format "
                     r"version 99"):
    metatrain.load_optimizer(path)


def test_truncated_file(tmp_path):
  path = tmp_path / "t.lopt"
  metatrain.save_optimizer(path, CFG, THETA)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"t\.lopt.*truncated or corrupt"):
    metatrain.load_optimizer(path)


def test_corrupt_bytes(tmp_path):
  path = tmp_path / "c.lopt"
  path.write_bytes(b"\xc1\xff\x00garbage" * 10)
  with pytest.raises(ValueError, match=r"c\.lopt"):
    metatrain.load_optimizer(path)


def test_missing_file(tmp_path):
  with pytest.raises(ValueError, match=r"nope\.lopt.*cannot read"):
    metatrain.load_optimizer(tmp_path / "nope.lopt")


def test_config_with_unknown_field(tmp_path):
  blob = _valid_blob()
  cfg = CFG.to_dict()
  cfg["warp_drive"] = True
  blob["config"] = json.dumps(cfg)
  path = _write(tmp_path / "u.lopt", blob)
  with pytest.raises(ValueError,
                     match=r"u\.lopt.*unknown config key hrnn\.warp_drive"):
    metatrain.load_optimizer(path)


def test_config_with_mistyped_field(tmp_path):
  blob = _valid_blob()
  cfg = CFG.to_dict()
  cfg["param_units"] = "ten"
  blob["config"] = json.dumps(cfg)
  path = _write(tmp_path / "m.lopt", blob)
  with pytest.raises(ValueError, match=r"m\.lopt.*param_units"):
    metatrain.load_optimizer(path)


def test_theta_not_matching_config(tmp_path):
  blob = _valid_blob()
  blob["theta"]["w_update"] = np.zeros((3,), np.float32)
  path = _write(tmp_path / "s.lopt", blob)
  with pytest.raises(ValueError, match=r"s\.lopt.*w_update.*shape"):
    metatrain.load_optimizer(path)
  blob = _valid_blob()
  del blob["theta"]["tensor_rnn"]
  path = _write(tmp_path / "k.lopt", blob)
  with pytest.raises(ValueError, match=r"k\.lopt.*missing"):
    metatrain.load_optimizer(path)


def test_non_finite_theta_is_refused(tmp_path):
  theta = dict(THETA)
  theta["b_lr"] = jnp.asarray(np.nan)
  with pytest.raises(ValueError, match="non-finite"):
    metatrain.save_optimizer(tmp_path / "n.lopt", CFG, theta)
  assert not (tmp_path / "n.lopt").exists()


def test_metadata_must_be_json(tmp_path):
  with pytest.raises(ValueError, match="JSON"):
    metatrain.save_optimizer(tmp_path / "j.lopt", CFG, THETA,
                             {"obj": object()})
