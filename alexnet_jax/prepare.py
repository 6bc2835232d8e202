"""Prepare a TFDS image dataset once, as ArrayRecord, for the streaming pipeline.

  python -m alexnet_jax.prepare --dataset=imagenette --tfds_data_dir=DIR
  python -m alexnet_jax.prepare --dataset=imagenet2012 --tfds_data_dir=DIR \\
      [--manual_dir=DIR_WITH_THE_TARS]

Run it once, on one machine, before training (many hosts preparing one
dataset at once would each download it). Grain reads the result by random
access (`tfds.data_source`). imagenette downloads itself; imagenet2012 cannot
be downloaded by TFDS: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
(from https://image-net.org, an account is needed) into --manual_dir (default
TFDS_DATA_DIR/downloads/manual).
"""

import os
import socket
import sys

from absl import app
from absl import flags

from alexnet_jax.errors import DataError

DATASETS = ('imagenet2012', 'imagenette')
_IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
_IMAGENETTE_HOST = 's3.amazonaws.com'

FLAGS = flags.DEFINE_enum('dataset', None, DATASETS, 'TFDS dataset.')
_DATA_DIR = flags.DEFINE_string('tfds_data_dir', None,
                                'TFDS data dir (default: TFDS_DATA_DIR or '
                                '~/tensorflow_datasets).')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None,
                                  'imagenet2012: where its tar files are.')


def prepare(name: str, data_dir=None, manual_dir=None) -> str:
  """Downloads (imagenette) and writes ArrayRecord files; their directory."""
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; valid: {", ".join(DATASETS)}')
  from alexnet_jax import tf_cpu  # pylint: disable=g-import-not-at-top
  tf_cpu.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or os.environ.get(
      'TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return str(builder.data_dir)
  manual_dir = manual_dir or os.path.join(data_dir, 'downloads', 'manual')
  if name == 'imagenet2012':
    missing = [t for t in _IMAGENET_TARS
               if not os.path.exists(os.path.join(manual_dir, t))]
    if missing:
      raise DataError(
          f'{" and ".join(missing)} not found in {manual_dir}; download them '
          'from https://image-net.org (an account is needed) into that folder, '
          'or pass --manual_dir=DIR')
  else:
    try:
      socket.create_connection((_IMAGENETTE_HOST, 443), timeout=10).close()
    except OSError as e:
      raise DataError(
          f'cannot download imagenette ({_IMAGENETTE_HOST} is unreachable: '
          f'{e}); without network access, extract imagenette2.tgz (from '
          'https://github.com/fastai/imagenette) elsewhere and train with '
          '--config.dataset=image_folder --config.data_dir=.../imagenette2'
      ) from None
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return str(builder.data_dir)


def main(argv):
  del argv
  if FLAGS.value is None:
    print(f'error: --dataset is required; valid: {", ".join(DATASETS)}',
          file=sys.stderr)
    sys.exit(2)
  try:
    where = prepare(FLAGS.value, _DATA_DIR.value, _MANUAL_DIR.value)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'{FLAGS.value} is ready in {where}')


if __name__ == '__main__':
  app.run(main)
