"""The evaluation tasks: models, data and losses as runner ``Problem`` s.

Task names (``lopt evaluate --suite ...`` picks a list of them):

* ``fmnist_convnet``, ``fmnist_mlp``, ``digits_convnet``, ``digits_mlp``:
  small classifiers; final loss = training loss on a fixed training subset,
  metric = test accuracy.
* ``resnet50_v2`` (also 101, 152) and ``inception_v3``: ImageNet with
  Inception preprocessing; final loss = mean training loss over the last
  tenth of the run, metric = validation accuracy.
* ``retina_cnn``, ``retina_ln`` (``_natural`` for 1/f stimuli): the
  simulated retina; final loss = Poisson loss on a fixed training subset,
  metric = correlation with held-out trial-averaged responses.
* ``validation:<i>``: the i-th validation configuration (model selection:
  neither trained on nor a test task).
* ``vimage:<i>``: the i-th validation configuration of the real-image
  families (``image_mlp``, ``image_conv``), for model selection as
  ``validation``.
* ``heldout:<i>``: the i-th held-out configuration of the meta-training
  ensemble (``metatrain.tasks.holdout_configs``); final loss = exact
  full-batch loss, metric = meta-training's meta-objective (lower is
  better).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from evaluators import data
from evaluators.runner import Problem
from metatrain.training import unroll
from metatrain.tasks import (build_task, default_ensemble, holdout_configs,
                             image_validation_ensemble, validation_configs)

SMALL = {
    "fmnist_convnet": ("fashion_mnist", "convnet"),
    "fmnist_mlp": ("fashion_mnist", "mlp"),
    "digits_convnet": ("digits", "convnet"),
    "digits_mlp": ("digits", "mlp"),
}
IMAGENET = ("resnet50_v2", "resnet101_v2", "resnet152_v2", "inception_v3")
RETINA = ("retina_cnn", "retina_ln", "retina_cnn_natural",
          "retina_ln_natural")


def known_tasks() -> list[str]:
  return [*SMALL, *IMAGENET, *RETINA, "heldout:<i>", "validation:<i>",
          "vimage:<i>"]


def _ce(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def classifier(name: str, key: tuple, model, input_shape, *, batches,
               eval_batches=None, aux_weight: float = 0.4) -> Problem:
  """A softmax classifier over ``{"image", "label"}`` batches.

  Eval batches are ``{"test": batch}`` or ``{"train": batch, "test":
  batch}``; the train part gives the final ``loss``.
  """

  def init(k):
    v = model.init(k, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    v = dict(v)
    params = v.pop("params")
    return params, v

  def loss(params, state, batch, k):
    del k
    if state:
      out, new_state = model.apply({"params": params, **state},
                                   batch["image"], train=True,
                                   mutable=list(state))
    else:
      out, new_state = model.apply({"params": params}, batch["image"],
                                   train=True), state
    if isinstance(out, tuple):  # (logits, auxiliary logits)
      return (_ce(out[0], batch["label"]) +
              aux_weight * _ce(out[1], batch["label"])), dict(new_state)
    return _ce(out, batch["label"]), dict(new_state)

  def evaluate(params, state, batch):
    def logits(x):
      return model.apply({"params": params, **state}, x, train=False)
    test = batch["test"]
    lt = logits(test["image"]).astype(jnp.float32)
    # A padded last batch marks its real examples in "mask".
    w = test.get("mask", jnp.ones(lt.shape[:1], bool)).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(lt, test["label"])
    hit = (jnp.argmax(lt, -1) == test["label"]).astype(jnp.float32)
    m = {"test_loss": jnp.sum(w * ce) / n,
         "accuracy": jnp.sum(w * hit) / n, "weight": jnp.sum(w)}
    if "train" in batch:
      m["loss"] = _ce(logits(batch["train"]["image"]),
                      batch["train"]["label"])
    return m

  return Problem(name=name, key=key, init=init, loss=loss, batches=batches,
                 evaluate=evaluate if eval_batches is not None else None,
                 eval_batches=eval_batches, metric="accuracy",
                 higher_is_better=True)


def _subset(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  return {k: v[:n] for k, v in arrays.items()}


def _small(name: str, settings: dict[str, Any]) -> Problem:
  from evaluators.models import convnets  # pylint: disable=import-outside-toplevel
  dataset, arch = SMALL[name]
  if dataset == "fashion_mnist":
    arrays = functools.partial(data.fashion_mnist_arrays,
                               data_dir=settings["data_dir"])
  else:
    arrays = data.digits_arrays
  train, test = arrays("train"), arrays("test")  # fail early if missing
  n_eval = settings["eval_examples"]
  model = (convnets.ConvNet() if arch == "convnet" else convnets.MLP())
  bs = min(settings["batch_size"], len(train["label"]))
  return classifier(
      name, (name, bs, n_eval), model, train["image"].shape[1:],
      batches=lambda seed: data.array_batches(arrays("train"), bs, seed),
      eval_batches=lambda: [{"train": _subset(train, n_eval),
                             "test": _subset(test, n_eval)}])


def imagenet_model(name: str, dtype: str = "float32"):
  """``(flax module, default resolution)`` of an ImageNet task."""
  from evaluators import imagenet  # pylint: disable=import-outside-toplevel
  from evaluators.models import InceptionV3, ResNetV2  # pylint: disable=import-outside-toplevel
  if name == "inception_v3":
    return InceptionV3(num_classes=imagenet.NUM_CLASSES, aux_logits=True,
                       dtype=jnp.dtype(dtype)), 299
  depth = int(name[len("resnet"):-len("_v2")])
  return ResNetV2(depth=depth, num_classes=imagenet.NUM_CLASSES,
                  dtype=jnp.dtype(dtype)), 224


def _imagenet(name: str, settings: dict[str, Any]) -> Problem:
  from evaluators import imagenet  # pylint: disable=import-outside-toplevel
  model, size = imagenet_model(name, settings["dtype"])
  size = settings["image_size"] or size
  bs, n_eval, data_dir = (settings["batch_size"], settings["eval_examples"],
                          settings["data_dir"])
  # Fail now, naming the command that prepares the data, not mid-run.
  imagenet.num_examples("train", data_dir or None)

  def eval_batches():
    it = imagenet.batches("validation", batch_size=bs, image_size=size,
                          data_dir=data_dir or None, train=False)
    for i, b in enumerate(it):
      if i * bs >= n_eval:
        break
      yield {"test": b}

  return classifier(
      name, (name, bs, size, n_eval, settings["dtype"]), model,
      (size, size, 3),
      batches=lambda seed: imagenet.batches(
          "train", batch_size=bs, image_size=size, data_dir=data_dir or None,
          seed=seed, train=True),
      eval_batches=eval_batches)


def _heldout(name: str) -> Problem:
  kind = name.split(":", 1)[0]
  try:
    i = int(name.split(":", 1)[1])
    if i < 0:
      raise ValueError
  except ValueError:
    raise ValueError(f"bad {kind} task {name!r}: use {kind}:<index>, "
                     f"e.g. {kind}:0") from None
  if kind == "heldout":
    tc = holdout_configs(i + 1, default_ensemble())[i]
  elif kind == "validation":
    tc = validation_configs(i + 1, default_ensemble())[i]
  else:  # vimage: validation configs of the real-image families
    tc = validation_configs(i + 1, image_validation_ensemble())[i]
  task = build_task(tc)

  def init(k):
    return task.init(unroll.init_key(k))

  def loss(params, task_data, batch, k):
    del batch
    return task.loss(params, task_data, k), task_data

  def loss_and_grad(params, task_data, batch, k):
    del batch
    value, grads = task.loss_and_grad(params, task_data, k)
    return (value, task_data), grads

  return Problem(name=f"{name} {tc.name}", key=(kind, tc.to_json()),
                 init=init, loss=loss, loss_and_grad=loss_and_grad,
                 track=task.full_loss, metric="meta_objective",
                 higher_is_better=False)


@functools.lru_cache(maxsize=64)
def _cached(name: str, frozen: tuple) -> Problem:
  settings = dict(frozen)
  if name in SMALL:
    return _small(name, settings)
  if name in IMAGENET:
    return _imagenet(name, settings)
  if name in RETINA:
    from evaluators import retina_problems  # pylint: disable=import-outside-toplevel
    return retina_problems.build(name, settings)
  if name.startswith(("heldout:", "validation:", "vimage:")):
    return _heldout(name)
  raise ValueError(f"unknown evaluation task {name!r}; known: "
                   f"{', '.join(known_tasks())}")


def build(name: str, **settings: Any) -> Problem:
  """The problem for task ``name`` (cached: equal settings, same object).

  Settings: ``batch_size``, ``eval_examples``, ``image_size`` (0: the
  model's default), ``dtype``, ``data_dir``.
  """
  defaults = {"batch_size": 128, "eval_examples": 2000, "image_size": 0,
              "dtype": "float32", "data_dir": ""}
  unknown = set(settings) - set(defaults)
  if unknown:
    raise TypeError(f"unknown problem settings {sorted(unknown)}")
  merged = {**defaults, **settings}
  return _cached(name, tuple(sorted(merged.items())))


def task_key(problem: Problem) -> str:
  """A stable string identity of a problem's settings (for records)."""
  return repr(problem.key)

