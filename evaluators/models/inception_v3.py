"""Inception V3 in the ``keras.applications.InceptionV3`` layout.

Szegedy et al., "Rethinking the Inception Architecture for Computer Vision"
(CVPR 2016). Every conv is Keras' ``conv2d_bn``: a conv without bias, batch
norm without scale (``epsilon=1e-3``, momentum 0.99) and ReLU. The stem,
the blocks ``mixed0`` .. ``mixed10`` (with Keras' 'valid' paddings) and the
top (global average pool + Dense) match Keras layer for layer, so the
parameter count (params + batch stats) for 1000 classes is Keras'
23,851,784. As in Keras, 'same' average pools exclude the padding from the
average, and kernels use the Glorot-uniform initializer.

Optionally (``aux_logits=True``) an auxiliary classifier, as in the paper
and torchvision, reads ``mixed7``: 5x5/3 average pool, 1x1 conv to 128,
5x5 conv to 768 (both ``conv2d_bn``), global average pool and Dense. At
299x299 the 17x17 map pools to 5x5 and the 'valid' 5x5 conv gives 1x1, as
in the paper. Smaller inputs are adapted so the head always fits: the pool
window shrinks to the map size when the map is smaller than 5, and the 5x5
conv uses 'same' padding when the pooled map is smaller than 5 (the final
global pool then averages whatever is left). The parameter count of the
head does not depend on the input size.

Keras' minimum input size (75x75) works.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
_KERNEL_INIT = nn.initializers.glorot_uniform()  # Keras' default


class ConvBN(nn.Module):
  """Keras ``conv2d_bn``: conv (no bias), BatchNorm (no scale), ReLU.

  Attributes:
    features: output channels.
    kernel: (rows, cols) of the kernel.
    strides: conv strides.
    padding: 'SAME' or 'VALID'.
    dtype: computation dtype.
  """

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, self.kernel, strides=self.strides,
                padding=self.padding, use_bias=False,
                kernel_init=_KERNEL_INIT, dtype=self.dtype,
                param_dtype=jnp.float32, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                     epsilon=_BN_EPSILON, use_scale=False, dtype=self.dtype,
                     param_dtype=jnp.float32, name="bn")(x)
    return nn.relu(x)


def _max_pool(x: jax.Array) -> jax.Array:
  """Keras ``MaxPooling2D((3, 3), strides=(2, 2))`` ('valid')."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """Keras ``AveragePooling2D((3, 3), strides=(1, 1), padding='same')``."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME",
                     count_include_pad=False)


class InceptionV3(nn.Module):
  """Inception V3 image classifier, Keras layout, optional auxiliary head.

  Attributes:
    num_classes: number of output logits.
    aux_logits: add the auxiliary classifier on ``mixed7``; its logits are
      returned (as ``(logits, aux_logits)``) only when ``train=True``.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); params stay float32.
  """

  num_classes: int = 1000
  aux_logits: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    """Maps NHWC images to float32 logits (and aux logits, see class doc)."""
    cbn = functools.partial(ConvBN, dtype=self.dtype)

    def conv(y, name, features, kernel, strides=1, padding="SAME"):
      return cbn(features, kernel, strides, padding, name=name)(y, train)

    x = jnp.asarray(x, self.dtype)
    # Stem.
    x = conv(x, "stem_conv1", 32, (3, 3), 2, "VALID")
    x = conv(x, "stem_conv2", 32, (3, 3), padding="VALID")
    x = conv(x, "stem_conv3", 64, (3, 3))
    x = _max_pool(x)
    x = conv(x, "stem_conv4", 80, (1, 1), padding="VALID")
    x = conv(x, "stem_conv5", 192, (3, 3), padding="VALID")
    x = _max_pool(x)

    # mixed0, mixed1, mixed2: 35 x 35 x {256, 288, 288} at 299x299.
    for i, pool_features in enumerate((32, 64, 64)):
      n = f"mixed{i}"
      b1 = conv(x, f"{n}_1x1", 64, (1, 1))
      b5 = conv(x, f"{n}_5x5_1", 48, (1, 1))
      b5 = conv(b5, f"{n}_5x5_2", 64, (5, 5))
      b3 = conv(x, f"{n}_3x3dbl_1", 64, (1, 1))
      b3 = conv(b3, f"{n}_3x3dbl_2", 96, (3, 3))
      b3 = conv(b3, f"{n}_3x3dbl_3", 96, (3, 3))
      bp = conv(_avg_pool_same(x), f"{n}_pool", pool_features, (1, 1))
      x = jnp.concatenate([b1, b5, b3, bp], axis=-1)

    # mixed3: 17 x 17 x 768.
    b3 = conv(x, "mixed3_3x3", 384, (3, 3), 2, "VALID")
    bd = conv(x, "mixed3_3x3dbl_1", 64, (1, 1))
    bd = conv(bd, "mixed3_3x3dbl_2", 96, (3, 3))
    bd = conv(bd, "mixed3_3x3dbl_3", 96, (3, 3), 2, "VALID")
    x = jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)

    # mixed4 .. mixed7: 17 x 17 x 768, factorized 7x7 convs.
    for i, c in zip(range(4, 8), (128, 160, 160, 192)):
      n = f"mixed{i}"
      b1 = conv(x, f"{n}_1x1", 192, (1, 1))
      b7 = conv(x, f"{n}_7x7_1", c, (1, 1))
      b7 = conv(b7, f"{n}_7x7_2", c, (1, 7))
      b7 = conv(b7, f"{n}_7x7_3", 192, (7, 1))
      bd = conv(x, f"{n}_7x7dbl_1", c, (1, 1))
      bd = conv(bd, f"{n}_7x7dbl_2", c, (7, 1))
      bd = conv(bd, f"{n}_7x7dbl_3", c, (1, 7))
      bd = conv(bd, f"{n}_7x7dbl_4", c, (7, 1))
      bd = conv(bd, f"{n}_7x7dbl_5", 192, (1, 7))
      bp = conv(_avg_pool_same(x), f"{n}_pool", 192, (1, 1))
      x = jnp.concatenate([b1, b7, bd, bp], axis=-1)

    aux = None
    if self.aux_logits and (train or self.is_initializing()):
      aux = self._aux_head(x, conv)

    # mixed8: 8 x 8 x 1280.
    b3 = conv(x, "mixed8_3x3_1", 192, (1, 1))
    b3 = conv(b3, "mixed8_3x3_2", 320, (3, 3), 2, "VALID")
    b7 = conv(x, "mixed8_7x7x3_1", 192, (1, 1))
    b7 = conv(b7, "mixed8_7x7x3_2", 192, (1, 7))
    b7 = conv(b7, "mixed8_7x7x3_3", 192, (7, 1))
    b7 = conv(b7, "mixed8_7x7x3_4", 192, (3, 3), 2, "VALID")
    x = jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)

    # mixed9, mixed10: 8 x 8 x 2048.
    for i in (9, 10):
      n = f"mixed{i}"
      b1 = conv(x, f"{n}_1x1", 320, (1, 1))
      b3 = conv(x, f"{n}_3x3_1", 384, (1, 1))
      b3 = jnp.concatenate([conv(b3, f"{n}_3x3_2a", 384, (1, 3)),
                            conv(b3, f"{n}_3x3_2b", 384, (3, 1))], axis=-1)
      bd = conv(x, f"{n}_3x3dbl_1", 448, (1, 1))
      bd = conv(bd, f"{n}_3x3dbl_2", 384, (3, 3))
      bd = jnp.concatenate([conv(bd, f"{n}_3x3dbl_3a", 384, (1, 3)),
                            conv(bd, f"{n}_3x3dbl_3b", 384, (3, 1))], axis=-1)
      bp = conv(_avg_pool_same(x), f"{n}_pool", 192, (1, 1))
      x = jnp.concatenate([b1, b3, bd, bp], axis=-1)

    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT,
                      dtype=self.dtype, param_dtype=jnp.float32,
                      name="predictions")(x)
    logits = jnp.asarray(logits, jnp.float32)
    if train and aux is not None:
      return logits, aux
    return logits

  def _aux_head(self, x: jax.Array, conv) -> jax.Array:
    """Auxiliary classifier on ``mixed7``, adapted to small maps."""
    window = (min(5, x.shape[1]), min(5, x.shape[2]))
    x = nn.avg_pool(x, window, strides=(3, 3), padding="VALID")
    x = conv(x, "aux_conv1", 128, (1, 1))
    fits = x.shape[1] >= 5 and x.shape[2] >= 5
    x = conv(x, "aux_conv2", 768, (5, 5), padding="VALID" if fits else "SAME")
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT, dtype=self.dtype,
                 param_dtype=jnp.float32, name="aux_predictions")(x)
    return jnp.asarray(x, jnp.float32)
