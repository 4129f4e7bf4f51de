"""The pinned best checkpoint against retention (real Orbax checkpoints)."""

import json
import os

import jax
import optax
import pytest

from metatrain.distributed.checkpoint_pin import keep_best
from metatrain.distributed.checkpoints import CheckpointConfig, Checkpointer
from metatrain.optimizer import hrnn

THETA = hrnn.init_theta(jax.random.PRNGKey(0), hrnn.HRNNConfig())
OPT_STATE = optax.adam(1e-3).init(THETA)
KEEP_ONE = CheckpointConfig(keep_last=1, keep_every=0, save_every=1)


def _save(ckpt, step):
  assert ckpt.save(step, theta=THETA, opt_state=OPT_STATE,
                   counters={"accepted": step}, rng_state={}, config={})


def _on_disk(tmp_path):
  return sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")
                if p.isdigit())


def _pick(scores):
  """A pick from fixed scores {step: ratio} (lower is better)."""
  def pick(steps):
    found = [(v, -s, s) for s, v in scores.items() if s in steps]
    return None if not found else (min(found)[2], {"ratio": min(found)[0]})
  return pick


def test_the_pinned_best_survives_keep_last_across_a_resume(tmp_path):
  scores = {}
  ckpt = Checkpointer(str(tmp_path), KEEP_ONE)
  for step in range(1, 7):
    if step == 3:  # step 2 is evaluated; step 1 (deleted) "scores" better
      scores.update({1: 0.1, 2: 0.5})
    keep_best(ckpt, _pick(scores))
    _save(ckpt, step)
    ckpt.wait()
  assert _on_disk(tmp_path) == [2, 6]
  assert ckpt.protected_step == 2
  ckpt.close()
  pin = json.loads((tmp_path / "best_checkpoint.json").read_text())
  assert pin["step"] == 2 and pin["info"] == {"ratio": 0.5}

  ckpt = Checkpointer(str(tmp_path), KEEP_ONE)  # a resumed run
  assert ckpt.protected_step == 2
  assert keep_best(ckpt, _pick({})) is None  # nothing found: the pin stays
  for step in (7, 8):
    _save(ckpt, step)
    ckpt.wait()
  assert _on_disk(tmp_path) == [2, 8]

  scores[8] = 0.3  # better: step 2 is released at the next save
  assert keep_best(ckpt, _pick(scores)) == 8
  assert keep_best(ckpt, _pick(scores)) is None  # unchanged
  assert _on_disk(tmp_path) == [2, 8]
  _save(ckpt, 9)
  ckpt.close()
  assert _on_disk(tmp_path) == [8, 9]
  reader = Checkpointer(str(tmp_path), read_only=True)
  assert reader.protected()["step"] == 8 and reader.protected_step is None
  reader.close()


def test_keep_every_still_applies_and_only_retained_steps_are_pinned(
    tmp_path):
  cfg = CheckpointConfig(keep_last=1, keep_every=4, save_every=1)
  with Checkpointer(str(tmp_path), cfg) as ckpt:
    for step in range(1, 6):
      _save(ckpt, step)
    ckpt.wait()
    assert ckpt.retained_steps() == [4, 5]
    with pytest.raises(ValueError, match="not a complete checkpoint"):
      ckpt.protect(3)
    assert keep_best(ckpt, _pick({3: 0.1, 4: 0.2})) == 4
    scores = {3: 0.1, 4: 0.2, 5: 0.15}
    assert keep_best(ckpt, _pick(scores)) == 5
    for step in (6, 7):
      _save(ckpt, step)
    ckpt.wait()
  assert _on_disk(tmp_path) == [4, 5, 7]  # 4: keep_every; 5: the best
  with pytest.raises(PermissionError, match="read-only"):
    Checkpointer(str(tmp_path), read_only=True).protect(5)


def test_a_damaged_pin_is_ignored_with_a_warning(tmp_path):
  (tmp_path / "best_checkpoint.json").write_text('{"step": tr')
  with pytest.warns(UserWarning, match="unreadable best-checkpoint pin"):
    ckpt = Checkpointer(str(tmp_path), KEEP_ONE)
  assert ckpt.protected_step is None
  for step in (1, 2):
    _save(ckpt, step)
  ckpt.close()
  assert _on_disk(tmp_path) == [2]
