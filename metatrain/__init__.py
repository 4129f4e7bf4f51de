"""lopt.metatrain: define, meta-train, save and load learned optimizers."""

from metatrain.optimizer.export import (load_optimizer, read_optimizer,
                                        save_optimizer)
from metatrain.optimizer.hrnn import (HRNNConfig, HRNNState, init_theta,
                                      true_params)
from metatrain.optimizer.optax_adapter import hrnn_optax
from metatrain.optimizer.zoo import pretrained, pretrained_info, pretrained_path

__version__ = "0.1.0"

__all__ = [
    "HRNNConfig", "HRNNState", "hrnn_optax", "init_theta", "load_optimizer",
    "pretrained", "pretrained_info", "pretrained_path", "read_optimizer",
    "save_optimizer", "true_params", "__version__",
]
