"""Prepare a TFDS image dataset once, as ArrayRecord, for the streaming pipeline.

  python -m alexnet_jax.prepare --dataset=imagenette --tfds_data_dir=DIR
  python -m alexnet_jax.prepare --dataset=imagenet2012 --tfds_data_dir=DIR \\
      [--manual_dir=DIR_WITH_THE_TARS]

Run it once, on one machine, before training (many hosts preparing one
dataset at once would each download it). Grain reads the result by random
access (`tfds.data_source`). imagenette downloads itself; imagenet2012 cannot
be downloaded by TFDS: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
(from https://image-net.org, an account is needed) into --manual_dir (default
TFDS_DATA_DIR/downloads/manual). Bad input is one `error:` line, exit 2.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags

from alexnet_jax.data import tfds
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import cli

FLAGS = flags.FLAGS


def define_flags():
  """Flags only when run as a program: importing this module defines none."""
  flags.DEFINE_string('dataset', None,
                      f'TFDS dataset: {", ".join(tfds.PREPARABLE)}.')
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data dir (default: '
                      'TFDS_DATA_DIR or ~/tensorflow_datasets).')
  flags.DEFINE_string('manual_dir', None,
                      'imagenet2012: where its tar files are.')


def main(argv):
  if len(argv) > 1:
    cli.exit_with_error(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.dataset not in tfds.PREPARABLE:
    what = 'is required' if FLAGS.dataset is None else f'{FLAGS.dataset!r}?'
    cli.exit_with_error(f'--dataset {what}; valid: '
                        f'{", ".join(tfds.PREPARABLE)}')
  try:
    where = tfds.prepare(FLAGS.dataset, FLAGS.tfds_data_dir, FLAGS.manual_dir)
  except UserError as e:
    cli.exit_with_error(e)
  print(f'{FLAGS.dataset} is ready in {where}')


def parse_flags(argv):
  cli.exit_if_help(argv, __doc__)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    cli.exit_with_error(e)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
