"""A tiny demo: the (untrained) HRNN and Adam train the same small problem."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

from metatrain.optimizer import hrnn
from metatrain.optimizer.optax_adapter import hrnn_optax


def _problem(key, n=512, dim=20):
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (n, dim))
  y = (x @ jax.random.normal(kw, (dim,)) > 0).astype(jnp.float32)

  def loss(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean(optax.sigmoid_binary_cross_entropy(h @ p["w2"] + p["b2"],
                                                       y))

  k1, k2 = jax.random.split(kw)
  params = {"w1": jax.random.normal(k1, (dim, 32)) / jnp.sqrt(dim),
            "b1": jnp.zeros((32,)),
            "w2": jax.random.normal(k2, (32,)) / jnp.sqrt(32.0),
            "b2": jnp.zeros(())}
  return loss, params


def train(tx: optax.GradientTransformation, loss, params, steps: int):
  """Trains with ``tx`` for ``steps``; returns the loss curve."""
  state = tx.init(params)

  def body(carry, _):
    p, s = carry
    l, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), l

  _, losses = jax.jit(lambda c: jax.lax.scan(body, c, None, steps))(
      (params, state))
  return losses


def run(steps: int = 300, seed: int = 0, theta=None,
        config: hrnn.HRNNConfig | None = None) -> dict[str, float]:
  """Runs the demo and prints both losses; returns the final losses."""
  config = config or hrnn.HRNNConfig()
  if theta is None:
    theta = hrnn.init_theta(jax.random.PRNGKey(seed), config)
  loss, params = _problem(jax.random.PRNGKey(seed + 1))
  print(f"demo: 2-layer tanh MLP, 512 examples, {steps} full-batch steps")
  out = {}
  for name, tx in [("hrnn (untrained)", hrnn_optax(config, theta)),
                   ("adam lr=1e-3", optax.adam(1e-3))]:
    t0 = time.time()
    losses = train(tx, loss, params, steps)
    out[name] = float(losses[-1])
    print(f"  {name:18s} loss {float(losses[0]):.4f} -> {float(losses[-1]):.4f}"
          f"  ({time.time() - t0:.1f}s incl. compile)")
  return out
