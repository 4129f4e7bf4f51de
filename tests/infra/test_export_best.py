"""Best-checkpoint retention survives keep-last-N, and ``lopt export --best``
exports that checkpoint: real Orbax checkpoints, a real records file, the
trainer's pick (``evaluators.best``) and the real command line."""

import json
import os

import jax
import optax
import pytest

import metatrain
from evaluators import records
from evaluators.best import BestCheckpoint
from infra import cli
from metatrain.distributed.checkpoint_pin import keep_best
from metatrain.distributed.checkpoints import CheckpointConfig, Checkpointer
from metatrain.optimizer import hrnn

CFG = hrnn.HRNNConfig()
THETA = hrnn.init_theta(jax.random.PRNGKey(0), CFG)
OPT_STATE = optax.adam(1e-3).init(THETA)
SUITE = ['tasks=["digits_mlp", "fmnist_mlp"]', "seeds=1",
         'baselines=["adam"]', "adam_lrs=[0.003, 0.03]",
         "learned_lrs=[0.003, 0.03]"]
TASKS = ("digits_mlp", "fmnist_mlp")


def _evaluate(writer, step, ratio, tasks=TASKS, skip=()):
  """Records of ``step`` on SUITE, per task: adam at 1.0 (and 2.0 at the
  other rate) and the learned optimizer at ``ratio``, at its default rate
  and tuned (3.0 at the other rate); not the runs named in ``skip``
  (another evaluator's shard, not done yet)."""
  runs = [("adam", 0.003, 1.0), ("adam", 0.03, 2.0), ("learned", None, ratio),
          ("learned", 0.003, ratio), ("learned", 0.03, 3.0)]
  for task in tasks:
    for opt, lr, loss in runs:
      if (opt, lr) in skip:
        continue
      hp = {} if lr is None else {"learning_rate": lr}
      src = f"step:{step}"
      writer.append({
          "key": records.record_key(src, task, opt, hp, 0, 300),
          "source": src, "checkpoint_step": step, "suite": "small",
          "task": task, "optimizer": opt, "hparams": hp, "seed": 0,
          "final_loss": loss, "diverged": False, "metrics": {}})


def _save(ckpt, step):
  assert ckpt.save(step, theta=THETA, opt_state=OPT_STATE,
                   counters={"accepted": step}, rng_state={},
                   config={"hrnn": CFG.to_dict()})
  ckpt.wait()


def _on_disk(wd):
  return sorted(int(p) for p in os.listdir(os.path.join(wd, "checkpoints"))
                if p.isdigit())


def _export_best(wd, out, capsys):
  assert cli.main(["export", "--workdir", wd, "--best", "--out", out]) == 0
  capsys.readouterr()
  return metatrain.read_optimizer(out)[2]["source"]


def test_best_checkpoint_retention_survives_keep_last_n(tmp_path, capsys):
  wd = str(tmp_path / "run")
  writer = records.RecordWriter(os.path.join(wd, "eval", "records.jsonl"))
  pick = BestCheckpoint(wd, "small", SUITE)  # what `lopt train` passes
  ckpt = Checkpointer(wd, CheckpointConfig(keep_last=1, keep_every=0,
                                           save_every=1))
  for step in range(1, 7):
    keep_best(ckpt, pick)  # as the trainer does before each save
    _save(ckpt, step)
    if step == 2:
      _evaluate(writer, 2, 0.5)  # the best complete evaluation
    if step == 3:
      _evaluate(writer, 3, 0.8)  # complete, worse
      _evaluate(writer, 1, 0.1)  # step 1 is deleted: never the best
    if step == 4:  # better, but one shard has not finished: not yet
      _evaluate(writer, 4, 0.2, tasks=TASKS[:1])
      _evaluate(writer, 4, 0.2, tasks=TASKS[1:], skip=[("learned", 0.03)])
      assert records.best_step(records.read(writer.path), [2, 4])[0] == 4
  assert _on_disk(wd) == [2, 6]
  ckpt.close()
  src = _export_best(wd, str(tmp_path / "a.lopt"), capsys)
  assert src["step"] == 2 and src["kept_as_best"]

  ckpt = Checkpointer(wd, CheckpointConfig(keep_last=1, save_every=1))
  _evaluate(writer, 6, 0.3)  # a better step: 2 is released at the next save
  keep_best(ckpt, pick)
  assert _on_disk(wd) == [2, 6]
  _save(ckpt, 7)
  ckpt.close()
  assert _on_disk(wd) == [6, 7]
  pin = json.loads((tmp_path / "run" / "best_checkpoint.json").read_text())
  assert pin["step"] == 6 and pin["info"]["suite"] == "small"
  assert pin["info"]["geomean_ratio"] == pytest.approx(0.3)
  assert pin["info"]["selection"] == pytest.approx(0.3)
  src = _export_best(wd, str(tmp_path / "b.lopt"), capsys)
  assert src["step"] == 6 and src["kept_as_best"]


def test_without_a_pin_or_suite_export_best_uses_complete_scores(
    tmp_path, capsys):
  wd = str(tmp_path / "run")
  writer = records.RecordWriter(os.path.join(wd, "eval", "records.jsonl"))
  with Checkpointer(wd, CheckpointConfig(keep_last=3, save_every=1)) as ck:
    for step in (1, 2, 3):
      _save(ck, step)
  assert BestCheckpoint(wd)([1, 2, 3]) is None  # no records yet
  _evaluate(writer, 1, 0.4)
  _evaluate(writer, 2, 0.4)  # equal: the newer step wins
  _evaluate(writer, 3, 0.9, tasks=TASKS[:1])
  assert BestCheckpoint(wd)([1, 2, 3])[0] == 2
  assert BestCheckpoint(wd, "small", SUITE)([1, 2, 3])[0] == 2
  src = _export_best(wd, str(tmp_path / "c.lopt"), capsys)
  assert src["step"] == 2 and not src["kept_as_best"]
