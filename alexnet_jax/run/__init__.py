"""The run loop (`loop.py`): data, steps, evaluation, checkpoints, signals and
reporting tied together. Only `alexnet_jax.main` imports it."""
