"""Wraps a (config, theta) pair as a plain optax transformation."""

from __future__ import annotations

from typing import Any

import jax
import optax

from metatrain.optimizer import hrnn


def hrnn_optax(config: hrnn.HRNNConfig, theta: hrnn.Theta,
               key: jax.Array | None = None, kernel: bool | None = None,
               learning_rate: Any = None
               ) -> optax.GradientTransformationExtraArgs:
  """Returns the hierarchical RNN optimizer as an optax transformation.

  The transformation works in any optax loop and inside ``optax.chain``.
  Its state is an ``hrnn.HRNNState``. With ``config.use_attention`` the
  ``params`` argument of ``update`` is required, and the params it produces
  are the attended (lookahead) point; ``hrnn.true_params(state, params)``
  returns the true params.

  Args:
    config: the optimizer's static config.
    theta: its meta-parameters, e.g. from ``hrnn.init_theta`` or a file
      loaded with ``load_optimizer``.
    key: seeds the random initial per-element learning rates; defaults to
      ``PRNGKey(config.init_seed)``.
    kernel: the per-parameter pass as the compiled CPU kernel
      (``metatrain.optimizer.hrnn_kernel``): None (the default) when it is
      built and supports the config on a CPU backend, True (warns once
      where it cannot), False never. Its steps equal the pure-JAX ones to ~1e-6,
      but they have no derivatives: pass False to differentiate through
      the update.
    learning_rate: a float (or scalar array, as ``optax.inject_hyperparams``
      passes), or an optax schedule of the step count (``state.count``);
      None is ``config.init_lr``, the rate it was meta-trained at. The step
      scales linearly with it.
  """
  theta = jax.tree_util.tree_map(jax.numpy.asarray, theta)

  def init_fn(params: Any) -> hrnn.HRNNState:
    return hrnn.init_state(config, theta, params, key)

  def update_fn(updates: Any, state: hrnn.HRNNState, params: Any = None,
                **extra_args) -> tuple[Any, hrnn.HRNNState]:
    del extra_args
    lr = (learning_rate(state.count) if callable(learning_rate)
          else learning_rate)
    return hrnn.update(config, theta, state, updates, params, kernel=kernel,
                       learning_rate=lr)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
