"""TensorFlow, where it is used at all (TFDS, clu's TensorBoard writers), on
the CPU only: it must never take accelerator memory that JAX needs
(flax#445). Imported lazily by the paths that need TF, never by others.
"""


def tensorflow():
  """The `tensorflow` module, with every GPU hidden from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    pass  # Already initialized (its devices are fixed) or no GPU support.
  return tf
