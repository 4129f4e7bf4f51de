"""The reference's ``Norm`` problem: a p-norm of a random linear residual.

``f(x) = (sum_i (|W x - y|_i + 1e-6)^p)^(1/p)`` with W (dim x dim) and y
standard normal and x initialized from N(0, 1), as in the reference's
``problem_generator.Norm``. The reference used p in {1, 1.5, 2, 2.5, 3}
(below 1 it saw NaN gradients early in training); here p is drawn per
instance, uniform in [1, 3], and kept in the instance's data, so it
costs no extra compilation. The loss is non-negative and, unlike the
quadratic, grows only linearly away from the optimum (its gradient does
not vanish near it for p = 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metatrain.tasks.base import (FnTask, TaskConfig, TaskFamily, choice,
                                  normal_tree, uniform)

EPSILON = 1e-6  # the reference's: keeps |r|^p differentiable at r = 0
POWER_RANGE = (1.0, 3.0)
DIMS = (18, 22, 27)  # the reference's Norm problems had dims 18-27
NOISES = (0.0, 0.1)  # the reference's noisy Norms: gradient noise 0.1


def p_norm(r: jax.Array, p: jax.Array, mask=None) -> jax.Array:
  """``(sum (|r| + EPSILON)^p)^(1/p)``, computed without overflow.

  Factoring out the largest entry m (a constant for autodiff: the value
  does not depend on m, so its derivative in m is zero) keeps every power
  at most 1, also for the huge residuals of a diverging optimizer. With a
  boolean ``mask``, over the entries where it is True.
  """
  a = jnp.abs(r) + EPSILON
  if mask is not None:
    a = jnp.where(mask, a, 0.0)
  m = jax.lax.stop_gradient(jnp.max(a))
  return m * jnp.sum((a / m) ** p) ** (1.0 / p)


def _build(cfg: TaskConfig) -> FnTask:
  dim = cfg.get("dim")

  def init(key):
    kz, kp = jax.random.split(key)
    z = normal_tree(kz, {"w": (dim, dim), "y": (dim,), "x": (dim,)})
    power = uniform(kp, (), *POWER_RANGE)
    return {"x": z["x"]}, {"w": z["w"], "y": z["y"], "p": power}

  def loss(params, data, key):
    del key
    return p_norm(data["w"] @ params["x"] - data["y"], data["p"])

  return FnTask(cfg, init, loss, grad_noise=cfg.get("noise", 0.0))


NORM = TaskFamily(
    "norm", "p-norm ||Wx - y||_p, W Gaussian, dims " +
    "/".join(map(str, DIMS)) + ", p uniform in [1, 3] per instance, "
    "gradient noise 0/0.1",
    lambda rng: {"dim": choice(rng, DIMS), "noise": choice(rng, NOISES)},
    _build,
    bucket_fn=lambda c: ({"dim": c.get("dim")},
                         {"noise": c.get("noise", 0.0)}))
