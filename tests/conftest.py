"""Session-wide test settings: cheaper XLA compiles and one compile cache.

Most of the suite's time is XLA:CPU compiling small programs, so before jax
is imported anywhere (this file loads first) the session sets:

- ``XLA_FLAGS``: LLVM's cheap pipeline (``--xla_backend_optimization_level=0``,
  ``--xla_llvm_disable_expensive_passes=true``) and XLA:CPU's older
  (elemental) fusion emitters instead of the MLIR ones jax 0.10 uses by
  default (``--xla_cpu_use_fusion_emitters=false``). Measured here, cold:
  16 packing tests took 128 s with the defaults and 64 s at -O0; 21 of them
  took 44.7 s at -O0 and 31 s with both; three unroll tests 31.5 s at -O0
  and 19.4 s with both. HLO passes (fusion, layout, in-place updates) and
  float semantics are unchanged; only the machine code is less tuned.
  Flags already in ``XLA_FLAGS`` are kept, and ``LOPT_TEST_DEFAULT_XLA=1``
  runs the suite with XLA's defaults.
- JAX's persistent compilation cache in a fresh directory of this session
  (``JAX_COMPILATION_CACHE_DIR``), so that a program one test compiled
  loads from disk in the next test, in ``lopt`` subprocesses and in Ray
  workers, which inherit the environment. It starts empty, as on a fresh
  CI machine; ``LOPT_TEST_CACHE_DIR`` points it elsewhere (e.g. to keep it
  between local runs).
"""

from __future__ import annotations

import os
import shutil
import tempfile

_FAST_XLA = {"xla_backend_optimization_level": "0",
             "xla_llvm_disable_expensive_passes": "true",
             "xla_cpu_use_fusion_emitters": "false"}

if os.environ.get("LOPT_TEST_DEFAULT_XLA") != "1":
  _flags = os.environ.get("XLA_FLAGS", "")
  _extra = [f"--{k}={v}" for k, v in _FAST_XLA.items() if k not in _flags]
  os.environ["XLA_FLAGS"] = " ".join([_flags, *_extra]).strip()

_OWN_CACHE = None
if "LOPT_TEST_CACHE_DIR" in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["LOPT_TEST_CACHE_DIR"]
elif "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="lopt-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# Cache what takes a quarter second or more to compile.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


import pytest  # noqa: E402  (after the environment above is set)


@pytest.fixture(scope="session")
def ray_session():
  """One local Ray instance shared by every test that only needs *a*
  cluster; yields its GCS address for ``lopt train --address``.

  Started in this process (CI runs the suite in a loopback-only network
  namespace, so Ray binds to 127.0.0.1), with token authentication on as
  everywhere; ``lopt`` subprocesses join it with the token Ray keeps in
  ``~/.ray/auth_token``. Its 8 logical CPUs only count actors: tests that
  start their own workers name how many. Tests about start-up, node loss
  or a multi-node cluster start their own instead.
  """
  import ray  # pylint: disable=import-outside-toplevel
  ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
           configure_logging=False)
  try:
    yield ray.get_runtime_context().gcs_address
  finally:
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Slow tests first, and the session Ray's users on one xdist worker.

  The suite runs on 2 xdist workers (pyproject's addopts): starting the
  long tests first keeps one of them from finishing the run alone, and
  the tests that share ``ray_session`` share one worker (``--dist
  loadgroup``), so only one Ray instance is started for them.
  """
  del config
  for item in items:
    if "ray_session" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.xdist_group("ray_session"))
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# LOPT_TEST_COMPILE_REPORT=1 (with -n 0): seconds each test file spent
# tracing, lowering and compiling in this process, printed at the end.
_COMPILE = {}
if os.environ.get("LOPT_TEST_COMPILE_REPORT") == "1":
  import collections  # pylint: disable=g-import-not-at-top
  _COMPILE = collections.defaultdict(float)
  _CURRENT = {"file": "(collection)"}

  def _on_duration(event, duration, **kwargs):
    del kwargs
    if event.startswith("/jax/core/compile/"):
      _COMPILE[(_CURRENT["file"], event.rsplit("/", 1)[-1])] += duration

  import jax  # pylint: disable=g-import-not-at-top
  jax.monitoring.register_event_duration_secs_listener(_on_duration)

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_call(item):
    _CURRENT["file"] = item.nodeid.split("::")[0]
    yield

  def pytest_terminal_summary(terminalreporter):
    files = sorted({f for f, _ in _COMPILE},
                   key=lambda f: -sum(v for (g, _), v in _COMPILE.items()
                                      if g == f))
    terminalreporter.write_line("compile seconds per file (trace, lower, "
                                "backend):")
    for f in files:
      parts = [_COMPILE.get((f, k), 0.0) for k in (
          "jaxpr_trace_duration", "jaxpr_to_mlir_module_duration",
          "backend_compile_duration")]
      terminalreporter.write_line(
          f"  {sum(parts):7.1f}  {parts[0]:6.1f} {parts[1]:6.1f} "
          f"{parts[2]:6.1f}  {f}")


@pytest.fixture(name="small_disk")
def _small_disk(tmp_path):
  """A fresh 3 MiB tmpfs: full-disk faults for real (needs root and mount
  rights, as on CI's machine; elsewhere the test skips, saying why)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  mnt = tmp_path / "disk"
  mnt.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                      str(mnt)], capture_output=True, text=True, check=False)
  if r.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}); "
                "the full-disk tests need root and mount rights")
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], check=False)
