"""The HRNN as a plain optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metatrain
from metatrain import hrnn

CFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), CFG)


def test_works_inside_optax_chain_and_jit():
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   metatrain.hrnn_optax(CFG, THETA))
  assert isinstance(metatrain.hrnn_optax(CFG, THETA),
                    optax.GradientTransformationExtraArgs)
  target = jnp.arange(6.0).reshape(2, 3)
  loss = lambda p: jnp.sum((p["w"] - target) ** 2)
  params = {"w": jnp.zeros((2, 3))}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    l, g = jax.value_and_grad(loss)(params)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state, l

  first = None
  for _ in range(100):
    params, state, l = step(params, state)
    first = l if first is None else first
  assert float(loss(params)) < float(first)


def test_extra_args_are_accepted():
  tx = metatrain.hrnn_optax(CFG, THETA)
  params = {"w": jnp.ones(4)}
  state = tx.init(params)
  u, _ = tx.update({"w": jnp.ones(4)}, state, params, value=jnp.asarray(1.0))
  assert u["w"].shape == (4,)


def test_key_changes_initial_learning_rates_of_the_paper_start():
  cfg = hrnn.HRNNConfig.paper()
  theta = hrnn.init_theta(jax.random.PRNGKey(0), cfg)
  params = {"w": jnp.ones(8)}
  s0 = metatrain.hrnn_optax(cfg, theta).init(params)
  s1 = metatrain.hrnn_optax(cfg, theta, key=jax.random.PRNGKey(7)).init(params)
  assert not np.allclose(np.asarray(s0.log_lr), np.asarray(s1.log_lr))


def test_default_start_is_deterministic_at_init_lr():
  params = {"w": jnp.ones(8)}
  s0 = metatrain.hrnn_optax(CFG, THETA).init(params)
  s1 = metatrain.hrnn_optax(CFG, THETA, key=jax.random.PRNGKey(7)).init(params)
  np.testing.assert_array_equal(np.asarray(s0.log_lr), np.asarray(s1.log_lr))
  np.testing.assert_allclose(np.exp(np.asarray(s0.log_lr)), CFG.init_lr,
                             rtol=1e-6)
