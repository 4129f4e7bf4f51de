"""benchmarks/step_profile.py: the untrained optimizer is Adam, so its step
is Adam's at every step (ratio 1, cosine 1); a step scaled by a known factor reads
as that factor; the windows' arithmetic."""

import math

import jax
import numpy as np
import optax
import pytest

from metatrain.optimizer import export, hrnn


@pytest.fixture(name="step_profile")
def _step_profile(benchmark_module):
  return benchmark_module("step_profile")


def test_the_untrained_optimizer_steps_exactly_as_adam(step_profile, tmp_path,
                                                       capsys):
  cfg = hrnn.HRNNConfig()
  path = tmp_path / "start.lopt"
  export.save_optimizer(path, cfg, hrnn.init_theta(jax.random.PRNGKey(0), cfg))
  assert step_profile.main(["--lopt", str(path), "--tasks",
                            "validation:0,vimage:1", "--steps", "20",
                            "--at", "1,5,20"]) == 0
  out = capsys.readouterr().out
  rows = [l.split() for l in out.splitlines()
          if l.startswith(("validation:0", "vimage:1", "median"))]
  assert len(rows) == 3
  for r in rows[:2]:
    assert [float(x) for x in r[-5:-2]] == [1.0, 1.0, 1.0]  # 3 windows
    assert abs(float(r[-2])) < 1e-5  # no spread across tensors
    assert float(r[-1]) == 1.0  # Adam's direction
  assert [float(x) for x in rows[2][-3:]] == [1.0, 1.0, 1.0]


def test_a_scaled_step_reads_as_its_scale(step_profile):
  from evaluators import problems
  prob = problems.build("validation:0")
  adam = optax.adam(1e-3)
  res = step_profile.profile(prob, optax.chain(optax.adam(1e-3),
                                               optax.scale(2.5)),
                             adam, 10, 0)
  np.testing.assert_allclose(res["ratio"], 2.5, rtol=1e-5)
  np.testing.assert_allclose(res["tensor_log"], math.log(2.5), atol=1e-5)
  np.testing.assert_allclose(res["cos"], 1.0, atol=1e-5)
  assert res["loss"].shape == (10,) and np.all(np.isfinite(res["loss"]))


def test_windows_are_geometric_means_and_nan_past_the_run(step_profile):
  r = np.array([1.0, 4.0, 2.0, 8.0])
  got = step_profile.windows(r, [1, 2, 4, 6])
  assert got[:3] == pytest.approx([1.0, 4.0, 4.0])
  assert math.isnan(got[3])
  assert math.isnan(step_profile.windows(np.array([1.0, np.inf]), [2])[0])
