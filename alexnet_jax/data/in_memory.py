"""Datasets held in memory: host arrays loaded once, batched on the device.

Loading (host, once): `load_dataset` gives uint8 NHWC images and int32
labels for train / val / test: CIFAR-10 from a local archive (`cifar.py`) or
through TFDS (`tfds.py`), or `fake` random images of any size. Validation is
held out of train by the registry's rule (`registry.hold_out`).

Batching (device, every step; `InMemoryFeed`): each split lives on the device
as uint8; batch k is a gather by indices from a per-epoch permutation that is
a pure function of (seed, epoch). Augmentation follows in the jitted train
step (`augment.py`). Nothing but two integers crosses from host to device per
step, and a resumed run sees exactly the batches it would have seen.
"""

import dataclasses
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import cifar
from alexnet_jax.data import registry
from alexnet_jax.data.registry import Split
from alexnet_jax.runtime import mesh as mesh_lib


@dataclasses.dataclass
class Dataset:
  train: Split
  val: Optional[Split]  # None without a validation split.
  test: Split
  num_classes: int


def load_fake(num_train: int, num_test: int, image_size: int, num_classes: int,
              seed: int = 0):
  """Random uint8 images and labels of the right shapes; no download."""
  rng = np.random.default_rng(seed)

  def split(n):
    return Split(
        rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
        rng.integers(0, num_classes, (n,), dtype=np.int32))

  return split(num_train), split(num_test)


def load_dataset(dataset, *, val_examples: int, val_fraction: float,
                 tfds_data_dir: str = '', fake_num_train: int = 512,
                 fake_num_test: int = 128) -> Dataset:
  """Host-side train/val/test arrays of an in-memory dataset (the resolved
  record, `registry.resolve`): CIFAR-10 from `dataset.data_dir` or TFDS, or
  fake images of `dataset.stored_side`."""
  if dataset.name == 'cifar10' and dataset.data_dir:
    train, test = cifar.load_cifar10_archive(dataset.data_dir)
  elif dataset.name == 'cifar10':
    from alexnet_jax.data import tfds  # pylint: disable=g-import-not-at-top
    train, test = tfds.load_cifar10(tfds_data_dir or None)
  else:
    train, test = load_fake(fake_num_train, fake_num_test,
                            dataset.stored_side, dataset.num_classes)
  train_idx, val_idx = registry.hold_out(len(train), registry.validation_count(
      val_examples, val_fraction, len(train)))
  val = None
  if val_idx is not None:
    train, val = (Split(train.images[train_idx], train.labels[train_idx]),
                  Split(train.images[val_idx], train.labels[val_idx]))
  return Dataset(train, val, test, dataset.num_classes)


# --- Data shards -----------------------------------------------------------------
#
# The training set is cut into `num_shards` equal, contiguous shards (the
# remainder is dropped); the global batch takes batch_size / num_shards
# examples from each shard, in shard order, each shard shuffled on its own.
# Process p of P keeps only shards [p*S/P, (p+1)*S/P): the rows of the batch
# its devices hold. Because the batch is defined by the shards and not by the
# processes, any process count that divides num_shards sees the same batches.

def process_share(train: Split, num_shards: int, process_index: int,
                  process_count: int):
  """(this process's contiguous shards, examples per shard)."""
  per_shard = len(train) // num_shards
  per_process = num_shards // process_count
  lo = process_index * per_process * per_shard
  hi = lo + per_process * per_shard
  return Split(train.images[lo:hi], train.labels[lo:hi]), per_shard


def epoch_permutations(seed_key, epoch, num_shards: int, per_shard: int):
  """[num_shards, per_shard]: each shard's order in `epoch`, a pure function."""
  epoch_key = jax.random.fold_in(seed_key, epoch)
  return jax.vmap(lambda s: jax.random.permutation(
      jax.random.fold_in(epoch_key, s), per_shard))(jnp.arange(num_shards))


def batch_indices(perms, step_in_epoch, batch_size: int, process_count: int):
  """[batch_size] indices into the owning process's share, shard-major.

  Row r of the batch is example perms[v, step * b + j] of shard v = r // b
  (b = batch_size / num_shards), found at (v mod shards-per-process) *
  per_shard + that in its process's share.
  """
  num_shards, per_shard = perms.shape
  b = batch_size // num_shards
  rows = jax.lax.dynamic_slice_in_dim(perms, step_in_epoch * b, b, axis=1)
  offset = (jnp.arange(num_shards) % (num_shards // process_count)) * per_shard
  return (rows + offset[:, None]).reshape(batch_size)


class InMemoryFeed:
  """The splits on the device; each training batch gathered there.

  dataset: the resolved record (`registry.resolve`: mean, std, shards);
  data: its host arrays (`load_dataset`).
  """
  streamed = False
  crops_on_device = False  # Augmentation crops CIFAR (crop_padding) itself.

  def __init__(self, dataset, data: Dataset, mesh, *, batch_size: int,
               seed: int, seeds: Optional[Sequence[int]] = None):
    self.dataset, self.mesh, self.batch_size = dataset, mesh, batch_size
    self.num_classes = data.num_classes
    self.sizes = {'train': len(data.train),
                  'val': len(data.val) if data.val else 0,
                  'test': len(data.test)}
    self.image_shape = data.train.images.shape[1:]
    self.shards = dataset.shards
    self.share_index, self.share_count = mesh_lib.share_of_process(mesh)
    share, self.per_shard = process_share(
        data.train, self.shards, self.share_index, self.share_count)
    self.train_arrays = (mesh_lib.put_process_share(share.images, mesh),
                         mesh_lib.put_process_share(share.labels, mesh))
    self.eval_arrays = {name: (mesh_lib.put_replicated(s.images, mesh),
                               mesh_lib.put_replicated(s.labels, mesh))
                        for name, s in (('val', data.val), ('test', data.test))
                        if s}
    # `seeds`: a stack of runs (`task/runs.py`), each its own data order;
    # batches then carry a leading run axis.
    self.runs = len(seeds) if seeds is not None else None
    data_key = lambda s: jax.random.fold_in(jax.random.key(s), 0x5eed)
    if self.runs is None:
      self.data_key = data_key(seed)
      self.permutations = jax.jit(epoch_permutations, static_argnums=(2, 3),
                                  out_shardings=mesh_lib.replicated(mesh))
      self.gather = jax.jit(self._gather, static_argnums=(4,))
    else:
      self.data_key = jax.vmap(data_key)(jnp.asarray(seeds, jnp.uint32))
      self.permutations = jax.jit(
          lambda keys, epoch, shards, per_shard: jax.vmap(
              lambda k: epoch_permutations(k, epoch, shards, per_shard))(keys),
          static_argnums=(2, 3), out_shardings=mesh_lib.replicated(mesh))
      self.gather = jax.jit(self._gather_runs, static_argnums=(4,))
    self._epoch, self._perms = None, None

  def _gather(self, images, labels, perms, step_in_epoch, batch):
    parts = mesh_lib.batch_shards(self.mesh)
    batch_sharding = mesh_lib.batch(self.mesh)
    idx = batch_indices(perms, step_in_epoch, batch, self.share_count)
    idx = jax.lax.with_sharding_constraint(
        idx.reshape(parts, batch // parts), batch_sharding)
    take = jax.vmap(lambda rows, i: rows[i])
    x = take(images, idx).reshape((batch,) + images.shape[2:])
    y = take(labels, idx).reshape(batch)
    return (jax.lax.with_sharding_constraint(x, batch_sharding),
            jax.lax.with_sharding_constraint(y, batch_sharding))

  def _gather_runs(self, images, labels, perms, step_in_epoch, batch):
    """`_gather` for each run's permutation (perms [runs, ...]), each run's
    batch on its run group's devices."""
    x, y = jax.vmap(lambda p: self._gather(images, labels, p, step_in_epoch,
                                           batch), spmd_axis_name='runs')(perms)
    where = mesh_lib.stacked_batch(self.mesh)
    return (jax.lax.with_sharding_constraint(x, where),
            jax.lax.with_sharding_constraint(y, where))

  def device_arrays(self) -> tuple:
    """Every array the feed keeps on the device (for sizing a stack)."""
    return self.train_arrays, self.eval_arrays

  def epoch_data(self, epoch: int):
    """What `gather_batch` reads for `epoch`: the arrays and that epoch's
    permutation of each shard (computed once per epoch)."""
    if self._epoch != epoch:
      self._epoch, self._perms = epoch, self.permutations(
          self.data_key, epoch, self.shards, self.per_shard)
    return (*self.train_arrays, self._perms)

  def batch(self, epoch: int, index: int) -> dict:
    """Batch `index` of `epoch`, gathered on the device by its own call."""
    images, labels = self.gather(*self.epoch_data(epoch), np.int32(index),
                                 self.batch_size)
    return {'images': images, 'labels': labels}

  def gather_batch(self, data, index):
    """Batch `index` of the epoch `data` holds (`epoch_data`); jittable."""
    gather = self._gather if self.runs is None else self._gather_runs
    images, labels = gather(*data, index, self.batch_size)
    return {'images': images, 'labels': labels}

  def train(self, start_step: int, steps_per_epoch: int,
            total_steps: int) -> Iterator:
    """{'images', 'labels'} of batches start_step .. total_steps - 1."""
    for step in range(start_step, total_steps):
      yield self.batch(*divmod(step, steps_per_epoch))

  def evaluate(self, evaluator, variables, name: str):
    """Split `name` through `evaluator` (`evaluation.Evaluator`): on the
    device already, walked by one compiled scan."""
    return evaluator.over_arrays(variables, *self.eval_arrays[name])
