"""Streaming image datasets on the host, with Grain: files or records in,
uint8 batches out.

For datasets that do not fit on the device (ImageNet). Sources are random
access (`image_folder` files, TFDS ArrayRecord data sources), so the stream
is a pure function of (seed, position):

  * training: the records in a fresh shuffle every epoch
    (`MapDataset.shuffle(seed).repeat()`); global batch k holds positions
    [k*B, (k+1)*B) of that endless sequence, and process p of P decodes only
    its slice [k*B + p*B/P, k*B + (p+1)*B/P). Each example's random crop comes
    from a generator seeded by (seed, position). So batch k is the same on any
    number of processes or worker processes, and the iterator's whole state
    is k, the train state's step, saved in the same orbax checkpoint: a
    resumed run starts the stream at its step and sees exactly the batches it
    would have seen.
  * evaluation: every record once, in order, padded to whole batches; the
    padding is masked out (`mask`).

The expensive work (JPEG decode at reduced size, resize, crop) runs in Grain
worker processes; flip, colour noise and normalization run on the device
(`augment.py`). Images come out as the paper stored them (Sec. 2): the
shorter side rescaled to `resize_size` (256) and the central square kept;
training takes a random `crop_size` window of that (or, with
`random_resized_crop`, torchvision's Inception-style crop of the original).
"""

import dataclasses
import functools
import os
import threading
import time
from typing import Optional, Sequence

import grain
import numpy as np

from alexnet_jax.data import images
from alexnet_jax.data import registry
from alexnet_jax.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


# --- Sources -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolderSource:
  """DIR/<class>/<image>: classes are the sorted folder names, as in
  torchvision's ImageFolder (so an ImageNet tree gets its 1000-class order).
  Records are {'image': encoded bytes, 'label': int}."""
  paths: tuple
  labels: tuple
  classes: tuple

  @classmethod
  def scan(cls, root: str, classes: Optional[Sequence[str]] = None):
    if not os.path.isdir(root):
      raise DataError(f'image folder {root!r} does not exist (expected '
                      f'{root}/<class>/<image>.jpg|png)')
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    classes = tuple(classes) if classes is not None else tuple(found)
    if not classes:
      raise DataError(f'image folder {root!r} has no class folders (expected '
                      f'{root}/<class>/<image>.jpg|png)')
    extra = sorted(set(found) - set(classes))
    if extra:
      raise DataError(f'{root!r} has class folders that train/ does not: '
                      f'{", ".join(extra[:5])}')
    paths, labels = [], []
    for label, name in enumerate(classes):
      folder = os.path.join(root, name)
      if not os.path.isdir(folder):
        continue  # A class with no examples in this split.
      for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(entry.path)
          labels.append(label)
    if not paths:
      raise DataError(f'no .jpg/.jpeg/.png images under {root!r}')
    return cls(tuple(paths), tuple(labels), classes)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    with open(self.paths[index], 'rb') as f:
      return {'image': f.read(), 'label': self.labels[index]}


@dataclasses.dataclass(frozen=True)
class Subset:
  """Some records of a source, by index (a held-out validation split)."""
  source: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[int(self.indices[index])]


def hold_out(source, count: int):
  """(train, val or None) records, by the registry's hold-out rule."""
  train_idx, val_idx = registry.hold_out(len(source), count)
  if val_idx is None:
    return source, None
  return Subset(source, train_idx), Subset(source, val_idx)


@dataclasses.dataclass(frozen=True)
class TrainExample:
  """(position, record) -> (uint8 crop, label); random by (seed, position)."""
  seed: int
  resize_size: int
  crop_size: int
  inception_crop: bool

  def __call__(self, item):
    position, record = item
    rng = np.random.default_rng([self.seed, position])
    if self.inception_crop:
      img = images.decode(record['image'], self.crop_size)
      image = images.random_resized_crop(img, self.crop_size, rng)
    else:
      img = images.decode(record['image'], self.resize_size)
      top, left = rng.integers(0, self.resize_size - self.crop_size + 1, 2)
      image = images.resized_window(img, self.resize_size, int(top),
                                    int(left), self.crop_size)
    return image, np.int32(record['label'])


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """(position, record) -> (uint8 central square, label, mask)."""
  resize_size: int
  num_records: int

  def __call__(self, item):
    position, record = item
    img = images.decode(record['image'], self.resize_size)
    image = images.resized_window(img, self.resize_size, 0, 0,
                                  self.resize_size)
    mask = np.float32(position < self.num_records)
    return image, np.int32(record['label']), mask


@dataclasses.dataclass(frozen=True)
class _Position:
  """Local example i of process p -> (global position, record).

  Global batch k holds positions [k*B, (k+1)*B); process p reads its slice
  [k*B + p*b, k*B + (p+1)*b). `records` is indexed by position: the endless
  shuffled order in training; in evaluation the split itself, where the
  padding past its end repeats the last record (`clamp`).
  """
  records: object
  global_batch: int
  local_batch: int
  process_index: int
  clamp: bool = False

  def __call__(self, i):
    k, j = divmod(int(i), self.local_batch)
    position = k * self.global_batch + self.process_index * self.local_batch + j
    index = min(position, len(self.records) - 1) if self.clamp else position
    return position, self.records[index]


def _end_with_parent(parent: int, worker_index: int, worker_count: int):
  """Run in each Grain worker: exit as soon as process `parent` is gone.

  Without it a trainer killed with SIGKILL (or a preempted host's) leaves its
  decoding workers behind, each holding memory, for good. `parent` is taken
  in the trainer before the workers start, since a worker may still be
  starting when its parent dies.
  """
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent:
      time.sleep(1)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, name='end_with_parent', daemon=True).start()


def _stack(examples):
  return tuple(np.stack(parts) for parts in zip(*examples))


def _loader(ds, local_batch: int, workers: int, threads: int = 2):
  ds = ds.batch(local_batch, batch_fn=_stack).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2))
  if workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # Grain's worker pool reads its absl flags; outside an absl app (a
      # notebook, a test) they would be unparsed: take their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                        worker_init_fn=functools.partial(_end_with_parent,
                                                         os.getpid()))
  return ds


def train_batches(source, *, seed: int, global_batch: int, start_step: int,
                  total_steps: int, resize_size: int, crop_size: int,
                  inception_crop: bool = False, workers: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  threads: int = 2):
  """A Grain dataset of this process's (images, labels) of batches
  start_step .. total_steps - 1.

  `workers` Grain processes decode (0: this process), each with `threads`
  reader threads (PIL releases the GIL while decoding).
  """
  local = global_batch // process_count
  order = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = grain.MapDataset.range(start_step * local, total_steps * local)
  ds = ds.map(_Position(order, global_batch, local, process_index))
  ds = ds.map(TrainExample(seed, resize_size, crop_size, inception_crop))
  return _loader(ds, local, workers, threads)


def eval_batches(source, *, global_batch: int, resize_size: int,
                 workers: int = 0, process_index: int = 0,
                 process_count: int = 1):
  """A Grain dataset of this process's (images, labels, mask): every record
  once."""
  local = global_batch // process_count
  batches = -(-len(source) // global_batch)
  ds = grain.MapDataset.range(0, batches * local)
  ds = ds.map(_Position(source, global_batch, local, process_index,
                        clamp=True))
  ds = ds.map(EvalExample(resize_size, len(source)))
  return _loader(ds, local, workers)
