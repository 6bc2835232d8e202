"""One batch per train step, whatever the source; every example once in eval.

Two feeds with one interface, so the train step and the loop do not care
where images come from:
  * `InMemoryFeed`: CIFAR-10 or fake data, held on the device as uint8. Batch
    k is gathered there from per-epoch permutations, a pure function of
    (seed, epoch) (`input_pipeline.batch_indices`): only two integers cross
    from the host per step.
  * `StreamingFeed`: image datasets read, decoded and cropped by Grain worker
    processes (`streaming.py`). Each process reads its slice of batch k; the
    slices become one global array (`jax.make_array_from_process_local_data`).
Both yield (images uint8 [B, H, W, C], labels int32 [B]) sharded over the
mesh's 'data' axis. A feed's position is the step alone, so resuming at the
checkpoint's step resumes the data exactly.
"""

import collections
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import sharding
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_NUM_CLASSES = 1000
DATASETS = input_pipeline.DATASETS + ('image_folder', 'imagenet2012',
                                      'imagenette')
# TFDS name and its (train, test) splits; test is the official validation set.
_TFDS = {'imagenet2012': ('train', 'validation'),
         'imagenette': ('train', 'validation')}

# (params, uint8 images) -> log of the softmax averaged over the test views.
LogitsFn = Callable[..., jax.Array]


def make_feed(config, mesh):
  if config.dataset in input_pipeline.DATASETS:
    return InMemoryFeed(config, input_pipeline.load_dataset(config), mesh)
  return StreamingFeed(config, mesh)


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Yields `iterator`'s items with `size - 1` more already pulled, as flax's
  `prefetch_to_device`: after the loop waits on the device (logging,
  evaluation, a checkpoint), the next batch is already decoded and its
  asynchronous host-to-device copy issued, so the next step starts at once.
  Order and content are unchanged, and the feed's position stays the step,
  so resume is unaffected."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _sums(log_probs, labels, num_classes, mask):
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  return {
      'loss': (train.cross_entropy(log_probs, labels, num_classes) * mask).sum(),
      'top1': (train._correct(log_probs, labels, 1) * mask).sum(),  # pylint: disable=protected-access
      'top5': (train._correct(log_probs, labels, min(5, num_classes))  # pylint: disable=protected-access
               * mask).sum(),
  }


class InMemoryFeed:
  """CIFAR-10 / fake data on the device; batches gathered there."""

  streaming = False

  def __init__(self, config, data: input_pipeline.Dataset, mesh):
    self.config, self.mesh = config, mesh
    self.num_classes, self.mean, self.std = (data.num_classes, data.mean,
                                             data.std)
    self.sizes = {'train': len(data.train),
                  'val': len(data.val) if data.val else 0,
                  'test': len(data.test)}
    self.image_shape = data.train.images.shape[1:]
    self.shards = config.data_shards or jax.process_count()
    share, self.per_shard = input_pipeline.process_share(
        data.train, self.shards, jax.process_index(), jax.process_count())
    self.train_arrays = (sharding.put_process_share(share.images, mesh),
                         sharding.put_process_share(share.labels, mesh))
    self.eval_arrays = {name: (sharding.put_replicated(s.images, mesh),
                               sharding.put_replicated(s.labels, mesh))
                        for name, s in (('val', data.val), ('test', data.test))
                        if s}
    self.data_key = jax.random.fold_in(jax.random.key(config.seed), 0x5eed)
    self.permutations = jax.jit(input_pipeline.epoch_permutations,
                                static_argnums=(2, 3),
                                out_shardings=sharding.replicated(mesh))
    self.gather = jax.jit(self._gather, static_argnums=(4,))

  def _gather(self, images, labels, perms, step_in_epoch, batch):
    n_devices = self.mesh.size
    batch_sharding = sharding.batch(self.mesh)
    idx = input_pipeline.batch_indices(perms, step_in_epoch, batch,
                                       jax.process_count())
    idx = jax.lax.with_sharding_constraint(
        idx.reshape(n_devices, batch // n_devices), batch_sharding)
    take = jax.vmap(lambda rows, i: rows[i])
    x = take(images, idx).reshape((batch,) + images.shape[2:])
    y = take(labels, idx).reshape(batch)
    return (jax.lax.with_sharding_constraint(x, batch_sharding),
            jax.lax.with_sharding_constraint(y, batch_sharding))

  def steps_per_epoch(self) -> int:
    return self.per_shard // (self.config.batch_size // self.shards)

  def train(self, start_step: int, total_steps: int) -> Iterator:
    per_epoch = self.steps_per_epoch()
    perm_epoch, perms = None, None
    for step in range(start_step, total_steps):
      epoch, index = divmod(step, per_epoch)
      if epoch != perm_epoch:
        perm_epoch, perms = epoch, self.permutations(
            self.data_key, epoch, self.shards, self.per_shard)
      yield self.gather(*self.train_arrays, perms, np.int32(index),
                        self.config.batch_size)

  def make_evaluator(self, logits_fn: LogitsFn):
    """(params, split name) -> summed loss/top1/top5 over EVERY example."""
    evaluate = scan_evaluator(logits_fn, self.config.eval_batch_size,
                              self.mesh, self.num_classes)
    return lambda params, name: evaluate(params, *self.eval_arrays[name])


def _zero_sums():
  return {k: jnp.zeros((), jnp.float32) for k in ('loss', 'top1', 'top5')}


def balanced_batch(n: int, eval_batch_size: int, devices: int) -> int:
  """The batch that walks n examples in as few batches as `eval_batch_size`
  allows, with the least padding: 508 examples at 500 take two batches of
  254, not 500 + 500 (half of it padding), rounded up to the device count."""
  cap = -(-eval_batch_size // devices) * devices
  batches = max(1, -(-n // cap))
  per_batch = max(1, -(-n // batches))
  return -(-per_batch // devices) * devices


def scan_evaluator(logits_fn: LogitsFn, eval_batch_size: int, mesh,
                   num_classes: int):
  """jit(params, images, labels) -> sums over every example of on-device arrays.

  The split is walked in equal batches of at most about `eval_batch_size`
  (`balanced_batch`) by a scan; the last batch is padded (repeating the
  final example) and masked, so each counts once.
  """
  data_sharding = sharding.batch(mesh)

  @jax.jit
  def evaluate(params, images, labels):
    n = labels.shape[0]
    batch = balanced_batch(n, eval_batch_size, mesh.size)

    def body(sums, j):
      pos = j * batch + jnp.arange(batch)
      mask = (pos < n).astype(jnp.float32)
      idx = jax.lax.with_sharding_constraint(jnp.minimum(pos, n - 1),
                                             data_sharding)
      batch_sums = _sums(logits_fn(params, images[idx]), labels[idx],
                         num_classes, mask)
      return {k: sums[k] + v for k, v in batch_sums.items()}, None

    return jax.lax.scan(body, _zero_sums(), jnp.arange(-(-n // batch)))[0]

  return evaluate


class StreamingFeed:
  """Image datasets streamed by Grain workers (image_folder, TFDS)."""

  streaming = True

  def __init__(self, config, mesh):
    from alexnet_jax import streaming  # pylint: disable=g-import-not-at-top
    self.config, self.mesh, self.streaming_lib = config, mesh, streaming
    train, test, self.num_classes = self._sources(config)
    train, val = streaming.hold_out(train, self._val_count(config, len(train)))
    self.splits = {'train': train, 'val': val, 'test': test}
    self.sizes = {k: len(v) if v is not None else 0
                  for k, v in self.splits.items()}
    self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
    side = config.image_size or models.NATIVE_INPUT_SIZE[config.model]
    if side > config.resize_size:
      raise ConfigError(f'image_size {side} is larger than resize_size '
                        f'{config.resize_size}, the side it is cropped from')
    self.image_shape = (side, side, 3)
    self.batch_sharding = sharding.batch(mesh)

  @staticmethod
  def _val_count(config, num_train: int) -> int:
    if config.val_examples > 0:
      return config.val_examples
    return int(round(config.val_fraction * num_train))

  @staticmethod
  def _sources(config):
    from alexnet_jax import streaming  # pylint: disable=g-import-not-at-top
    if config.dataset == 'image_folder':
      if not config.data_dir:
        raise DataError('dataset image_folder needs --config.data_dir=DIR '
                        'holding DIR/train/<class>/* and DIR/val/<class>/*')
      train = streaming.ImageFolderSource.scan(
          os.path.join(config.data_dir, 'train'))
      test = streaming.ImageFolderSource.scan(
          os.path.join(config.data_dir, 'val'), train.classes)
      return train, test, len(train.classes)
    train_split, test_split = _TFDS[config.dataset]
    train = streaming.tfds_source(config.dataset, train_split,
                                  config.tfds_data_dir)
    test = streaming.tfds_source(config.dataset, test_split,
                                 config.tfds_data_dir)
    classes = (IMAGENET_NUM_CLASSES if config.dataset == 'imagenet2012'
               else 10)
    return train, test, classes

  def steps_per_epoch(self) -> int:
    return self.sizes['train'] // self.config.batch_size

  def _global(self, local: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, local)

  def train(self, start_step: int, total_steps: int) -> Iterator:
    return prefetch(self._train(start_step, total_steps))

  def _train(self, start_step: int, total_steps: int) -> Iterator:
    c = self.config
    for images, labels in self.streaming_lib.train_batches(
        self.splits['train'], seed=c.seed, global_batch=c.batch_size,
        start_step=start_step, total_steps=total_steps,
        resize_size=c.resize_size, crop_size=self.image_shape[0],
        inception_crop=c.random_resized_crop, workers=c.data_workers,
        process_index=jax.process_index(),
        process_count=jax.process_count()):
      yield self._global(images), self._global(labels)

  def make_evaluator(self, logits_fn: LogitsFn):
    num_classes = self.num_classes
    batch = -(-self.config.eval_batch_size // self.mesh.size) * self.mesh.size

    @jax.jit
    def add(sums, params, images, labels, mask):
      batch_sums = _sums(logits_fn(params, images), labels, num_classes, mask)
      return {k: sums[k] + v for k, v in batch_sums.items()}

    def evaluate(params, name):
      sums = _zero_sums()
      for images, labels, mask in self.streaming_lib.eval_batches(
          self.splits[name], global_batch=batch,
          resize_size=self.config.resize_size,
          workers=self.config.data_workers,
          process_index=jax.process_index(),
          process_count=jax.process_count()):
        sums = add(sums, params, self._global(images), self._global(labels),
                   self._global(mask))
      return sums

    return evaluate


def eval_views(config, images, side: int):
  """The test-time views of a uint8 batch: [V, N, side', side', C].

  The paper's 10 crops (`ten_crop`), or the centre crop of larger images;
  with `eval_flip`, each view's reflection too.
  """
  from alexnet_jax import augment  # pylint: disable=g-import-not-at-top
  if config.ten_crop:  # validate_config allows it on image datasets only.
    return augment.ten_crops(images, side)
  if images.shape[1] > side:
    images = augment.center_crop(images, side)
  views = [images]
  if config.eval_flip:
    views.append(images[:, :, ::-1])
  return jnp.stack(views)

