"""The simulated-retina evaluation tasks (McIntosh et al. 2016).

``retina_cnn`` and ``retina_ln`` fit the retina CNN and its LN baseline to
simulated ganglion cells driven by white noise; the ``_natural`` variants
use 1/f natural-like movies. The final loss is the Poisson loss on a fixed
set of training windows; the metric is the mean correlation between the
predicted rates and the held-out, trial-averaged responses.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from evaluators import retina_sim
from evaluators.models import retina_cnn
from evaluators.runner import Problem

_TRAIN_EVAL_SEED = 2016  # the fixed training windows of the final loss


def sim_config(name: str) -> retina_sim.RetinaSimConfig:
  return retina_sim.RetinaSimConfig(
      stimulus="natural" if name.endswith("_natural") else "white")


def build(name: str, settings: dict) -> Problem:
  """The problem for ``retina_{cnn,ln}[_natural]``."""
  sim = sim_config(name)
  data = retina_sim.simulate_retina(sim)
  cells = data.config.num_cells
  model = (retina_cnn.RetinaCNN(num_cells=cells) if "_cnn" in name
           else retina_cnn.LNModel(num_cells=cells))
  bs = settings["batch_size"]
  n_eval = min(settings["eval_examples"], data.train_spikes.shape[0])
  shape = (1, sim.size, sim.size, sim.history)

  def init(k):
    return model.init(k, jnp.zeros(shape, jnp.float32))["params"], {}

  def loss(params, aux, batch, k):
    del k
    rates = model.apply({"params": params}, batch["stimulus"], train=True)
    return retina_cnn.poisson_loss(rates, batch["spikes"]), aux

  def evaluate(params, aux, batch):
    del aux
    rate = lambda x: model.apply({"params": params}, x)
    test, train = batch["test"], batch["train"]
    pred = rate(test["stimulus"])
    return {"loss": retina_cnn.poisson_loss(rate(train["stimulus"]),
                                            train["spikes"]),
            "test_loss": retina_cnn.poisson_loss(pred, test["rate_mean"]),
            "correlation": retina_cnn.mean_correlation(pred,
                                                       test["rate_mean"])}

  def eval_batches():
    train = next(retina_sim.retina_batches(data, n_eval, _TRAIN_EVAL_SEED))
    test = retina_sim.retina_test_set(data)
    return [{"train": train,
             "test": {"stimulus": np.asarray(test["stimulus"]),
                      "rate_mean": np.asarray(test["rate_mean"])}}]

  return Problem(
      name=name, key=(name, bs, n_eval, sim),
      init=init, loss=loss,
      batches=lambda seed: retina_sim.retina_batches(data, bs, seed),
      evaluate=evaluate, eval_batches=eval_batches,
      metric="correlation", higher_is_better=True)
