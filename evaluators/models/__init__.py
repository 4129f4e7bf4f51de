"""Flax linen image-classification models for the evaluators."""

from __future__ import annotations

import math
from typing import Any

import jax

from evaluators.models.inception_v3 import InceptionV3
from evaluators.models.resnet_v2 import ResNetV2, resnet_v2
from evaluators.models.retina_cnn import LNModel, RetinaCNN


def count_params(variables: Any) -> int:
  """Counts the array elements of a variables pytree (params + batch stats).

  Works on real arrays and on ``jax.eval_shape`` outputs alike; this equals
  Keras' total parameter count (trainable + non-trainable).
  """
  leaves = jax.tree_util.tree_leaves(variables)
  return sum(math.prod(leaf.shape) for leaf in leaves)


__all__ = [
    "InceptionV3", "LNModel", "ResNetV2", "RetinaCNN", "count_params",
    "resnet_v2"
]
