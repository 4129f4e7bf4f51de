"""Configs, families' sampling, the ensemble and the held-out configs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatrain import tasks
from metatrain.tasks import TaskConfig, build_task, ensemble
from metatrain.tasks.base import log_uniform

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(tasks.__file__))))
EXPECTED_FAMILIES = {"quadratic", "large_quadratic", "bowl", "sparse_bowl",
                     "fn2d", "norm", "logistic", "mlp", "matmul_algorithm",
                     "sum"}
# Registered, sampled only where weighted (the v2 preset).
IMAGE_FAMILIES = {"image_mlp", "image_conv"}
EXPECTED_TRANSFORMS = {"rescale", "param_scale", "log_objective",
                       "gradient_noise", "sparse"}
# The held-out TEST tasks, fixed before norm, sparse_bowl, param_scale and
# sums of 2-11 parts joined the ensemble; recorded benchmarks refer to them.
HOLDOUT_NAMES = [
    "logistic(dim=100,sep=1.5,batch=50,noise=0)",
    "fn2d(fn=beale,noise=1)",
    "log_objective(rescale[scale=2](quadratic(dim=50,noise=0.5)))",
    "log_objective(logistic(dim=256,sep=1.5,batch=32,noise=0))",
    "logistic(dim=256,sep=1,batch=32,noise=0)",
    "bowl(cond=1,angle=0,noise=0.1)",
    "quadratic(dim=25,noise=1)",
    "matmul_algorithm(n=3,k=22,batch=32)",
    "large_quadratic(dim=784,log10_cond=4)",
    "quadratic(dim=25,noise=0.5)",
    "fn2d(fn=matyas,noise=1)",
    "large_quadratic(dim=2048,log10_cond=3)",
    "bowl(cond=0.1,angle=0,noise=0.5)",
    "log_objective(sum(parts=quadratic(dim=11,noise=1) + "
    "quadratic(dim=11,noise=2)))",
    "matmul_algorithm(n=2,k=7,batch=32)",
    "quadratic(dim=25,noise=1)",
]
# Without MLPs, entries 7, 11 and 13 differ.
HOLDOUT_NAMES_NO_MLP = HOLDOUT_NAMES[:7] + [
    "logistic(dim=256,sep=2,batch=50,noise=0.5)"] + HOLDOUT_NAMES[8:11] + [
        "quadratic(dim=100,noise=1)"] + HOLDOUT_NAMES[12:13] + [
            "sparse[p=0.99](matmul_algorithm(n=3,k=23,batch=32))"] + \
    HOLDOUT_NAMES[14:]


def test_registries():
  assert set(tasks.FAMILIES) == EXPECTED_FAMILIES | IMAGE_FAMILIES
  assert set(tasks.TRANSFORMS) == EXPECTED_TRANSFORMS
  for name, fam in tasks.FAMILIES.items():
    assert fam.name == name and fam.description
  for name, t in tasks.TRANSFORMS.items():
    assert t.name == name and t.description


def _same_structure(a, b):
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
          and all(x.shape == y.shape and x.dtype == y.dtype for x, y in
                  zip(jax.tree_util.tree_leaves(a),
                      jax.tree_util.tree_leaves(b))))


def test_every_family_samples_and_builds_with_stable_shapes():
  """Shape-level checks of sampled (full-size) configs; nothing compiles."""
  rng = np.random.default_rng(0)
  for name, fam in tasks.FAMILIES.items():
    for _ in range(3):
      cfg = fam.sample(rng)
      assert cfg.family == name
      json.dumps(cfg.to_dict())  # static settings are JSON-safe
      task = build_task(cfg)
      assert task.config == cfg and build_task(cfg) is task  # cached
      k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
      p1, d1 = jax.eval_shape(task.init, k1)
      p2, d2 = jax.eval_shape(task.init, k2)
      assert _same_structure((p1, d1), (p2, d2))
      assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p1))
      loss, grads = jax.eval_shape(task.loss_and_grad, p1, d1, k1)
      assert loss.shape == () and loss.dtype == jnp.float32
      assert _same_structure(grads, p1)
      full = jax.eval_shape(task.full_loss, p1, d1)
      assert full.shape == () and full.dtype == jnp.float32


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="unknown task family"):
    tasks.Ensemble((("nope", 1.0),))
  with pytest.raises(ValueError, match="unknown task family"):
    build_task(TaskConfig("nope"))
  with pytest.raises(ValueError, match="unknown task transform"):
    build_task(TaskConfig("bowl", (("cond", 1.0),), (("nope", ()),)))
  with pytest.raises(ValueError, match="unknown task transform"):
    tasks.Ensemble((("bowl", 1.0),), (("nope", 0.5),))
  with pytest.raises(ValueError, match="not in"):
    tasks.Ensemble((("bowl", 1.0),), (("sparse", 1.5),))
  with pytest.raises(ValueError, match="sum to zero"):
    tasks.Ensemble((("bowl", 0.0),))
  with pytest.raises(ValueError, match="unknown 2-D function"):
    build_task(TaskConfig("fn2d", (("fn", "nope"), ("noise", 0.0))))
  with pytest.raises(TypeError):
    TaskConfig("bowl", (("cond", {1, 2}),))  # unhashable value
  nope = tasks.TaskFamily("nope", "", lambda rng: {}, lambda c: None)
  with pytest.raises(ValueError, match="override of unknown"):
    tasks.Ensemble((("bowl", 1.0),), overrides=(nope,))


def test_config_round_trip_name_and_hash():
  ens = tasks.default_ensemble()
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(300):
    c = ens.sample(rng)
    d = json.loads(json.dumps(c.to_dict()))
    assert TaskConfig.from_dict(d) == c
    assert TaskConfig.from_json(c.to_json()) == c
    assert hash(TaskConfig.from_dict(d)) == hash(c)
    assert c.name.startswith(c.transforms[-1][0] if c.transforms
                             else c.family)
    seen.add(c)
  # Sampled transforms: all present, in the fixed order.
  names = [t for c in seen for t, _ in c.transforms]
  assert set(names) == EXPECTED_TRANSFORMS
  order = tasks.transforms.ORDER
  for c in seen:
    idx = [order.index(t) for t, _ in c.transforms]
    assert idx == sorted(idx)
    if "sparse" in dict(c.transforms):  # never on tiny (e.g. 2-D) problems
      assert ensemble.num_params(c) >= ensemble.SPARSE_MIN_PARAMS
      assert c.family not in ensemble.SPARSE_FAMILIES  # nor sparse twice
  parts = (TaskConfig("bowl", (("cond", 5.0),)),
           TaskConfig("quadratic", (("dim", 3),)))
  cfg = TaskConfig("sum", (("parts", parts),),
                   (("rescale", (("scale", 10.0),)),))
  assert cfg.name == "rescale[scale=10](sum(parts=bowl(cond=5) + " \
                     "quadratic(dim=3)))"
  assert TaskConfig.from_dict(cfg.to_dict()) == cfg
  assert cfg.get("missing", 7) == 7
  assert TaskConfig("mlp", [("hidden", [8, 4])]).get("hidden") == (8, 4)


def test_sampled_static_settings_come_from_small_sets():
  """Each distinct config is a jit compilation: the space must stay small."""
  ens = tasks.default_ensemble()
  rng = np.random.default_rng(1)
  values = {}
  for _ in range(2000):
    c = ens.sample(rng)
    for t, settings in c.transforms:
      for k, v in settings:
        values.setdefault((t, k), set()).add(v)
    if c.family not in ("sum", "mlp"):
      for k, v in c.params:
        values.setdefault((c.family, k), set()).add(v)
  assert all(len(v) <= 40 for v in values.values()), {
      k: len(v) for k, v in values.items()}
  scales = values[("rescale", "scale")]
  assert min(scales) >= 0.1 and max(scales) <= 1000 and len(scales) > 15
  assert values[("sparse", "p")] == {0.99}
  assert values[("quadratic", "dim")] == {20, 25, 50, 100}
  assert values[("large_quadratic", "dim")] == {784, 1024, 2048}
  assert values[("bowl", "cond")] == {0.1, 1.0, 5.0}
  assert values[("logistic", "dim")] == {10, 100, 200, 256}
  assert all(20 <= b <= 100 for b in values[("logistic", "batch")])
  assert values[("fn2d", "fn")] == set(tasks.functions2d.FUNCTIONS)
  assert values[("fn2d", "noise")] == {0.0, 1.0}
  assert values[("norm", "dim")] == {18, 22, 27}
  assert values[("norm", "noise")] == {0.0, 0.1}
  assert values[("sparse_bowl", "copies")] == {1, 16, 64}
  assert values[("sparse_bowl", "p")] == {0.9, 0.99}
  ks = {(n, k) for n in values[("matmul_algorithm", "n")]
        for k in values[("matmul_algorithm", "k")]}
  assert {k for n, k in ks} == set(range(5, 9)) | set(range(19, 25))
  r = np.random.default_rng(0)
  draws = [log_uniform(r, 0.1, 1000.0) for _ in range(2000)]
  assert min(draws) >= 0.1 and max(draws) <= 1000
  assert 0.4 < np.mean(np.log10(draws)) < 1.6  # log-uniform: mean log ~ 1


def test_sparse_is_skipped_for_tiny_and_already_sparse_tasks():
  ens = tasks.Ensemble((("bowl", 1.0), ("quadratic", 1.0),
                        ("sparse_bowl", 1.0)),
                       transform_probs=(("sparse", 1.0),))
  rng = np.random.default_rng(0)
  samples = [ens.sample(rng) for _ in range(60)]
  assert {c.family for c in samples} == {"bowl", "quadratic", "sparse_bowl"}
  for c in samples:
    assert bool(c.transforms) == (c.family == "quadratic"), c.name
  assert any(ensemble.num_params(c) >= ensemble.SPARSE_MIN_PARAMS
             for c in samples if c.family == "sparse_bowl")
  assert ensemble.num_params(TaskConfig("bowl", (("cond", 1.0),))) == 2
  assert ensemble.num_params(TaskConfig("mlp", (
      ("dim", 5), ("hidden", (8,)), ("act", "tanh"), ("batch", 20)))) == 57


def test_ensemble_sampling_is_deterministic_and_weighted():
  ens = tasks.default_ensemble()
  a = [ens.sample(np.random.default_rng(7)) for _ in range(2)]
  assert a[0] == a[1]
  r1, r2 = np.random.default_rng(11), np.random.default_rng(11)
  assert [ens.sample(r1) for _ in range(20)] == \
      [ens.sample(r2) for _ in range(20)]
  rng = np.random.default_rng(0)
  fams = [ens.sample(rng).family for _ in range(2000)]
  w = dict(ens.weights)
  total = sum(w.values())
  for name in EXPECTED_FAMILIES:
    assert abs(fams.count(name) / 2000 - w[name] / total) < 0.04, name
  only = tasks.Ensemble((("bowl", 1.0),), transform_probs=())
  for c in (only.sample(rng) for _ in range(20)):
    assert c.family == "bowl" and not c.transforms


def test_ensemble_without_mlps_and_describe():
  ens = tasks.default_ensemble(include_mlps=False)
  assert "mlp" not in dict(ens.weights)
  assert "mlp" in dict(tasks.default_ensemble().weights)
  rng = np.random.default_rng(0)
  assert all(ens.sample(rng).family != "mlp" for _ in range(200))
  text = "\n".join(tasks.default_ensemble().describe())
  for name in EXPECTED_FAMILIES | EXPECTED_TRANSFORMS:
    assert f"\n{name} " in text
  for fn in tasks.functions2d.FUNCTIONS:
    assert fn in text
  assert "\nmlp " not in "\n".join(ens.describe())
  assert tasks.ensemble_for(True, ("bowl", "quadratic")).weights == (
      ("bowl", 1.0), ("quadratic", 1.0))
  assert tasks.ensemble_for(False) == ens
  # Weights add families to the default mix, not network ones without MLPs,
  # and none to an explicit family list.
  w = dict(tasks.ensemble_for(True, (), {"image_conv": 2.0, "bowl": 0.0})
           .weights)
  assert w["image_conv"] == 2.0 and "bowl" not in w and w["mlp"] == 1.0
  assert "image_conv" not in dict(
      tasks.ensemble_for(False, (), {"image_conv": 2.0}).weights)
  assert tasks.ensemble_for(True, ("bowl",), {"image_mlp": 1.0}).weights == (
      ("bowl", 1.0),)


def test_holdout_names_are_pinned():
  assert [c.name for c in tasks.holdout_configs(16)] == HOLDOUT_NAMES
  assert tasks.holdout_configs(16, tasks.default_ensemble()) == \
      tasks.holdout_configs(16) == tasks.holdout_configs(
          16, tasks.HOLDOUT_ENSEMBLE)
  no_mlp = tasks.holdout_configs(16, tasks.default_ensemble(False))
  assert [c.name for c in no_mlp] == HOLDOUT_NAMES_NO_MLP
  # The frozen ensemble is not the training one, which has grown.
  frozen = dict(tasks.HOLDOUT_ENSEMBLE.weights)
  assert set(frozen) == EXPECTED_FAMILIES - {"norm", "sparse_bowl"}
  assert "param_scale" not in dict(tasks.HOLDOUT_ENSEMBLE.transform_probs)
  assert tasks.HOLDOUT_ENSEMBLE != tasks.default_ensemble()
  # Its sums have 2 parts; the training ensemble's 2 to 11.
  rng = np.random.default_rng(0)
  sums = tasks.HOLDOUT_ENSEMBLE.family("sum")
  assert {len(sums.sample(rng).get("parts")) for _ in range(50)} == {2}
  # Other ensembles are held out from their own samples.
  bowls = tasks.ensemble_for(True, ("bowl",))
  assert all(c.family == "bowl" for c in tasks.holdout_configs(8, bowls))


def test_validation_configs_are_fixed_and_apart_from_test_and_training():
  v1, v2 = tasks.validation_configs(16), tasks.validation_configs(16)
  assert v1 == v2 and len(v1) == 16 and len(set(v1)) >= 12
  assert tasks.validation_configs(4) == v1[:4]
  ens = tasks.default_ensemble()
  assert tasks.validation_configs(16, ens) == v1
  assert v1 != tasks.holdout_configs(16)
  assert sum(a == b for a, b in zip(v1, tasks.holdout_configs(16))) <= 2
  rng = np.random.default_rng([tasks.VALIDATION_SEED, 0])
  assert v1[0] == ens.sample(rng)  # the documented seed stream
  for seed in range(100):  # not the stream of any training seed
    rng = np.random.default_rng(seed)
    assert [ens.sample(rng) for _ in range(4)] != v1[:4]
  no_mlp = tasks.validation_configs(32, tasks.default_ensemble(False))
  assert all(c.family != "mlp" for c in no_mlp)
  assert tasks.VALIDATION_SEED != tasks.HOLDOUT_SEED


def test_holdout_is_fixed_and_distinct_from_training():
  h1, h2 = tasks.holdout_configs(16), tasks.holdout_configs(16)
  assert h1 == h2 and len(h1) == 16
  assert len(set(h1)) >= 14
  assert tasks.holdout_configs(4) == h1[:4]
  # Not the stream of any training seed (training rngs are seeded with the
  # run's integer seed). Static configs come from small discrete sets, so
  # single configs may coincide; their instances come from other keys.
  ens, train = tasks.default_ensemble(), set()
  for seed in range(100):
    rng = np.random.default_rng(seed)
    stream = [ens.sample(rng) for _ in range(4)]
    assert stream != h1[:4]
    train.update(stream[:2])
  assert len(set(h1) - train) >= 8
  no_mlp = tasks.holdout_configs(16, tasks.default_ensemble(False))
  assert all(c.family != "mlp" for c in no_mlp)


def test_holdout_is_identical_in_another_process():
  code = ("import json; from metatrain import tasks; print(json.dumps("
          "[c.to_dict() for c in tasks.holdout_configs(16) + "
          "tasks.validation_configs(16)]))")
  env = dict(os.environ, PYTHONHASHSEED="123", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True,
                       cwd=ROOT).stdout
  other = [TaskConfig.from_dict(d) for d in json.loads(out)]
  assert other == tasks.holdout_configs(16) + tasks.validation_configs(16)


def test_config_weights_reweight_the_sampled_mix():
  from metatrain.training import config
  cfg = config.load("tiny", ["tasks.include_mlps=true",
                             'tasks.weights=["mlp=3", "fn2d=0"]'])
  ens = cfg.tasks.ensemble()
  w = dict(ens.weights)
  assert w["mlp"] == 3.0 and "fn2d" not in w
  assert w["bowl"] == dict(tasks.default_ensemble().weights)["bowl"]
  rng = np.random.default_rng(0)
  fams = [ens.sample(rng).family for _ in range(400)]
  assert "fn2d" not in fams
  # mlp is 3 / 11.75 of the weight: about 102 of 400 draws.
  assert 60 < fams.count("mlp") < 130
  # Weights add no family to a restricted list (a preset's weights hold
  # under tasks.families), and no MLPs when they are off (the default
  # preset weights mlp).
  restricted = config.load("tiny", ['tasks.families=["bowl", "norm"]',
                                    'tasks.weights=["quadratic=2", "bowl=3"]'])
  assert restricted.tasks.ensemble().weights == (("bowl", 3.0),
                                                 ("norm", 1.0))
  no_mlps = config.load("default", ["tasks.include_mlps=false"])
  assert "mlp" not in dict(no_mlps.tasks.ensemble().weights)
  assert dict(config.load("default").tasks.ensemble().weights)["mlp"] == 3.0


@pytest.mark.parametrize("overrides,message", [
    (['tasks.weights=["mlp"]'], "family=weight"),
    (['tasks.weights=["mlp=-1"]'], "family=weight"),
    (['tasks.weights=["mlp=inf"]'], "family=weight"),
    (['tasks.weights=["mlpx=1"]'], "unknown family"),
    (['tasks.weights=["mlp=1", "mlp=2"]'], "weighted twice"),
    (['tasks.families=["bowl"]', 'tasks.weights=["bowl=0"]'],
     "every family has weight 0"),
])
def test_bad_config_weights_are_refused(overrides, message):
  from metatrain.training import config
  with pytest.raises(ValueError, match=message):
    config.load("tiny", overrides)
