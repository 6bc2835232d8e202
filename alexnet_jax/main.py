"""Command line: parse flags, then `train.train_and_evaluate(config, workdir)`.

  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=DIR \
      [--config.key=value ...]

Bad input ends with one line on stderr, `error: ...`, and exit status 2.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TF/XLA load.

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax import checkpointing
from alexnet_jax import input_pipeline
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard '
                    'events go here; rerunning with it resumes.')
flags.mark_flags_as_required(['config', 'workdir'])

USER_ERRORS = (train.ConfigError, input_pipeline.DataError,
               checkpointing.CheckpointError, train.TrainingError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
