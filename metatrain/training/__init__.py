"""Meta-training: truncated unrolls of task groups, BPTT and PES
meta-gradients, one meta-step's pieces, the run config and the compiled
programs' bookkeeping (the tasks are in ``metatrain.tasks``)."""
