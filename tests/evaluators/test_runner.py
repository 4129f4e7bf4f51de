"""The runner: same problems for every optimizer, honest divergence."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from evaluators import baselines, problems, records, runner
from metatrain.optimizer import hrnn

CFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), CFG)
# The fourth held-out ensemble task (a logistic regression): cheap to run.
TASK = "heldout:3"


def exploding_theta():
  """exp(60)-sized steps: the HRNN blows up at its first step."""
  return dict(THETA, stepsize_offset=jnp.asarray(60.0))


def _record(optimizer, result, lr=None):
  return {"source": "s", "task": "t", "optimizer": optimizer,
          "hparams": {} if lr is None else {"learning_rate": lr},
          "metric": "", **result.to_json()}


def test_an_exploding_optimizer_is_diverged_and_loses_to_adam():
  p = problems.build(TASK)
  bad = runner.run(p, baselines.learned(CFG, exploding_theta()), steps=50,
                   seed=0, chunk=10)
  assert bad.diverged and bad.diverged_at is not None
  assert bad.steps_done < 50  # stopped at the first bad chunk
  assert math.isinf(bad.final_loss) and math.isinf(bad.best_loss)
  as_json = bad.to_json()
  assert as_json["final_loss"] is None and as_json["diverged"]
  json.dumps(as_json, allow_nan=False)  # no NaN/inf leaks into records
  adam = runner.run(p, baselines.baseline("adam", 1e-2), steps=50, seed=0,
                    chunk=10)
  assert not adam.diverged and math.isfinite(adam.final_loss)
  rows = records.summarize([_record("learned", bad),
                            _record("adam", adam, 1e-2)], "s")
  assert rows[0]["winner"] == "adam" and math.isinf(rows[0]["ratio"])
  assert rows[0]["learned_diverged"] == 1


def test_every_optimizer_sees_the_same_problem_instance():
  p = problems.build(TASK)
  a = runner.run(p, baselines.baseline("adam", 0.0), steps=5, seed=3,
                 chunk=5)
  b = runner.run(p, baselines.learned(CFG, THETA), steps=5, seed=3, chunk=5)
  c = runner.run(p, baselines.baseline("adam", 0.0), steps=5, seed=4,
                 chunk=5)
  # The first minibatch loss is taken before any update: same instance,
  # same minibatch for the same seed, whatever the optimizer.
  assert a.curve[0][1] == b.curve[0][1]
  assert a.curve[0][1] != c.curve[0][1]
  # Adam at lr 0 never moves: its exact loss stays at the initial one.
  track = np.array([v for _, v in a.track_curve])
  np.testing.assert_allclose(track, track[0], rtol=1e-6)


def test_chunking_does_not_change_the_run():
  p = problems.build(TASK)
  opt = baselines.baseline("rmsprop", 1e-3)
  one = runner.run(p, opt, steps=12, seed=1, chunk=1)
  many = runner.run(p, opt, steps=12, seed=1, chunk=6)
  np.testing.assert_allclose([v for _, v in one.track_curve],
                             [v for _, v in many.track_curve], rtol=1e-5)
  assert one.final_loss == one.track_curve[-1][1]


def test_a_baseline_blowing_up_mid_run_is_diverged():
  p = problems.build("heldout:6")  # a noisy quadratic: unbounded above
  r = runner.run(p, baselines.baseline("sgdm", 1e4), steps=40, seed=0,
                 chunk=5)
  assert r.diverged and math.isinf(r.final_loss)
  assert r.to_json()["final_loss"] is None


def test_curves_are_thinned_but_keep_the_last_point():
  r = runner.RunResult(steps=1000, steps_done=1000,
                       curve=[(i, float(i)) for i in range(1000)],
                       track_curve=[], eval_curve=[], final_loss=1.0,
                       best_loss=0.0, diverged=False, diverged_at=None,
                       metrics={}, sec_per_step=0.0, compile_s=0.0, wall_s=0.0)
  curve = r.to_json(max_points=50)["curve"]
  assert len(curve) <= 50 and curve[-1] == [999, 999.0] and curve[0][0] == 0


def test_image_validation_tasks_are_their_families_validation_configs():
  from metatrain import tasks
  p = problems.build("vimage:3")
  cfg = tasks.validation_configs(4, tasks.image_validation_ensemble())[3]
  assert p.key == ("vimage", cfg.to_json())
  assert cfg.family in ("image_mlp", "image_conv")
  # The suite that picks checkpoints has them; the held-out test suite not.
  from evaluators import suites
  assert "vimage:1" in suites.load("validation").tasks
  assert not any(t.startswith("vimage") for t in suites.load("heldout").tasks)
  adam = runner.run(p, baselines.baseline("adam", 3e-3), steps=100, seed=0,
                    chunk=100)
  assert adam.track_curve[-1][1] < 0.8 * adam.track_curve[0][1]
