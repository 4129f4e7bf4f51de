"""Pre-activation ResNet (ResNet V2) in the Keras ``ResNet50V2`` layout.

He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016), laid
out exactly like ``keras.applications.ResNet50V2/101V2/152V2`` (which follow
TF-slim), so that parameter counts and shapes match Keras one to one:

* stem: zero-pad 3, 7x7/2 conv *with* bias, zero-pad 1, 3x3/2 max-pool (no
  BN or ReLU in the stem: the first block pre-activates);
* four stacks of bottleneck blocks with 64, 128, 256, 512 filters; the
  *last* block of each of the first three stacks has stride 2 (not the
  first block, as in the original paper's code);
* each block: BN + ReLU pre-activation; a shortcut that is a biased 1x1
  conv of the pre-activation (first block of a stack), a 1x1/stride
  max-pool of the block input (strided blocks) or the identity; then
  1x1 conv, BN, ReLU, 3x3 conv (stride), BN, ReLU, biased 1x1 conv to
  ``4 * filters``, and the sum with the shortcut;
* head: BN + ReLU, global average pool, Dense.

Batch norm uses Keras' ``epsilon=1.001e-5`` and momentum 0.99 (the same
convention in flax and Keras). Kernels use Keras' default Glorot-uniform
initializer and zero biases.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# Blocks per stack for each supported depth (Keras ResNet{50,101,152}V2).
STAGE_SIZES: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_FILTERS = (64, 128, 256, 512)
_BN_EPSILON = 1.001e-5
_BN_MOMENTUM = 0.99
_KERNEL_INIT = nn.initializers.glorot_uniform()  # Keras' default


def _zero_pad(x: jax.Array, pad: int) -> jax.Array:
  """Zero-pads the two spatial dimensions of an NHWC array (ZeroPadding2D)."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


class BottleneckV2(nn.Module):
  """One pre-activation bottleneck block (Keras ``block2``).

  Attributes:
    filters: bottleneck width; the block outputs ``4 * filters`` channels.
    stride: stride of the 3x3 conv (and of the max-pool shortcut).
    conv_shortcut: use a biased 1x1 conv shortcut (first block of a stack).
    dtype: computation dtype.
  """

  filters: int
  stride: int = 1
  conv_shortcut: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(
        nn.Conv, kernel_init=_KERNEL_INIT, dtype=self.dtype,
        param_dtype=jnp.float32)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON, dtype=self.dtype, param_dtype=jnp.float32)

    preact = nn.relu(norm(name="preact_bn")(x))
    if self.conv_shortcut:
      shortcut = conv(4 * self.filters, (1, 1), strides=self.stride,
                      padding="VALID", name="0_conv")(preact)
    elif self.stride > 1:
      # Keras: MaxPooling2D(1, strides=stride), i.e. plain subsampling.
      shortcut = x[:, ::self.stride, ::self.stride, :]
    else:
      shortcut = x

    y = conv(self.filters, (1, 1), use_bias=False, name="1_conv")(preact)
    y = nn.relu(norm(name="1_bn")(y))
    # Keras: ZeroPadding2D(1) followed by a 'valid' strided 3x3 conv.
    y = conv(self.filters, (3, 3), strides=self.stride,
             padding=((1, 1), (1, 1)), use_bias=False, name="2_conv")(y)
    y = nn.relu(norm(name="2_bn")(y))
    y = conv(4 * self.filters, (1, 1), name="3_conv")(y)
    return shortcut + y


class ResNetV2(nn.Module):
  """ResNet V2 image classifier, Keras ``ResNet{50,101,152}V2`` layout.

  Attributes:
    depth: 50, 101 or 152.
    num_classes: number of output logits.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); params stay float32.
  """

  depth: int = 50
  num_classes: int = 1000
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.depth not in STAGE_SIZES:
      raise ValueError(
          f"ResNetV2 depth must be one of {sorted(STAGE_SIZES)}, "
          f"got {self.depth!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps NHWC images ``x`` to float32 logits of shape (batch, classes)."""
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(64, (7, 7), strides=2, padding=((3, 3), (3, 3)),
                kernel_init=_KERNEL_INIT, dtype=self.dtype,
                param_dtype=jnp.float32, name="conv1_conv")(x)
    # Keras pads with zeros (not -inf) before the stem max-pool.
    x = nn.max_pool(_zero_pad(x, 1), (3, 3), strides=(2, 2), padding="VALID")

    stages = STAGE_SIZES[self.depth]
    for s, (filters, blocks) in enumerate(zip(_FILTERS, stages)):
      last_stride = 1 if s == len(stages) - 1 else 2
      for b in range(blocks):
        x = BottleneckV2(
            filters,
            stride=last_stride if b == blocks - 1 else 1,
            conv_shortcut=b == 0,
            dtype=self.dtype,
            name=f"conv{s + 2}_block{b + 1}")(x, train)

    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                     epsilon=_BN_EPSILON, dtype=self.dtype,
                     param_dtype=jnp.float32, name="post_bn")(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT, dtype=self.dtype,
                 param_dtype=jnp.float32, name="predictions")(x)
    return jnp.asarray(x, jnp.float32)


def resnet_v2(depth: int = 50, **kwargs: Any) -> ResNetV2:
  """Returns a ``ResNetV2`` of the given depth (50, 101 or 152).

  Args:
    depth: network depth; anything else raises ``ValueError``.
    **kwargs: other ``ResNetV2`` fields (``num_classes``, ``dtype``).
  """
  return ResNetV2(depth=depth, **kwargs)
