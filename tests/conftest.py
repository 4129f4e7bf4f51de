"""Session-wide test settings: cheap XLA compiles and one compile cache.

Most of the suite's time is XLA:CPU compiling small programs, so before jax
is imported anywhere (this file loads first) the session sets:

- ``XLA_FLAGS``: LLVM's cheap pipeline (``--xla_backend_optimization_level=0``,
  ``--xla_llvm_disable_expensive_passes``). HLO passes (fusion, layout,
  in-place updates) and float semantics are unchanged; only the machine
  code is less tuned, which halves compile times here. Flags already in
  ``XLA_FLAGS`` are kept, and ``LOPT_TEST_FULL_OPT=1`` turns this off.
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

_FAST_XLA = ("--xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")

if os.environ.get("LOPT_TEST_FULL_OPT") != "1":
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} {_FAST_XLA}".strip()

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
