"""AlexNet in JAX/Flax, trained as the 2012 paper did.

data/ (what a dataset is and how batches reach the step), model/ (the
network), task/ (state, step, evaluation), run/ (the loop), runtime/ (mesh,
processes, checkpoints, signals, reporting); the command lines are the
modules here (`python -m alexnet_jax.main`, ...). docs/layout.md maps it.
"""

import os as _os

# TensorFlow is used for summaries, TFDS and gs:// paths only: quiet, and
# without its oneDNN kernels (their start-up notice says nothing about a
# run). Set before anything imports it.
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
