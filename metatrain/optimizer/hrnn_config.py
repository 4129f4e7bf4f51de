"""Static configuration of the hierarchical RNN optimizer."""

from __future__ import annotations

import dataclasses
from typing import Any

from metatrain.optimizer import structs


@dataclasses.dataclass(frozen=True)
class HRNNConfig:
  """Static configuration of the hierarchical RNN.

  Every feature of the paper can be switched off, for its ablations.
  """

  param_units: int = 10
  tensor_units: int = 20
  global_units: int = 20
  num_timescales: int = 4
  use_tensor_rnn: bool = True
  use_global_rnn: bool = True
  dynamic_input_scaling: bool = True  # divide averages by their RMS, asinh
  use_grad_products: bool = True  # products of neighbouring scaled averages
  use_log_ms: bool = True  # relative log RMS magnitudes
  use_relative_lr: bool = True  # relative log learning rate input
  learnable_decay: bool = True  # decays come from the optimizer's outputs
  dynamic_output_scale: bool = True  # per-parameter log learning rates
  use_gradient_shortcut: bool = True  # Adam-like linear map of the averages
  use_attention: bool = False  # Nesterov-like lookahead
  init_lr_range: tuple[float, float] = (1e-6, 1e-2)
  max_log_lr: float = 33.0
  rnn_init_scale: float = 0.5
  gate_bias_init: float = 2.2
  readout_init_scale: float = 0.5
  affine_init_scale: float = 0.5
  scl_decay_bias_init: float = 3.2
  inp_decay_bias_init: float = 2.2
  lr_momentum_logit_init: float = 3.2
  stepsize_offset_init: float = -1.0
  shortcut_init_std: float = 0.05
  init_seed: int = 0  # seeds the per-element initial log-LRs in ``init``
  # Start as Adam (the default): a nominal Adam term (m, v per parameter)
  # with a deterministic learning rate ``init_lr``, and zero-initialised
  # RNN contributions (direction readout, gradient shortcut, log-LR
  # readout), so the untrained optimizer *is* Adam(init_lr) and
  # meta-training learns corrections. False: the 2017 paper's start
  # (random log-LRs in ``init_lr_range``, unit-RMS directions, offset -1);
  # ``HRNNConfig.paper()``.
  nominal_adam: bool = True
  init_lr: float = 1e-3
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  # > 0 (the default): anchored, the step's log-LR is the stored initial
  # one plus ``lr_correction_range * tanh(readout)``: per-parameter rates
  # stay within a factor exp(range) of the nominal rate times
  # exp(stepsize_offset); 4.6 is 100x either way (1e-5 to 1e-1 around
  # Adam's 1e-3, the span of the tuned baselines' best rates). 0: the
  # paper's log-LR, a state that integrates the readouts (it can drift
  # without bound: meta-trained on short truncations it learned an
  # exponential warm-up that diverges past them).
  lr_correction_range: float = 4.6
  # The log-LR readout (``w_lr``, ``b_lr``) is this times the stored theta
  # entries: a per-parameter meta-learning rate for the head that sets the
  # step size. Adam on theta moves every entry by about the meta-LR per
  # step; at gain 1 and meta-LR 1e-3, ``b_lr`` moved at that bound for all
  # 160 meta-steps of run pes3 (benchmarks/runs.md, pes5). The `default`
  # training preset sets 10. Both start at zero, so the untrained optimizer
  # does not depend on it.
  lr_head_gain: float = 1.0
  # Who sets the global step size. "learned" (hrnn-v1's): the step is the
  # user's rate times learned corrections whose overall level meta-training
  # moves freely. "fixed": every step is rescaled so that its RMS over all
  # parameters equals Adam's step at the user's rate; the learned parts
  # decide only where (per-tensor and per-parameter relative rates) and in
  # which direction it goes, as Celo2's normalised update does. Needs
  # nominal_adam (Adam's moments are the reference). "capped": the user's
  # rate is a ceiling: a step whose RMS would exceed Adam's at the rate is
  # scaled down to it, a smaller one is kept, so meta-training can learn
  # when to step less (warm-up, decay, per-tensor rates) but never to
  # multiply the user's rate.
  global_step: str = "learned"
  # Storage dtype of the per-parameter state (GRU state, averages, decays,
  # log-LRs, Adam moments): "float32", or "bfloat16" to halve its memory.
  # The math runs in float32 either way.
  state_dtype: str = "float32"

  def __post_init__(self):
    # Normalise list-y fields (e.g. from JSON) so the config stays hashable.
    object.__setattr__(self, "init_lr_range",
                       tuple(float(x) for x in self.init_lr_range))
    errors = []
    for name in ("param_units", "tensor_units", "global_units"):
      if int(getattr(self, name)) < 1:
        errors.append(f"{name} must be >= 1")
    if self.num_timescales < 1:
      errors.append("num_timescales must be >= 1")
    lo, hi = self.init_lr_range if len(self.init_lr_range) == 2 else (1, 0)
    if len(self.init_lr_range) != 2 or not 0 < lo <= hi:
      errors.append("init_lr_range must be (min, max) with 0 < min <= max")
    if self.use_global_rnn and not self.use_tensor_rnn:
      errors.append("use_global_rnn needs use_tensor_rnn")
    if self.use_relative_lr and not self.dynamic_output_scale:
      errors.append("use_relative_lr needs dynamic_output_scale")
    if self.nominal_adam and not self.dynamic_output_scale:
      errors.append("nominal_adam needs dynamic_output_scale (its learning "
                    "rate is the stored log-LR)")
    if self.lr_correction_range < 0:
      errors.append("lr_correction_range must be >= 0 (0: the paper's "
                    "integrating log-LR)")
    if self.lr_correction_range > 0 and not self.dynamic_output_scale:
      errors.append("lr_correction_range needs dynamic_output_scale")
    if not self.lr_head_gain > 0:
      errors.append(f"lr_head_gain must be > 0, got {self.lr_head_gain!r}")
    if self.global_step not in ("learned", "fixed", "capped"):
      errors.append(f"global_step must be 'learned', 'fixed' or 'capped', "
                    f"got {self.global_step!r}")
    if self.global_step != "learned" and not self.nominal_adam:
      errors.append(f"global_step={self.global_step!r} needs nominal_adam "
                    "(the reference step is Adam's)")
    if self.state_dtype not in ("float32", "bfloat16"):
      errors.append(f"state_dtype must be 'float32' or 'bfloat16', got "
                    f"{self.state_dtype!r}")
    if not self.init_lr > 0:
      errors.append("init_lr must be > 0")
    if not (0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1 and
            self.adam_eps > 0):
      errors.append("adam_b1, adam_b2 must be in [0, 1) and adam_eps > 0")
    if errors:
      raise ValueError("Invalid HRNNConfig: " + "; ".join(errors))

  @classmethod
  def paper(cls, **overrides: Any) -> "HRNNConfig":
    """The 2017 paper's optimizer and initialisation (no nominal Adam)."""
    return cls(**{"nominal_adam": False, "lr_correction_range": 0.0,
                  **overrides})

  @property
  def num_features(self) -> int:
    """Number of per-parameter input features fed to the parameter GRU."""
    t = self.num_timescales
    n = t
    if self.use_grad_products and t > 1:
      n += t - 1
    if self.use_log_ms:
      n += t
    if self.use_relative_lr:
      n += 1
    return n

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["init_lr_range"] = list(self.init_lr_range)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any], where: str = "hrnn") -> "HRNNConfig":
    """Builds a config from a stored dict (a checkpoint's, a ``.lopt``
    file's, a ``config.json``); ValueError on unknown or mistyped fields.

    Fields the dict lacks take ``LEGACY_DEFAULTS`` where the field is newer
    than the oldest files, else the class default. This is the only place
    legacy defaults are applied; ``TrainConfig``'s loader reads its ``hrnn``
    part through here.
    """
    return structs.from_dict(cls, {**LEGACY_DEFAULTS, **d}, where)


# Configs written before these fields existed describe the paper's start,
# so files and checkpoints keep their behaviour when read today.
LEGACY_DEFAULTS: dict[str, Any] = {"nominal_adam": False,
                                   "lr_correction_range": 0.0}


def lr_head(cfg: HRNNConfig, theta: dict[str, Any]) -> tuple[Any, Any]:
  """The log-LR readout's weights and bias: ``cfg.lr_head_gain`` x theta's."""
  return cfg.lr_head_gain * theta["w_lr"], cfg.lr_head_gain * theta["b_lr"]
