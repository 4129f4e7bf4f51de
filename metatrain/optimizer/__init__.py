"""The learned optimizer: the hierarchical RNN, its CPU kernel, the optax
adapter, the optimizer file format and the shipped optimizers."""
