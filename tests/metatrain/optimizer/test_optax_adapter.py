"""The HRNN as a plain optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metatrain
from metatrain.optimizer import hrnn

CFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), CFG)


def test_works_inside_optax_chain_and_jit_and_is_adam_step_by_step():
  # The untrained default *is* optax.adam(1e-3): compared step by step to
  # float tolerance, alone and inside optax.chain, under jit.
  target = jnp.arange(6.0).reshape(2, 3)
  loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum(jnp.sin(p["b"]))
  params = {"w": jnp.zeros((2, 3)), "b": jnp.linspace(-1.0, 1.0, 5)}
  assert isinstance(metatrain.hrnn_optax(CFG, THETA),
                    optax.GradientTransformationExtraArgs)
  for wrap in (lambda tx: tx,
               lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx)):
    txs = [wrap(metatrain.hrnn_optax(CFG, THETA)), wrap(optax.adam(1e-3))]

    @jax.jit
    def step(params, states):
      g = jax.grad(loss)(params)
      ups, new = zip(*[tx.update(g, s, params) for tx, s in zip(txs, states)])
      return ups, new

    states = [tx.init(params) for tx in txs]
    p = params
    for _ in range(50):
      (u_hrnn, u_adam), states = step(p, states)
      for a, b in zip(jax.tree_util.tree_leaves(u_hrnn),
                      jax.tree_util.tree_leaves(u_adam)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                   atol=1e-10)
      p = optax.apply_updates(p, u_adam)
    assert float(loss(p)) < float(loss(params))


def test_extra_args_are_accepted():
  tx = metatrain.hrnn_optax(CFG, THETA)
  params = {"w": jnp.ones(4)}
  state = tx.init(params)
  u, _ = tx.update({"w": jnp.ones(4)}, state, params, value=jnp.asarray(1.0))
  # Adam's first step, -lr * g / (|g| + eps), whatever the extra args (to
  # the float32 rounding of its bias corrections, as optax.adam's).
  np.testing.assert_allclose(np.asarray(u["w"]), -1e-3 * np.ones(4),
                             rtol=1e-5)


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
