"""Builds the optional HRNN CPU kernel; the metadata lives in pyproject.toml.

``metatrain/kernels/hrnn_param_pass.cc`` is an XLA FFI handler (loaded with
ctypes by ``metatrain/hrnn_kernel.py``, not imported as a Python module). It
needs a C++17 compiler (GCC >= 9 or Clang >= 14; ``CC=clang CXX=clang++``
picks Clang) and the XLA FFI headers that jaxlib ships
(``jax.ffi.include_dir()``, hence jax and jaxlib in ``[build-system]
requires``). The extension is optional: without a compiler the install still
succeeds and the optimizer runs its pure-JAX update.

pip hides the output of an optional build that failed, so the build also
writes ``metatrain/_hrnn_param_pass.build.json`` (built or not, the compiler
and the error), which ``lopt doctor`` and the kernel's "unavailable" message
read back.
"""

import json
import os
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_STATUS = "_hrnn_param_pass.build.json"


def _compiler_version(cmd) -> str:
  try:
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return out.splitlines()[0].strip() if out else cmd
  except (OSError, subprocess.SubprocessError):
    return cmd


class BuildFFI(build_ext):
  """Adds jaxlib's FFI include dir; records whether the kernel was built."""

  def _write_status(self, ext, **status) -> None:
    path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)),
                        _STATUS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(status, f, indent=2)

  def copy_extensions_to_source(self):
    # Editable installs (`pip install -e`) build in a temporary build_lib and
    # copy only the .so back into the source tree; the record goes with it.
    super().copy_extensions_to_source()
    build_py = self.get_finalized_command("build_py")
    for ext in self.extensions:
      inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
      built = os.path.join(os.path.dirname(regular_file), _STATUS)
      if os.path.exists(built):
        self.copy_file(built, os.path.join(os.path.dirname(inplace_file),
                                           _STATUS), level=self.verbose)

  def build_extensions(self):
    try:
      import jax  # pylint: disable=import-outside-toplevel
      include = jax.ffi.include_dir()
    except Exception as e:  # pylint: disable=broad-except
      reason = f"no jax FFI headers ({type(e).__name__}: {e})"
      print(f"lopt: not building the HRNN kernel: {reason}", file=sys.stderr)
      for ext in self.extensions:
        self._write_status(ext, built=False, compiler=None, error=reason)
      self.extensions = []
      return
    for ext in self.extensions:
      # -isystem: no warnings from the XLA headers.
      ext.extra_compile_args = ["-isystem", include] + ext.extra_compile_args
    super().build_extensions()

  def build_extension(self, ext):
    cc = self.compiler.compiler_so[0] if getattr(
        self.compiler, "compiler_so", None) else "cc"
    compiler = _compiler_version(cc)
    try:
      super().build_extension(ext)
    except Exception as e:  # pylint: disable=broad-except
      error = " ".join(str(e).split())[-800:]
      self._write_status(ext, built=False, compiler=compiler, error=error)
      print(f"lopt: the optional HRNN kernel did not build with {compiler} "
            f"({error}); lopt runs its pure-JAX update instead. "
            "`lopt doctor` shows this again.", file=sys.stderr)
      raise
    self._write_status(ext, built=True, compiler=compiler, error=None)


setup(
    ext_modules=[
        Extension(
            "metatrain._hrnn_param_pass",
            sources=["metatrain/kernels/hrnn_param_pass.cc"],
            depends=["metatrain/kernels/hrnn_simd.inc"],
            language="c++",
            # Portable: no -march (the pass is compiled per instruction set
            # in the source and picked at run time); no -ffast-math (the
            # kernel must match the pure-JAX update's rounding to ~1e-6).
            extra_compile_args=["-std=c++17", "-O3", "-fno-math-errno",
                                "-g0", "-Wno-psabi"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": BuildFFI},
)
