"""Builds the optional HRNN CPU kernel; the metadata lives in pyproject.toml.

``metatrain/kernels/hrnn_param_pass.cc`` is an XLA FFI handler (loaded with
ctypes by ``metatrain/hrnn_kernel.py``, not imported as a Python module). It
needs a C++17 compiler and the XLA FFI headers that jaxlib ships
(``jax.ffi.include_dir()``, hence jax and jaxlib in ``[build-system]
requires``). The extension is optional: without a compiler the install still
succeeds and the optimizer runs its pure-JAX update.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildFFI(build_ext):
  """Adds jaxlib's FFI include dir; skips the kernel if jax is missing."""

  def build_extensions(self):
    try:
      import jax  # pylint: disable=import-outside-toplevel
      include = jax.ffi.include_dir()
    except Exception as e:  # pylint: disable=broad-except
      print(f"lopt: not building the HRNN kernel (no jax FFI headers: {e})",
            file=sys.stderr)
      self.extensions = []
      return
    for ext in self.extensions:
      # -isystem: no warnings from the XLA headers.
      ext.extra_compile_args = ["-isystem", include] + ext.extra_compile_args
    super().build_extensions()


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
