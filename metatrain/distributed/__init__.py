"""The distributed system: unroll workers, the learner, the launcher that
runs them (on Ray, or in one process), checkpoints and the run directory."""
