"""Retina models: the CNN of McIntosh et al. (2016) and an LN baseline.

Both map a stimulus history ``[B, H, W, T]`` (frames as channels, oldest
first) to non-negative firing rates ``[B, num_cells]`` through a softplus,
and are fit with the Poisson loss.

McIntosh et al. used 8 filters of 15x15 then 8 of 11x11 on 50x50 stimuli
(40 frames of history); the defaults here scale those sizes to the 16x16
grid of ``evaluators.retina_sim`` (15 * 16 / 50 = 4.8 and 11 * 16 / 50 = 3.5,
rounded to the odd sizes 5 and 3).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_EPS = 1e-6  # added to rates inside the log of the Poisson loss


def _readout(num_cells: int) -> nn.Dense:
  # A zero kernel starts every rate at the constant softplus(0). With the
  # default (LeCun normal) readout, Adam at 3e-3 often left the CNN near zero
  # held-out correlation for the first ~200 steps on the simulated retina.
  return nn.Dense(num_cells, kernel_init=nn.initializers.zeros)


class RetinaCNN(nn.Module):
  """Two ReLU conv layers ('VALID'), a dense readout and a softplus.

  The readout kernel starts at zero (every rate starts at softplus(0)).

  Attributes:
    num_cells: number of output rates.
    channels: filters of each conv layer.
    kernel_sizes: square kernel size of each conv layer.
    noise_std: std of Gaussian noise added to the hidden units when
      ``train=True`` (a regulariser in McIntosh et al.); 0 disables it. When
      positive, ``apply`` needs a ``"noise"`` rng in training.
  """

  num_cells: int
  channels: Sequence[int] = (8, 8)
  kernel_sizes: Sequence[int] = (5, 3)
  noise_std: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if len(self.channels) != len(self.kernel_sizes):
      raise ValueError("channels and kernel_sizes must have the same length")
    for c, k in zip(self.channels, self.kernel_sizes):
      x = nn.relu(nn.Conv(c, (k, k), padding="VALID")(x))
      if train and self.noise_std > 0:
        noise = jax.random.normal(self.make_rng("noise"), x.shape, x.dtype)
        x = x + self.noise_std * noise
    x = x.reshape(x.shape[0], -1)
    return nn.softplus(_readout(self.num_cells)(x))


class LNModel(nn.Module):
  """Linear-nonlinear model: one spatiotemporal filter per cell, softplus.

  Attributes:
    num_cells: number of output rates.
  """

  num_cells: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no stochastic parts
    x = x.reshape(x.shape[0], -1)
    return nn.softplus(_readout(self.num_cells)(x))


def poisson_loss(rates: jax.Array, spikes: jax.Array) -> jax.Array:
  """Mean Poisson negative log-likelihood of spike counts given rates.

  ``rate - k log(rate + eps) + lgamma(k + 1)``, averaged over all entries.
  The ``lgamma`` term (constant in the rates) makes it the exact NLL for
  integer counts ``k``, so it is >= 0 (up to ``eps``) and 0 only for a
  perfect deterministic fit; it stays finite for zero rates and for
  non-integer (trial-averaged) targets.
  """
  spikes = spikes.astype(rates.dtype)
  nll = (rates - spikes * jnp.log(rates + _EPS) +
         jax.lax.lgamma(spikes + 1.0))
  return jnp.mean(nll)


def cell_correlations(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Pearson correlation over time of each cell, ``[T, N] -> [N]``.

  Cells where either series has zero variance get 0, never NaN.
  """
  p = pred - jnp.mean(pred, axis=0)
  t = target - jnp.mean(target, axis=0)
  pp, tt = jnp.sum(p * p, axis=0), jnp.sum(t * t, axis=0)
  ok = (pp > 0) & (tt > 0)
  denom = jnp.sqrt(jnp.where(ok, pp * tt, 1.0))
  return jnp.where(ok, jnp.sum(p * t, axis=0) / denom, 0.0)


def mean_correlation(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean over cells of the Pearson correlation of ``[T, N]`` series."""
  return jnp.mean(cell_correlations(pred, target))
