"""One batch per train step, whatever the source.

Two feeds with one interface, so the train step and the loop do not care
where images come from:
  * `in_memory.InMemoryFeed`: CIFAR-10 or fake data, held on the device as
    uint8, batches gathered there.
  * `StreamingFeed`: image datasets read, decoded and cropped by Grain worker
    processes (`streaming.py`). Each process reads its slice of batch k; the
    slices become one global array (`jax.make_array_from_process_local_data`).
Both yield (images uint8 [B, H, W, C], labels int32 [B]) sharded over the
mesh's batch axes, and hold `num_classes`, `sizes` (examples per split) and
`image_shape`. A feed's position is the step alone, so resuming at the
checkpoint's step resumes the data exactly. Evaluation over a feed's splits
is `task/evaluation.py`.
"""

import os
from typing import Iterator

import grain
import jax
import numpy as np

from alexnet_jax.data import in_memory
from alexnet_jax.data import registry
from alexnet_jax.data import streaming
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import DataError
from alexnet_jax.runtime import mesh as mesh_lib


def make_feed(config, mesh, crop_size: int):
  """The feed for `config.dataset`; `crop_size` is the side streamed training
  crops are cut to (the model's input side)."""
  if registry.get(config.dataset).streamed:
    return StreamingFeed(config, mesh, crop_size)
  return in_memory.InMemoryFeed(config, in_memory.load_dataset(config), mesh)


def _image_sources(config):
  """(train, test, number of classes) of a streamed dataset."""
  spec = registry.get(config.dataset)
  if spec.name == 'image_folder':
    if not config.data_dir:
      raise DataError('dataset image_folder needs --config.data_dir=DIR '
                      'holding DIR/train/<class>/* and DIR/val/<class>/*')
    train = streaming.ImageFolderSource.scan(
        os.path.join(config.data_dir, 'train'))
    test = streaming.ImageFolderSource.scan(
        os.path.join(config.data_dir, 'val'), train.classes)
    return train, test, len(train.classes)
  from alexnet_jax.data import tfds  # pylint: disable=g-import-not-at-top
  train_split, test_split = spec.tfds_splits
  return (tfds.source(spec.tfds_name, train_split, config.tfds_data_dir),
          tfds.source(spec.tfds_name, test_split, config.tfds_data_dir),
          spec.num_classes)


class StreamingFeed:
  """Image datasets streamed by Grain workers (image_folder, TFDS)."""

  def __init__(self, config, mesh, crop_size: int):
    self.config, self.mesh = config, mesh
    self.spec = registry.get(config.dataset)
    train, test, self.num_classes = _image_sources(config)
    train, val = streaming.hold_out(
        train, registry.validation_count(config, len(train)))
    self.splits = {'train': train, 'val': val, 'test': test}
    self.sizes = {k: len(v) if v is not None else 0
                  for k, v in self.splits.items()}
    if crop_size > config.resize_size:
      raise ConfigError(f'image_size {crop_size} is larger than resize_size '
                        f'{config.resize_size}, the side it is cropped from')
    self.image_shape = (crop_size, crop_size, 3)
    self.shards = self.spec.data_shards(config, jax.process_count())
    self.batch_sharding = mesh_lib.batch(mesh)

  def _global(self, local: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, local)

  def train(self, start_step: int, steps_per_epoch: int,
            total_steps: int) -> Iterator:
    """(images, labels) of batches start_step .. total_steps - 1.

    Grain's thread prefetch keeps the next batch decoded and its
    host-to-device copy issued while the loop waits on the device (logging,
    evaluation, a checkpoint). Order and content are unchanged, and the
    feed's position stays the step, so resume is unaffected.
    """
    del steps_per_epoch  # The stream is one endless shuffled sequence.
    c = self.config
    ds = streaming.train_batches(
        self.splits['train'], seed=c.seed, global_batch=c.batch_size,
        start_step=start_step, total_steps=total_steps,
        resize_size=c.resize_size, crop_size=self.image_shape[0],
        inception_crop=c.random_resized_crop, workers=c.data_workers,
        process_index=jax.process_index(), process_count=jax.process_count())
    ds = ds.map(lambda batch: tuple(self._global(part) for part in batch))
    return iter(grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=1))

  def eval_batches(self, name: str, global_batch: int) -> Iterator:
    """(images, labels, mask) global arrays covering split `name` once: the
    stored 256x256 squares, the padding masked out."""
    for images, labels, mask in streaming.eval_batches(
        self.splits[name], global_batch=global_batch,
        resize_size=self.config.resize_size,
        workers=self.config.data_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count()):
      yield self._global(images), self._global(labels), self._global(mask)
