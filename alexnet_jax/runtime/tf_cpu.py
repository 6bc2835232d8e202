"""TensorFlow, where it is used at all (TFDS, clu's TensorBoard writers), on
the CPU only: it must never take accelerator memory that JAX needs
(flax#445), and quiet: its start-up notices (oneDNN, absl) say nothing about
this run. Imported lazily by the paths that need TF, never by others.
"""

import os


def tensorflow():
  """The `tensorflow` module, with every GPU hidden from it."""
  # TF only writes summaries and reads datasets here: its oneDNN kernels (and
  # the notice they print at import) are of no use.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    pass  # Already initialized (its devices are fixed) or no GPU support.
  return tf
