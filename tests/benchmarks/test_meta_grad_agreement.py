"""benchmarks/meta_grad_agreement.py: cosines, shares and the flat start."""

import numpy as np
import pytest

# Shares a worker (and so its compiled tiny-quadratic BPTT programs) with
# test_meta_descent.py.
_SHARED = pytest.mark.xdist_group("tiny_quadratic_bptt")


def test_agreement_of_equal_opposite_and_zero_gradients(benchmark_module):
  mod = benchmark_module("meta_grad_agreement")
  a = {"x": np.array([1.0, 2.0]), "z": np.zeros(3)}
  rows = {r["group"]: r for r in mod.agreement([a, a, a])}
  assert rows["x"]["cos"] == pytest.approx(1.0)
  assert rows["x"]["share"] == pytest.approx(1.0)
  assert rows["z"]["cos"] is None and rows["z"]["share"] == 0.0
  assert rows["all"]["size"] == 5
  b = {"x": -a["x"], "z": np.zeros(3)}
  rows = {r["group"]: r for r in mod.agreement([a, b])}
  assert rows["x"]["cos"] == pytest.approx(-1.0)
  assert rows["x"]["cos_sd"] == pytest.approx(0.0)
  # Two truncations of each of two task groups: within a group the
  # gradients agree, between the groups they are orthogonal.
  c = {"x": np.array([0.0, 3.0]), "z": np.zeros(3)}
  rows = {r["group"]: r for r in mod.agreement([a, a, c, c], [0, 0, 1, 1])}
  assert rows["x"]["cos_within"] == pytest.approx(1.0)
  assert rows["x"]["cos"] == pytest.approx(2 / np.sqrt(5))
  assert rows["z"]["cos_within"] is None


@_SHARED
def test_at_the_nominal_adam_start_only_the_readouts_have_a_gradient(
    benchmark_module, capsys):
  # The readouts start at zero, so the RNNs' weights have no first-order
  # effect on any update: their exact (BPTT) meta-gradient is zero.
  mod = benchmark_module("meta_grad_agreement")
  rows = mod.main(["--config", "tiny", "--set", 'tasks.families=["quadratic"]',
                   "--set", "meta_grad.estimator=bptt", "--groups", "2"])
  rows = {r["group"]: r for r in rows}
  for name in ("param_rnn", "tensor_rnn", "global_rnn", "tensor_to_param"):
    assert rows[name]["share"] == 0.0 and rows[name]["cos"] is None, name
  readouts = sum(rows[k]["share"] for k in ("w_update", "w_lr", "shortcut"))
  assert readouts > 0.5
  assert "| param_rnn | " in capsys.readouterr().out
