"""One batch per train step, whatever the source.

Two feeds with one interface, so the train step and the loop do not care
where images come from (`build.feed` makes the one a config asks for):
  * `in_memory.InMemoryFeed`: CIFAR-10 or fake data, held on the device as
    uint8, batches gathered there.
  * `StreamingFeed`: image datasets (folders, TFDS, the paper's store) read
    and decoded by Grain worker processes (`streaming.py`) or by DALI
    (`dali.py`). Each process reads its slice of batch k; the slices become
    one global array (`jax.make_array_from_process_local_data`).
Both yield {'images': uint8 [B, H, W, C], 'labels': int32 [B], ...} sharded
over the mesh's batch axes, and hold `num_classes`, `sizes` (examples per split) and
`image_shape`. A feed's position is the step alone, so resuming at the
checkpoint's step resumes the data exactly. `feed.evaluate(evaluator,
variables, split)` hands a split to `task/evaluation.py`'s evaluator the
way the feed holds it.
"""

import contextlib
import os
import re
from typing import Iterator

import grain
import jax
import numpy as np

from alexnet_jax.data import registry
from alexnet_jax.data import store
from alexnet_jax.data import streaming
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import DataError
from alexnet_jax.runtime import mesh as mesh_lib


def image_sources(dataset, tfds_data_dir: str = ''):
  """(train, test, number of classes) of a streamed dataset."""
  name, data_dir = dataset.name, dataset.data_dir
  if name in ('image_folder', 'store') and not data_dir:
    what = ('the store written by `python -m alexnet_jax.prepare --store=DIR`'
            if name == 'store' else
            'DIR/train/<class>/* and DIR/val/<class>/*')
    raise DataError(f'dataset {name} needs --config.data_dir=DIR: {what}')
  if name == 'store':
    manifest = store.read_manifest(data_dir)
    return (store.StoreSource(data_dir, 'train', manifest),
            store.StoreSource(data_dir, 'test', manifest),
            len(manifest['classes']))
  if name == 'image_folder':
    train = streaming.ImageFolderSource.scan(os.path.join(data_dir, 'train'))
    test = streaming.ImageFolderSource.scan(
        os.path.join(data_dir, 'val'), train.classes)
    return train, test, len(train.classes)
  from alexnet_jax.data import tfds  # pylint: disable=g-import-not-at-top
  train_split, test_split = dataset.spec.tfds_splits
  return (tfds.source(dataset.spec.tfds_name, train_split, tfds_data_dir),
          tfds.source(dataset.spec.tfds_name, test_split, tfds_data_dir),
          dataset.num_classes)


class BadImages:
  """Records that cannot be decoded: each named once in the log (with the
  decoder's reason), counted, and the run stopped with one line once more
  than `max_fraction` of a split has been found bad."""

  def __init__(self, splits: dict, max_fraction: float, log=print):
    self.splits, self.max_fraction, self.log = splits, max_fraction, log
    self.seen = {name: set() for name in splits}

  def note(self, split: str, indices: np.ndarray):
    source = self.splits[split]
    for index in sorted(set(int(i) for i in np.ravel(indices) if i >= 0) -
                        self.seen[split]):
      self.seen[split].add(index)
      self.log(f'{split} image {source.describe(index)} cannot be decoded '
               f'({_reason(source, index)}): '
               + ('replaced by another image' if split == 'train' else
                  'left out of the evaluation'))
    found, total = len(self.seen[split]), max(len(source), 1)
    if found > self.max_fraction * total:
      raise DataError(
          f'{found} of {total} {split} images cannot be decoded, more than '
          f'max_bad_fraction {self.max_fraction} of the split; fix or remove '
          'them (prepare a store: it leaves them out and lists them), or '
          'raise --config.max_bad_fraction')


def _reason(source, index: int) -> str:
  """The decoder's own words, without the address of the buffer it read
  (PIL names it: 'cannot identify image file <_io.BytesIO object at 0x...>')."""
  from alexnet_jax.data import images  # pylint: disable=g-import-not-at-top
  try:
    images.decode(source[index]['image'])
    return 'decodes here'
  except Exception as e:  # pylint: disable=broad-except
    words = re.sub(r' ?<[^<>]* at 0x[0-9a-f]+>', '', str(e))
    return f'{type(e).__name__}: {words}'[:160]


class StreamingFeed:
  """Image datasets streamed from files: image folders, TFDS, the store.

  Grain workers read and decode (or DALI decodes, `dali.py`); the store's
  256x256 squares are cropped on the device (`crops_on_device`), an image
  folder's or a TFDS dataset's on the host. Evaluation images are decoded
  once per run and kept on the host (this process's rows only).

  dataset: the resolved record (`registry.resolve`); its stored side is
    the side training crops are cut from. crop_size: the model's input side.
  inception_crop: torchvision's RandomResizedCrop instead of the paper's
    random crop. workers: Grain worker processes (0: this process).
  dali_device: '' (Grain decodes), or DALI on 'gpu' or 'cpu'.
  """
  streamed = True

  def __init__(self, dataset, mesh, *, batch_size: int, seed: int,
               crop_size: int, val_examples: int, val_fraction: float,
               tfds_data_dir: str = '', inception_crop: bool = False,
               workers: int = 0, max_bad_fraction: float = 0.01,
               dali_device: str = ''):
    self.dataset, self.mesh = dataset, mesh
    self.batch_size, self.seed, self.workers = batch_size, seed, workers
    self.inception_crop, self.dali_device = inception_crop, dali_device
    train, test, self.num_classes = image_sources(dataset, tfds_data_dir)
    train, val = streaming.hold_out(train, registry.validation_count(
        val_examples, val_fraction, len(train)))
    self.splits = {'train': train, 'val': val, 'test': test}
    self.sizes = {k: len(v) if v is not None else 0
                  for k, v in self.splits.items()}
    self.resize_size = dataset.stored_side
    if crop_size > self.resize_size:
      raise ConfigError(f'image_size {crop_size} is larger than resize_size '
                        f'{self.resize_size}, the side it is cropped from')
    if dali_device:
      from alexnet_jax.data import dali  # pylint: disable=g-import-not-at-top
      dali.check(dali_device, train)
    # The store (and DALI's output) is the whole 256x256 square.
    self.crops_on_device = dataset.name == 'store' or bool(dali_device)
    if self.crops_on_device and self.resize_size != store.SIDE:
      raise ConfigError(f'resize_size {self.resize_size}: the store and '
                        f'DALI keep {store.SIDE}x{store.SIDE} images')
    self.image_shape = (crop_size, crop_size, 3)
    self.shards = dataset.shards
    self.batch_sharding = mesh_lib.batch(mesh)
    self.bad = BadImages(
        {k: v for k, v in self.splits.items() if v is not None},
        max_bad_fraction,
        lambda m: print(m if jax.process_count() == 1 else
                        f'process {jax.process_index()}: {m}', flush=True))
    self._eval_cache = {}

  def to_global(self, local: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, local)

  def train(self, start_step: int, steps_per_epoch: int,
            total_steps: int) -> Iterator:
    """{'images', 'labels', 'replaced'} of batches start_step ..
    total_steps - 1; `replaced` marks the examples that stand in for an
    unreadable record (counted in the train metrics)."""
    del steps_per_epoch  # The stream is one endless shuffled sequence.
    if self.dali_device:
      from alexnet_jax.data import dali  # pylint: disable=g-import-not-at-top
      batches = dali.train_batches(self, start_step, total_steps)
    else:
      batches = self._grain_train(start_step, total_steps)
    with contextlib.closing(batches):  # A stopping run stops the workers.
      for images, labels, replaced in batches:
        self.bad.note('train', replaced)
        yield {'images': images, 'labels': labels,
               'replaced': self.to_global((replaced != -1).astype(np.int8))}

  def _grain_train(self, start_step: int, total_steps: int) -> Iterator:
    """Grain's thread prefetch keeps the next batch decoded and its
    host-to-device copy issued while the loop waits on the device (logging,
    evaluation, a checkpoint). Order and content are unchanged, and the
    feed's position stays the step, so resume is unaffected."""
    ds = streaming.train_batches(
        self.splits['train'], seed=self.seed, global_batch=self.batch_size,
        start_step=start_step, total_steps=total_steps,
        resize_size=self.resize_size,
        crop_size=0 if self.crops_on_device else self.image_shape[0],
        inception_crop=self.inception_crop, workers=self.workers,
        process_index=jax.process_index(), process_count=jax.process_count())
    # Out of shared memory before the arrays go anywhere: on a CPU backend
    # a jax.Array may alias its host buffer (`streaming.passes`).
    ds = ds.map(streaming.owned).map(
        lambda b: (self.to_global(b[0]), self.to_global(b[1]), b[2]))
    return streaming.passes(grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=1))

  def eval_batches(self, name: str, global_batch: int) -> Iterator:
    """(images, labels, mask) global arrays covering split `name` once: the
    stored 256x256 squares, the padding and unreadable records masked out.
    Decoded at the first evaluation, then replayed from host memory."""
    key = (name, global_batch)
    if key not in self._eval_cache:
      local = []
      for images, labels, mask, bad in streaming.passes(streaming.eval_batches(
          self.splits[name], global_batch=global_batch,
          resize_size=self.resize_size, workers=self.workers,
          process_index=jax.process_index(),
          process_count=jax.process_count())):
        self.bad.note(name, bad)
        local.append((images, labels, mask))
      self._eval_cache[key] = local
    for images, labels, mask in self._eval_cache[key]:
      yield self.to_global(images), self.to_global(labels), self.to_global(mask)

  def evaluate(self, evaluator, variables, name: str):
    """Split `name` through `evaluator` (`evaluation.Evaluator`): its padded
    batches, streamed."""
    return evaluator.over_batches(
        variables, self.eval_batches(name, evaluator.streamed_batch))
