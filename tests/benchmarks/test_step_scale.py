"""benchmarks/step_scale.py: the learned optimizer with its step scaled."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metatrain
from evaluators import baselines, problems, runner
from metatrain.optimizer.optax_adapter import hrnn_optax


def test_scale_multiplies_every_step_exactly(benchmark_module):
  scaled = benchmark_module("step_scale").scaled
  config, theta, _ = metatrain.read_optimizer(metatrain.pretrained_path())
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
            "b": jnp.ones((5,))}
  grads = jax.tree_util.tree_map(lambda p: jnp.sin(3.0 * p) + 0.1, params)
  steps = {}
  for s in (1.0, 2.5):
    tx = hrnn_optax(config, scaled(theta, s))
    state = tx.init(params)
    u = None
    for _ in range(3):  # the scale stays out of the optimizer's state
      u, state = tx.update(grads, state, params)
    steps[s] = u
  for k in params:
    np.testing.assert_allclose(steps[2.5][k], 2.5 * steps[1.0][k],
                               rtol=1e-5, atol=1e-12)
  with pytest.raises(ValueError, match="> 0"):
    scaled(theta, 0.0)


def test_table_rows_are_real_runs(capsys, benchmark_module):
  mod = benchmark_module("step_scale")
  assert mod.main(["--tasks", "digits_mlp", "--scales", "0.5,1",
                   "--adam-lrs", "1e-3", "--steps", "20", "--chunk", "20"]) == 0
  out = capsys.readouterr().out
  rows = dict(re.findall(r"^(learned x[\d.]+|adam [\d.e-]+)\s+(\S+)\s+\S+$",
                         out, re.M))
  assert set(rows) == {"learned x0.5", "learned x1", "adam 0.001"}, out
  config, theta, _ = metatrain.read_optimizer(metatrain.pretrained_path())
  problem = problems.build("digits_mlp", batch_size=64)
  plain = runner.run(problem, baselines.learned(config, theta), steps=20,
                     seed=0, chunk=20)
  assert float(rows["learned x1"]) == pytest.approx(plain.final_loss,
                                                    rel=1e-3)
  assert float(rows["learned x0.5"]) != pytest.approx(plain.final_loss,
                                                      rel=1e-3)
  # Adam's row is the best Adam: ratio 1.
  assert re.search(r"^adam 0\.001\s+\S+\s+1\.000$", out, re.M), out
