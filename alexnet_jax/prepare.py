"""Prepare a dataset once, before training.

The paper's store (every image at 256x256, once; docs/imagenet.md):
  python -m alexnet_jax.prepare --dataset=image_folder --data_dir=SRC --store=DST
  python -m alexnet_jax.prepare --dataset=imagenet2012 --tfds_data_dir=DIR \\
      --store=DST [--encoding=jpeg|raw] [--quality=95] [--workers=N]
then train with --config.dataset=store --config.data_dir=DST.

A TFDS dataset as ArrayRecord only (Grain reads it, decoding full-size
images at every epoch):
  python -m alexnet_jax.prepare --dataset=imagenette --tfds_data_dir=DIR
  python -m alexnet_jax.prepare --dataset=imagenet2012 --tfds_data_dir=DIR \\
      [--manual_dir=DIR_WITH_THE_TARS]

Run it once, on one machine (many hosts preparing one dataset at once would
each download it). imagenette downloads itself; imagenet2012 cannot be
downloaded by TFDS: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
(from https://image-net.org, an account is needed) into --manual_dir
(default TFDS_DATA_DIR/downloads/manual). An interrupted store resumes where
it stopped when the same command is run again. Bad input is one `error:`
line, exit 2.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags

from alexnet_jax.data import store
from alexnet_jax.data import store_writer
from alexnet_jax.data import tfds
from alexnet_jax.errors import DataError
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import cli

FLAGS = flags.FLAGS
DATASETS = ('image_folder',) + tfds.PREPARABLE


def define_flags():
  """Flags only when run as a program: importing this module defines none."""
  flags.DEFINE_string('dataset', None, f'One of: {", ".join(DATASETS)}.')
  flags.DEFINE_string('data_dir', None, 'image_folder: the tree holding '
                      'train/<class>/* and val/<class>/*.')
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data dir (default: '
                      'TFDS_DATA_DIR or ~/tensorflow_datasets).')
  flags.DEFINE_string('manual_dir', None,
                      'imagenet2012: where its tar files are.')
  flags.DEFINE_string('store', None, 'Write the paper\'s 256x256 store here '
                      '(local or gs://).')
  flags.DEFINE_string('encoding', 'jpeg', 'Store encoding: jpeg (at '
                      '--quality) or raw (uint8 pixels, no decode at all).')
  flags.DEFINE_integer('quality', store_writer.DEFAULT_QUALITY,
                       'JPEG quality of the store, 1..100.')
  flags.DEFINE_integer('workers', 0, 'Processes writing the store (0: one '
                       'per core).')
  flags.DEFINE_integer('shard_images', store_writer.SHARD_IMAGES,
                       'Images per store shard (the unit a resumed prepare '
                       'skips).')


def store_sources(dataset: str, data_dir=None, tfds_data_dir=None,
                  manual_dir=None):
  """({'train': source, 'test': source}, class names) to write a store of."""
  if dataset == 'image_folder':
    from alexnet_jax.data import streaming  # pylint: disable=g-import-not-at-top
    if not data_dir:
      raise DataError('--dataset=image_folder needs --data_dir=DIR holding '
                      'DIR/train/<class>/* and DIR/val/<class>/*')
    train = streaming.ImageFolderSource.scan(os.path.join(data_dir, 'train'))
    test = streaming.ImageFolderSource.scan(os.path.join(data_dir, 'val'),
                                            train.classes)
    return {'train': train, 'test': test}, train.classes
  tfds.prepare(dataset, tfds_data_dir, manual_dir)
  return tfds.store_sources(dataset, tfds_data_dir)


def main(argv):
  if len(argv) > 1:
    cli.exit_with_error(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.dataset not in DATASETS:
    what = 'is required' if FLAGS.dataset is None else f'{FLAGS.dataset!r}?'
    cli.exit_with_error(f'--dataset {what}; valid: {", ".join(DATASETS)}')
  try:
    if FLAGS.store:
      sources, classes = store_sources(FLAGS.dataset, FLAGS.data_dir,
                                       FLAGS.tfds_data_dir, FLAGS.manual_dir)
      manifest = store_writer.write_store(
          sources, FLAGS.store, classes, encoding=FLAGS.encoding,
          quality=FLAGS.quality, workers=FLAGS.workers,
          shard_images=FLAGS.shard_images,
          source_name=FLAGS.data_dir or FLAGS.dataset)
      counts = ', '.join(f'{k} {v["count"]:,}'
                         for k, v in manifest['splits'].items())
      print(f'store {FLAGS.store} is ready: {counts} images; '
            f'{len(manifest["left_out"])} left out (listed in '
            f'{store.MANIFEST}). Train with --config.dataset=store '
            f'--config.data_dir={FLAGS.store}', flush=True)
      return
    if FLAGS.dataset == 'image_folder':
      raise DataError('an image folder needs no preparing; to write the '
                      "paper's 256x256 store of it, add --store=DST")
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
