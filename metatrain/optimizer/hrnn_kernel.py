"""The HRNN's per-parameter pass as one compiled CPU loop (an XLA FFI call).

``metatrain/kernels/hrnn_param_pass.cc``, built by the package's install
(``setup.py``) into ``metatrain/_hrnn_param_pass*.so``, does in one pass over
the state slab what ``hrnn._param_pass`` does block by block under
``packing.blocked_map`` plus the per-tensor ``segment_sums``: it reads every
state slab once, writes the new state (in place when the state is donated)
and the step, and returns the per-tensor sums. Under XLA:CPU the pure-JAX
pass is several loops with large temporaries; the kernel keeps a tile of
one vector register's width (4, 8 or 16 elements: SSE2, AVX2 or AVX-512,
the best the CPU has, or ``$LOPT_HRNN_ISA``; see ``isa()``) in registers.

The kernel has no derivative rules: it is for running an optimizer
(``hrnn_optax``), never for meta-training, which differentiates
``hrnn.update`` with respect to theta (``hrnn.update`` defaults to
``kernel=False``). Unsupported: ``use_attention``, ``param_units > 32``,
``num_timescales > 8``, non-fp32 state or theta, non-CPU backends; those
run the pure-JAX pass, which stays the reference.
"""

from __future__ import annotations

import ctypes
import glob
import json
import logging
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from metatrain.optimizer import hrnn_config

_TARGET = "lopt_hrnn_param_pass"
_SYMBOL = "LoptHrnnParamPass"
_MAX_P, _MAX_T = 32, 8

# Bits of the kernel's `flags` attribute (see the .cc file).
_FLAGS = {"dynamic_input_scaling": 1 << 0, "use_grad_products": 1 << 1,
          "use_log_ms": 1 << 2, "use_relative_lr": 1 << 3,
          "learnable_decay": 1 << 4, "dynamic_output_scale": 1 << 5,
          "use_gradient_shortcut": 1 << 6, "nominal_adam": 1 << 7,
          "use_tensor_rnn": 1 << 8}

_log = logging.getLogger(__name__)
_state: dict = {}  # "ok": bool, "error": str, "path": str
_warned: set = set()


_BUILD_RECORD = "_hrnn_param_pass.build.json"  # written by setup.py
# setup.py builds the library (and its record) into the metatrain package.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = ("install GCC >= 9 or Clang >= 14 and reinstall (`pip install -e .`); "
       "without it lopt runs the pure-JAX update, which gives the same "
       "results more slowly")


def library_path() -> str | None:
  """The built kernel library (``$LOPT_HRNN_KERNEL`` overrides), or None."""
  env = os.environ.get("LOPT_HRNN_KERNEL")
  if env:
    return env
  here = _PACKAGE_DIR
  found = sorted(glob.glob(os.path.join(here, "_hrnn_param_pass*.so")))
  return found[0] if found else None


def build_record() -> dict | None:
  """What the install's build step recorded (built, compiler, error)."""
  path = os.path.join(_PACKAGE_DIR, _BUILD_RECORD)
  try:
    with open(path) as f:
      record = json.load(f)
    return record if isinstance(record, dict) else None
  except (OSError, ValueError):
    return None


def _missing_reason() -> str:
  record = build_record() or {}
  if record.get("built") is False:
    return (f"its build failed at install with {record.get('compiler')}: "
            f"{record.get('error')}")
  return ("metatrain/_hrnn_param_pass*.so is not built (this install did "
          "not build extensions)")


def _load() -> bool:
  if "ok" in _state:
    return _state["ok"]
  path = library_path()
  try:
    if path is None:
      raise OSError(_missing_reason())
    lib = ctypes.cdll.LoadLibrary(path)
    lib.LoptHrnnIsa.restype = ctypes.c_int64
    lib.LoptHrnnIsa.argtypes = [ctypes.c_int64]
    jax.ffi.register_ffi_target(
        _TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)), platform="cpu")
    _smoke_test()
    _state.update(ok=True, path=path, lib=lib)
  except Exception as e:  # pylint: disable=broad-except
    _state.update(ok=False, error=f"{type(e).__name__}: {e}", path=path)
  return _state["ok"]


def _smoke_test() -> None:
  """Runs the kernel once on one element: catches a library built against
  an FFI API that this jaxlib does not accept, before any real use."""
  f32 = np.float32
  z = lambda *shape: np.zeros(shape, f32)
  shapes = [(1, 1), (1, 1), (1, 1), (0,), (0,), (0,), (1,), (1, 3)]
  call = jax.ffi.ffi_call(_TARGET, [jax.ShapeDtypeStruct(s, f32)
                                    for s in shapes])
  ones = np.ones((1, 3), f32)
  with jax.ensure_compile_time_eval(), \
      jax.default_device(jax.devices("cpu")[0]):
    out = call(np.ones((1,), f32), z(1, 1), z(1, 1), z(1, 1),
               z(0), z(0), z(0), z(1, 3), z(1, 3), np.ones((1, 4), f32),
               z(0), ones, z(17), np.asarray([[0, 1, 1]], np.int32),
               flags=np.int64(0), num_timescales=np.int64(1),
               param_units=np.int64(1), num_features=np.int64(1),
               max_threads=np.int64(1), isa=np.int64(0))
    acc, step = float(np.asarray(out[1])[0, 0]), float(out[6][0])
  # T=1, all biases 1, GRU weights 0: acc = g = 1, h = (1 - sigmoid(1))
  # tanh(1), every readout = h (ones), step = 2 sigmoid(h) h.
  h = (1.0 - 1.0 / (1.0 + np.exp(-1.0))) * np.tanh(1.0)
  want = 2.0 / (1.0 + np.exp(-h)) * h
  if acc != 1.0 or abs(step - want) > 1e-5:
    raise RuntimeError(f"kernel smoke test failed: step {step} != {want}")


ISAS = {"auto": 0, "base": 1, "avx2": 2, "avx512": 3}
_ISA_NAMES = {v: k for k, v in ISAS.items()}


def _isa_request() -> int:
  """``$LOPT_HRNN_ISA`` (auto, base, avx2 or avx512) as the kernel's code."""
  want = os.environ.get("LOPT_HRNN_ISA", "auto").strip().lower() or "auto"
  if want not in ISAS:
    raise ValueError(f"LOPT_HRNN_ISA={want!r}: expected one of "
                     f"{', '.join(ISAS)}")
  return ISAS[want]


def isa(request: str | None = None) -> str | None:
  """The instruction set the kernel runs with here ("base": SSE2/NEON,
  "avx2", "avx512"), for ``request`` (default ``$LOPT_HRNN_ISA``, else the
  best the CPU has; a level the CPU lacks falls back to the best below it);
  None when the kernel is unavailable."""
  if not _load():
    return None
  code = ISAS[request] if request is not None else _isa_request()
  return _ISA_NAMES[int(_state["lib"].LoptHrnnIsa(code))]


def available() -> bool:
  """Whether the kernel library is built, loads, and is registered."""
  return _load()


def unavailable_reason() -> str | None:
  return None if _load() else _state["error"]


def status() -> dict:
  """The kernel's state here: available, isa, library, compiler, reason."""
  ok = _load()
  record = build_record() or {}
  compiler = record.get("compiler") if record.get("built") else None
  if os.environ.get("LOPT_HRNN_KERNEL"):
    compiler = None  # another build than the install's
  return {"available": ok, "isa": isa() if ok else None,
          "library": _state.get("path"), "compiler": compiler,
          "reason": None if ok else _state["error"]}


def status_line() -> str:
  """One line for ``lopt --version`` and ``lopt doctor``."""
  s = status()
  if not s["available"]:
    return f"HRNN CPU kernel: unavailable ({s['reason']}); {FIX}"
  built = f", built with {s['compiler']}" if s["compiler"] else ""
  return (f"HRNN CPU kernel: available, instruction set {s['isa']} "
          f"({s['library']}{built})")


def unsupported_reason(cfg, theta, state) -> str | None:
  """Why this (config, theta, state) cannot use the kernel, or None."""
  if cfg.use_attention:
    return "use_attention is not supported by the kernel"
  if not 1 <= cfg.param_units <= _MAX_P:
    return f"param_units > {_MAX_P}"
  if not 1 <= cfg.num_timescales <= _MAX_T:
    return f"num_timescales > {_MAX_T}"
  arrays = [state.h, state.acc, state.ms, state.log_lr, state.adam_m,
            state.adam_v]
  arrays += jax.tree_util.tree_leaves(theta)
  if any(jnp.result_type(x) != jnp.float32 for x in arrays):
    return "the kernel needs float32 state and theta"
  if state.h.shape[-1] >= 2**31:
    return "slab too large for int32 offsets"
  if jax.default_backend() != "cpu":
    return f"backend is {jax.default_backend()}, the kernel is CPU-only"
  return None


def _warn_once(msg: str) -> None:
  if msg not in _warned:
    _warned.add(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def should_use(cfg, theta, state, kernel: bool | None) -> bool:
  """Resolves ``hrnn.update``'s ``kernel`` argument (None: auto).

  With ``kernel=True`` a reason not to use it is warned about (once per
  reason). In auto mode a missing kernel is logged once at INFO, with the
  reason and the fix, and a config or backend it does not cover at DEBUG.
  """
  if kernel is False:
    return False
  why = unsupported_reason(cfg, theta, state) or unavailable_reason()
  if why is None:
    return True
  if kernel:
    _warn_once(f"HRNN kernel requested but not used ({why}); running the "
               "pure-JAX update")
  elif why not in _warned:
    _warned.add(why)
    if why == unavailable_reason():  # this install has no kernel: say so
      _log.info("HRNN CPU kernel unavailable (%s); %s", why, FIX)
    else:  # a config or backend the kernel does not cover
      _log.debug("HRNN kernel not used: %s", why)
  return False


def _segments(layout) -> np.ndarray:
  """(num_tensors, 3) int32: start, real size and end of each tensor's range
  (the end includes the padding up to the next tensor or the slab's end)."""
  live = layout.live
  rows = []
  for t, i in enumerate(live):
    end = layout.offsets[live[t + 1]] if t + 1 < len(live) else layout.size
    rows.append((layout.offsets[i], layout.sizes[i], end))
  return np.asarray(rows, np.int32).reshape(-1, 3)


def param_pass(cfg, theta, layout, slabs, g, bias_table, first_step,
               mean_log_lr, t1):
  """The kernel version of the per-parameter pass of ``hrnn.update``.

  Takes what ``hrnn.update`` gives ``packing.blocked_map`` (``slabs`` as
  there, ``g`` the (size,) packed gradients) and returns ``(new_slabs,
  step, sums)``, ``step`` the (size,) step before any per-tensor
  normalisation and ``sums`` the per-tensor sums that ``_param_pass``'s
  chunk sums would give after ``packing.segment_sums``: (num_tensors, k)
  arrays under the same keys.
  """
  if not _load():
    raise RuntimeError(f"HRNN kernel unavailable: {_state['error']}")
  f32 = jnp.float32
  p, t, nf = cfg.param_units, cfg.num_timescales, cfg.num_features
  nt = layout.num_tensors
  flags = sum(bit for name, bit in _FLAGS.items() if getattr(cfg, name))
  empty = jnp.zeros((0,), f32)
  rnn = theta["param_rnn"]
  w_lr, b_lr = hrnn_config.lr_head(cfg, theta)
  wout = jnp.stack([theta["w_update"], theta["w_scl_decay"],
                    theta["w_inp_decay"], w_lr], 1)
  shortcut = theta["shortcut"] if cfg.use_gradient_shortcut else empty
  bias = jnp.broadcast_to(bias_table, (nt, 3 * p)).astype(f32)
  b1, b2 = cfg.adam_b1, cfg.adam_b2
  one = jnp.ones((), f32)
  if cfg.nominal_adam:  # as hrnn._param_pass computes them
    c1, c2 = 1.0 - b1 ** t1, 1.0 - b2 ** t1
  else:
    c1 = c2 = one
  mom = jax.nn.sigmoid(theta["lr_momentum_logit"])
  scal = jnp.stack([jnp.asarray(x, f32) for x in (
      jnp.where(first_step, 1.0, 0.0), mean_log_lr, c1, c2,
      theta["b_scl_decay"], theta["b_inp_decay"], b_lr, mom,
      1.0 - mom, theta["stepsize_offset"], np.float32(b1),
      np.float32(1.0 - b1), np.float32(b2), np.float32(1.0 - b2),
      np.float32(cfg.adam_eps), np.float32(cfg.max_log_lr),
      np.float32(cfg.lr_correction_range))])
  state_in = [slabs["h"], slabs["acc"], slabs["ms"],
              slabs.get("log_lr", empty),
              slabs.get("adam_m", empty), slabs.get("adam_v", empty)]
  out_types = [jax.ShapeDtypeStruct(x.shape, f32) for x in state_in]
  out_types += [jax.ShapeDtypeStruct((layout.size,), f32),
                jax.ShapeDtypeStruct((nt, p + nf + 1), f32)]
  call = jax.ffi.ffi_call(
      _TARGET, out_types, vmap_method="sequential",
      input_output_aliases={i + 1: i for i in range(len(state_in))})
  outs = call(g.astype(f32), *state_in, rnn["wx"], rnn["wh"], wout, shortcut,
              bias, scal, jnp.asarray(_segments(layout)),
              flags=np.int64(flags), num_timescales=np.int64(t),
              param_units=np.int64(p), num_features=np.int64(nf),
              max_threads=np.int64(os.cpu_count() or 1),
              isa=np.int64(_isa_request()))
  names = ["h", "acc", "ms", "log_lr", "adam_m", "adam_v"]
  new = {k: v for k, v in zip(names, outs[:6]) if k in slabs}
  step, sums_all = outs[6], outs[7]
  sums = {}
  if cfg.use_tensor_rnn:
    sums["h"] = sums_all[:, :p]
    sums["feats"] = sums_all[:, p:p + nf]
  if cfg.dynamic_output_scale and not cfg.nominal_adam:
    sums["d2"] = sums_all[:, p + nf:]
  return new, step, sums
