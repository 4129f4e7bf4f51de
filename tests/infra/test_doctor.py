"""``lopt doctor`` and ``lopt --version`` tell whether the HRNN kernel is
there, which instruction set it runs, and, where it is not, why and how
to fix it (a missing kernel also says so once, at INFO, when used)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax

from infra import cli
from metatrain.optimizer import hrnn_kernel

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_doctor_reports_versions_backend_and_the_kernel(capsys):
  assert cli.main(["doctor"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("lopt 0.1.0 on Python ")
  assert f"jax {jax.__version__}" in out[1]
  assert out[2].startswith(f"jax backend: {jax.default_backend()}")
  (line,) = [l for l in out if l.startswith("HRNN CPU kernel: ")]
  if hrnn_kernel.available():
    assert f"instruction set {hrnn_kernel.isa()}" in line
    assert hrnn_kernel.library_path() in line
  else:
    assert hrnn_kernel.unavailable_reason() in line and "GCC >= 9" in line


_NO_KERNEL = textwrap.dedent("""
    import logging
    import jax, jax.numpy as jnp
    from metatrain.optimizer import hrnn
    from metatrain.optimizer.optax_adapter import hrnn_optax
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = hrnn.HRNNConfig()
    tx = hrnn_optax(cfg, hrnn.init_theta(jax.random.PRNGKey(0), cfg))
    params = {"w": jnp.zeros(5)}
    state = tx.init(params)
    for _ in range(3):
      u, state = tx.update({"w": jnp.ones(5)}, state, params)
    print("update", float(u["w"][0]))
""")


def test_a_missing_kernel_is_reported_with_its_reason_and_fix(tmp_path):
  env = dict(os.environ, LOPT_HRNN_KERNEL=str(tmp_path / "missing.so"),
             PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-m", "infra.cli", "--version"],
                       capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=120, check=True).stdout.splitlines()
  assert out[0] == "lopt 0.1.0"
  assert out[1].startswith("HRNN CPU kernel: unavailable (OSError: ")
  assert "missing.so" in out[1] and "GCC >= 9 or Clang >= 14" in out[1]
  # Used anyway, through optax: one INFO line, and Adam's first steps.
  run = subprocess.run([sys.executable, "-c", _NO_KERNEL], capture_output=True,
                       text=True, env=env, timeout=120, check=True)
  notes = [l for l in run.stderr.splitlines() if "HRNN CPU kernel" in l]
  assert len(notes) == 1 and notes[0].startswith(
      "INFO HRNN CPU kernel unavailable (OSError: "), run.stderr
  assert "reinstall (`pip install -e .`)" in notes[0]
  assert float(run.stdout.split()[1]) < 0  # the pure-JAX update ran


def test_a_failed_build_is_named_in_the_reason(monkeypatch):
  monkeypatch.setattr(hrnn_kernel, "build_record", lambda: {
      "built": False, "compiler": "clang version 9.0.0",
      "error": "command 'clang' failed with exit code 1"})
  reason = hrnn_kernel._missing_reason()  # pylint: disable=protected-access
  assert reason == ("its build failed at install with clang version 9.0.0: "
                    "command 'clang' failed with exit code 1")
  monkeypatch.setattr(hrnn_kernel, "build_record", lambda: None)
  assert "is not built" in hrnn_kernel._missing_reason()  # pylint: disable=protected-access
