"""Command line: parse flags, then `train.train_and_evaluate(config, workdir)`.

  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=DIR \
      [--config.key=value ...] \
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

The multi-process flags are for clusters JAX cannot detect by itself (it does
on Cloud TPU pods and under SLURM). Bad input ends with one line on stderr,
`error: ...`, and exit status 2.
"""

import os
import re
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TF/XLA load.

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax import checkpointing
from alexnet_jax import distributed
from alexnet_jax import input_pipeline
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard '
                    'events go here; rerunning with it resumes.')
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs: '
                    'HOST:PORT of process 0 (else JAX_COORDINATOR_ADDRESS, or '
                    'auto-detected on Cloud TPU pods and under SLURM).')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this one, 0..N-1.')
flags.DEFINE_integer('coordinator_timeout', 300, 'Seconds to wait for every '
                     'process to reach the coordinator.')
flags.mark_flags_as_required(['config', 'workdir'])

USER_ERRORS = (train.ConfigError, input_pipeline.DataError,
               checkpointing.CheckpointError, train.TrainingError,
               distributed.DistributedError)


def fail(message: str):
  """One line on stderr, exit status 2: the bad-input contract."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing, with unknown or ill-typed --config.* values as one line."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: no such field.
    text = str(e).replace('\\n', ' ').replace('\\', '')
    key = re.search(r"'([^']+)'", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    fail(f'unknown config key {key.group(1) if key else text!r}'
         + (f' (did you mean {hint.group(1)!r}?)' if hint else '')
         + '; every field is listed in configs/default.py')
  except flags.Error as e:
    fail(e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  try:
    FLAGS.config.get('model')  # A config file that failed to load raises here.
  except (OSError, SyntaxError, ImportError) as e:
    fail(f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}')
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, FLAGS.coordinator_timeout)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    fail(e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
