"""zero-rl: zero RL (RLVR from a base model) in JAX."""

__version__ = "0.1.0"
