"""Small ConvNets and MLPs like the paper's MNIST and CIFAR-10 models."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvNet(nn.Module):
  """3x3 ReLU convolutions, each followed by 2x2 max-pooling, global average
  pooling and a linear classifier (the paper's small ConvNets)."""

  # Small on purpose: XLA:CPU convolutions are slow, and the `small` suite
  # trains this model ~26 times per checkpoint (16,32,32 at batch 128 cost
  # 5x more per step on a 2-core CPU).
  channels: Sequence[int] = (8, 16, 32)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for c in self.channels:
      x = nn.relu(nn.Conv(c, (3, 3), padding="SAME")(x))
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
  """A fully connected ReLU network on flattened inputs."""

  hidden: Sequence[int] = (100, 100)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1))
    for h in self.hidden:
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(self.num_classes)(x)
