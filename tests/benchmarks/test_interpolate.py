"""benchmarks/interpolate.py on the shipped hrnn-v1: the line's ends are
known optimizers (alpha 0 is Adam, alpha 1 the file), and a file that was
not trained from the rebuilt start is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metatrain
from metatrain.optimizer import export, hrnn, zoo


@pytest.fixture(name="interpolate")
def _interpolate(benchmark_module):
  return benchmark_module("interpolate")


def _steps(tx, n=5):
  p = {"w": jnp.zeros((2, 3)), "b": jnp.linspace(-1.0, 1.0, 4)}
  loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2) + jnp.sum(jnp.sin(p["b"]))
  state, out = tx.init(p), []
  for _ in range(n):
    u, state = tx.update(jax.grad(loss)(p), state, p)
    out.append(u)
    p = optax.apply_updates(p, u)
  return out


def _leaves(t):
  return [np.asarray(x) for x in jax.tree.leaves(t)]


def test_the_ends_of_the_line_are_adam_and_the_file(interpolate, tmp_path,
                                                   capsys):
  assert interpolate.main(["--out", str(tmp_path), "--alpha", "0",
                           "--alpha", "1", "--alpha", "0.5"]) == 0
  assert "rebuilt its start (seed 0)" in capsys.readouterr().out
  _, v1, _ = export.read_optimizer(zoo.pretrained_path("hrnn-v1"))
  _, one, meta = export.read_optimizer(tmp_path / "hrnn-v1-a1.lopt")
  assert meta["derived_from"]["alpha"] == 1.0
  for a, b in zip(_leaves(one), _leaves(v1)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
  _, zero, _ = export.read_optimizer(tmp_path / "hrnn-v1-a0.lopt")
  _, half, _ = export.read_optimizer(tmp_path / "hrnn-v1-a0.5.lopt")
  for z, h, b in zip(_leaves(zero), _leaves(half), _leaves(v1)):
    np.testing.assert_allclose(h, (z + b) / 2, rtol=0, atol=1e-7)
  # The start is the nominal-Adam start: alpha 0 steps as Adam at 1e-3.
  ours = _steps(metatrain.load_optimizer(tmp_path / "hrnn-v1-a0.lopt"))
  for u, a in zip(ours, _steps(optax.adam(1e-3))):
    for x, y in zip(_leaves(u), _leaves(a)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-10)


def test_a_new_step_rule_is_written_into_the_config(interpolate, tmp_path):
  interpolate.main(["--out", str(tmp_path), "--alpha", "1",
                    "--global-step", "capped"])
  config, _, meta = export.read_optimizer(tmp_path / "hrnn-v1-a1-capped.lopt")
  assert config.global_step == "capped"
  assert meta["derived_from"]["global_step"] == "capped"


def test_a_file_not_trained_from_the_rebuilt_start_is_refused(interpolate,
                                                              tmp_path):
  config, theta, meta = export.read_optimizer(zoo.pretrained_path("hrnn-v1"))
  other = hrnn.init_theta(jax.random.PRNGKey(1), config)  # seed 1's start
  path = tmp_path / "other.lopt"
  export.save_optimizer(path, config, other, meta)  # but says seed 0
  with pytest.raises(ValueError, match="was not trained from it"):
    interpolate.main(["--from", str(path), "--out", str(tmp_path / "o")])
  assert not (tmp_path / "o").exists()
  meta = dict(meta, train_config={})
  export.save_optimizer(path, config, theta, meta)
  with pytest.raises(ValueError, match="no meta-training seed"):
    interpolate.main(["--from", str(path), "--out", str(tmp_path / "o")])
