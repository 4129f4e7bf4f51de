"""The single-file optimizer format (``.lopt``): msgpack, versioned, no pickle.

A file holds ``{format: "lopt", version: 1, config: {...}, theta: pytree,
metadata: {...}}`` serialised with ``flax.serialization`` (msgpack). Loading
checks every part and raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import numpy as np
import optax
from flax import serialization

from metatrain import files
from metatrain.optimizer import hrnn
from metatrain.optimizer.optax_adapter import hrnn_optax

FORMAT = "lopt"
VERSION = 1
SUPPORTED_VERSIONS = (1,)


def _to_numpy(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)


def save_optimizer(path: str | os.PathLike, config: hrnn.HRNNConfig,
                   theta: hrnn.Theta, metadata: dict[str, Any] | None = None
                   ) -> None:
  """Writes an optimizer file atomically.

  Args:
    path: destination, conventionally ``*.lopt``.
    config: the optimizer config.
    theta: meta-parameters matching ``config``.
    metadata: JSON-serialisable provenance (steps, run, hardware, ...).
  """
  metadata = dict(metadata or {})
  try:
    json.dumps(metadata)
  except TypeError as e:
    raise ValueError(f"metadata must be JSON-serialisable: {e}") from None
  _check_theta(str(path), config, theta)
  blob = serialization.msgpack_serialize({
      "format": FORMAT,
      "version": VERSION,
      "config": json.dumps(config.to_dict(), sort_keys=True),
      "theta": _to_numpy(theta),
      "metadata": json.dumps(metadata, sort_keys=True),
  })
  path = os.fspath(path)
  check_destination(path)
  try:
    files.write_atomic(path, blob)
  except OSError as e:
    raise ValueError(f"cannot write {path}: {e.strerror}") from None


def check_destination(path: str | os.PathLike) -> None:
  """Raises ValueError, naming the fix, if ``path`` cannot take a file.

  A directory, a missing or non-directory parent, and an existing file
  that is read-only are refused: nothing is created or replaced.
  """
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ValueError(f"{path} is a directory: give a file name, e.g. "
                     f"{os.path.join(path, 'optimizer.lopt')}")
  if not os.path.exists(d):
    raise ValueError(f"cannot write {path}: directory {d} does not exist; "
                     "create it first")
  if not os.path.isdir(d):
    raise ValueError(f"cannot write {path}: {d} is not a directory")
  # Mode bits, not os.access: root may write anything, but a file someone
  # made read-only is not to be replaced.
  if os.path.exists(path) and not os.stat(path).st_mode & 0o222:
    raise ValueError(f"{path} exists and is read-only; remove it or choose "
                     "another file")
  if not os.access(d, os.W_OK):
    raise ValueError(f"cannot write {path}: directory {d} is not writable")


def _check_theta(path: str, config: hrnn.HRNNConfig, theta: Any) -> None:
  want = jax.eval_shape(lambda: hrnn.init_theta(jax.random.PRNGKey(0),
                                                config))
  want_flat = {jax.tree_util.keystr(k): v.shape
               for k, v in jax.tree_util.tree_leaves_with_path(want)}
  try:
    got_flat = {jax.tree_util.keystr(k): np.shape(v)
                for k, v in jax.tree_util.tree_leaves_with_path(theta)}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: theta is not a pytree of arrays: {e}") from None
  if set(want_flat) != set(got_flat):
    missing = sorted(set(want_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(want_flat))
    raise ValueError(f"{path}: theta does not match the config "
                     f"(missing {missing}, unexpected {extra})")
  for k, shape in want_flat.items():
    if tuple(got_flat[k]) != tuple(shape):
      raise ValueError(f"{path}: theta{k} has shape {tuple(got_flat[k])}, "
                       f"the config needs {tuple(shape)}")
  for k, v in jax.tree_util.tree_leaves_with_path(theta):
    if not np.all(np.isfinite(np.asarray(v))):
      raise ValueError(f"{path}: theta{jax.tree_util.keystr(k)} has "
                       "non-finite values")


def read_optimizer(path: str | os.PathLike
                   ) -> tuple[hrnn.HRNNConfig, hrnn.Theta, dict[str, Any]]:
  """Reads and validates an optimizer file: ``(config, theta, metadata)``."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      blob = f.read()
  except OSError as e:
    raise ValueError(f"{path}: cannot read optimizer file: {e}") from None
  try:
    raw = serialization.msgpack_restore(blob)
  except Exception as e:  # msgpack raises many types on corrupt input
    raise ValueError(f"{path}: not a valid lopt file (truncated or corrupt "
                     f"msgpack: {type(e).__name__}: {e})") from None
  if not isinstance(raw, dict) or raw.get("format") != FORMAT:
    fmt = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
    raise ValueError(f"{path}: wrong format {fmt!r}, expected {FORMAT!r}")
  version = raw.get("version")
  if version not in SUPPORTED_VERSIONS:
    raise ValueError(f"{path}: unknown lopt format version {version!r}; this "
                     f"lopt reads versions {list(SUPPORTED_VERSIONS)}. "
                     "Upgrade lopt to read it.")
  for field in ("config", "theta", "metadata"):
    if field not in raw:
      raise ValueError(f"{path}: missing field {field!r}")
  try:
    config_dict = json.loads(raw["config"])
    metadata = json.loads(raw["metadata"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: corrupt config/metadata JSON: {e}") from None
  if not isinstance(config_dict, dict):
    raise ValueError(f"{path}: config must be a JSON object")
  try:
    config = hrnn.HRNNConfig.from_dict(config_dict)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: bad optimizer config: {e}") from None
  theta = raw["theta"]
  _check_theta(path, config, theta)
  theta = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), theta)
  return config, theta, metadata


def load_optimizer(path: str | os.PathLike, learning_rate: Any = None,
                   key: Any = None, kernel: bool | None = None) -> optax.GradientTransformationExtraArgs:
  """Loads an optimizer file as an optax transformation.

  Args:
    path: a ``.lopt`` file.
    learning_rate: a float or an optax schedule (a function of the step
      count); None is the optimizer's default rate (``config.init_lr``).
      The step scales linearly with it, as with ``optax.adam``, so it can
      be swept, scheduled, or set by ``optax.inject_hyperparams``.
    key, kernel: as ``hrnn_optax``'s.

  Example::

    tx = optax.inject_hyperparams(metatrain.load_optimizer)(
        path="my.lopt", learning_rate=optax.cosine_decay_schedule(3e-3, 1000))
  """
  config, theta = _read_cached(*_file_key(path))
  return hrnn_optax(config, theta, key=key, kernel=kernel,
                    learning_rate=learning_rate)


def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
  path = os.path.abspath(os.fspath(path))
  try:
    st = os.stat(path)
  except OSError as e:
    raise ValueError(f"{path}: cannot read optimizer file: {e}") from None
  return path, st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int):
  """``read_optimizer``'s (config, theta), read once per file version:
  ``optax.inject_hyperparams`` calls the factory at every step."""
  del mtime_ns, size  # part of the cache key only
  config, theta, _ = read_optimizer(path)
  return config, theta
