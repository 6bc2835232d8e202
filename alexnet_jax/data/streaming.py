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

import atexit
import dataclasses
import functools
import gc
import os
import signal
import threading
import time
from typing import Optional, Sequence

from etils import epath
import grain
import numpy as np

from alexnet_jax.data import images
from alexnet_jax.data import registry
from alexnet_jax.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def is_uri(path: str) -> bool:
  return '://' in str(path)


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_image_folder(root: str) -> dict:
  """{class folder: sorted image paths} under root/<class>/<image>."""
  missing = DataError(f'image folder {root!r} does not exist (expected '
                      f'{root}/<class>/<image>.jpg|png)')
  if is_uri(root):
    try:
      entries = list(epath.Path(root).glob('*/*'))
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'cannot list image folder {root!r}: '
                      f'{type(e).__name__}: {e}') from None
    if not entries and not epath.Path(root).exists():
      raise missing
    found = {}
    for path in entries:
      if _is_image(path.name):
        found.setdefault(path.parent.name, []).append(str(path))
    return {k: sorted(v) for k, v in found.items()}
  if not os.path.isdir(root):
    raise missing
  found = {}
  for folder in sorted((e for e in os.scandir(root) if e.is_dir()),
                       key=lambda e: e.name):
    found[folder.name] = [e.path for e in sorted(os.scandir(folder.path),
                                                 key=lambda e: e.name)
                          if e.is_file() and _is_image(e.name)]
  return found


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
    """Local folders through os.scandir; a URI (gs://...) through etils'
    epath, listed in one glob (a pod's hosts read the same bucket)."""
    found = _list_image_folder(root)
    classes = tuple(classes) if classes is not None else tuple(sorted(found))
    if not classes:
      raise DataError(f'image folder {root!r} has no class folders (expected '
                      f'{root}/<class>/<image>.jpg|png)')
    extra = sorted(set(found) - set(classes))
    if extra:
      raise DataError(f'{root!r} has class folders that train/ does not: '
                      f'{", ".join(extra[:5])}')
    paths, labels = [], []
    for label, name in enumerate(classes):
      # A class may have no examples in this split.
      paths += found.get(name, [])
      labels += [label] * len(found.get(name, []))
    if not paths:
      raise DataError(f'no .jpg/.jpeg/.png images under {root!r}')
    return cls(tuple(paths), tuple(labels), classes)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    path = self.paths[index]
    if is_uri(path):
      data = epath.Path(path).read_bytes()
    else:
      with open(path, 'rb') as f:
        data = f.read()
    return {'image': data, 'label': self.labels[index], 'index': int(index)}

  def describe(self, index: int) -> str:
    return self.paths[index]


@dataclasses.dataclass(frozen=True)
class Subset:
  """Some records of a source, by index (a held-out validation split)."""
  source: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[int(self.indices[index])]

  def describe(self, index: int) -> str:
    return self.source.describe(index)  # Records carry the source's index.


def hold_out(source, count: int):
  """(train, val or None) records, by the registry's hold-out rule."""
  train_idx, val_idx = registry.hold_out(len(source), count)
  if val_idx is None:
    return source, None
  return Subset(source, train_idx), Subset(source, val_idx)


# What a record that cannot be read or decoded raises: PIL's own errors
# (UnidentifiedImageError is an OSError; truncated files, bad headers), and
# the file system's. Anything else is a bug and keeps its traceback.
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, IndexError,
               TypeError)
# Tries before a stream gives up on a position (a whole dataset unreadable).
_ATTEMPTS = 16


def _unreadable(source, index: int, why) -> DataError:
  return DataError(f'{_ATTEMPTS} images in a row cannot be decoded (the last: '
                   f'{source.describe(index)}: {why}); check the data')


def _whole(image) -> np.ndarray:
  """The stored square itself: a raw array, or a JPEG decoded straight to
  RGB (no conversion copy: this is the store's whole host-side work)."""
  if isinstance(image, np.ndarray):
    return image
  return images.decode_rgb_array(image)


@dataclasses.dataclass(frozen=True)
class TrainExample:
  """Global position -> (uint8 image, label, index of a replaced record or
  -1); the crop random by (seed, position).

  `records` is the endless shuffled order, indexed by position. A record
  that cannot be read or decoded is replaced by the record at another
  position drawn from (seed, position, attempt), so batch k stays a pure
  function of (seed, k) and resume stays exact; its source index comes out
  so the feed can name it and count it. `crop_size` 0: the stored square
  whole (the store: cropped on the device).
  """
  records: object
  source: object
  seed: int
  resize_size: int
  crop_size: int
  inception_crop: bool

  def image(self, record, rng) -> np.ndarray:
    if not self.crop_size:
      return _whole(record['image'])
    if self.inception_crop:
      return images.random_resized_crop(record['image'], self.crop_size, rng)
    img = images.decode(record['image'], self.resize_size)
    top, left = rng.integers(0, self.resize_size - self.crop_size + 1, 2)
    return images.resized_window(img, self.resize_size, int(top), int(left),
                                 self.crop_size)

  def _first_good(self, position: int, use):
    """(use(record), replaced) for the record at `position`, or, where it
    cannot be read or used, the first good one of its replacements: source
    records drawn from (seed, position, attempt)."""
    replaced, why, index = -1, None, 0
    for attempt in range(_ATTEMPTS):
      try:
        record = self.records[position] if attempt == 0 else self.source[
            int(np.random.default_rng([self.seed, position, attempt])
                .integers(0, len(self.source)))]
      except _UNREADABLE as e:  # A file gone or unreadable: index unknown.
        why, replaced = e, replaced if replaced != -1 else -2
        continue
      try:
        return use(record), replaced
      except _UNREADABLE as e:
        why, index = e, record['index']
        replaced = index if replaced == -1 else replaced
    raise _unreadable(self.source, index, why)

  def __call__(self, position):
    rng = (np.random.default_rng([self.seed, position]) if self.crop_size
           else None)  # The store's squares are cropped on the device.
    (image, label), replaced = self._first_good(
        position, lambda record: (self.image(record, rng), record['label']))
    return image, np.int32(label), np.int64(replaced)

  def record(self, position: int, check: bool = False):
    """(record, replaced): the record the stream takes at `position`, its
    bytes undecoded; with `check`, decoded once here to prove it decodes."""
    def use(record):
      if check:
        images.decode(record['image'])
      return record
    return self._first_good(position, use)


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """Global position -> (uint8 central square, label, mask, index of an
  unreadable record or -1). Padding past the split's end repeats its last
  record with mask 0; an unreadable record is masked out too, so it counts
  nowhere."""
  records: object
  resize_size: int

  def __call__(self, position):
    index = min(position, len(self.records) - 1)
    try:
      record = self.records[index]
      img = images.decode(record['image'], self.resize_size)
      image = images.resized_window(img, self.resize_size, 0, 0,
                                    self.resize_size)
      return (image, np.int32(record['label']),
              np.float32(position < len(self.records)), np.int64(-1))
    except _UNREADABLE:
      side = self.resize_size
      return (np.zeros((side, side, 3), np.uint8), np.int32(0), np.float32(0),
              np.int64(index if position < len(self.records) else -1))


@dataclasses.dataclass(frozen=True)
class Positions:
  """Local example i of process p -> its global position.

  Global batch k holds positions [k*B, (k+1)*B); process p reads its slice
  [k*B + p*b, k*B + (p+1)*b).
  """
  global_batch: int
  local_batch: int
  process_index: int

  def __call__(self, i):
    k, j = divmod(int(i), self.local_batch)
    return k * self.global_batch + self.process_index * self.local_batch + j


def _worker_init(parent: int, worker_index: int, worker_count: int):
  """Run in each Grain worker: leave signals to the trainer, and exit as soon
  as process `parent` is gone.

  A scheduler's SIGTERM (or a Ctrl-C) reaches the whole process group: the
  trainer answers it by finishing its step and saving, which needs the
  workers alive, so they ignore SIGTERM and SIGINT. They end with their
  parent instead: without that a trainer killed with SIGKILL (or a
  preempted host's) would leave them behind, each holding memory, for good.
  `parent` is taken in the trainer before the workers start, since a worker
  may still be starting when its parent dies.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)

  def watch():
    while os.getppid() == parent:
      time.sleep(1)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, name='end_with_parent', daemon=True).start()


@dataclasses.dataclass(frozen=True)
class _Batch:
  """Batch k of this process: its examples stacked. One Grain element per
  batch, not per image: Grain's per-element bookkeeping (a thread hand-off
  each) would otherwise cost a third of a 256x256 JPEG's decode."""
  positions: Positions
  example: object
  local_batch: int

  def __call__(self, k):
    examples = [self.example(self.positions(k * self.local_batch + j))
                for j in range(self.local_batch)]
    return tuple(np.stack(parts) for parts in zip(*examples))


def passes(ds):
  """Iterates Grain dataset `ds` once, each batch copied out of the shared
  memory Grain's workers hand it over in, and that memory unlinked before
  the batch is used (`owned`).

  A batch still in shared memory when the process ends makes Python warn of
  leaked shared memory. Grain (0.2.18) would unlink it late: in a deleter
  thread, once its array is collected; and it keeps each worker's last batch
  alive in a reference cycle (the StopIteration that ends a worker's stream
  holds, through its traceback, the frame that holds the batch), which the
  collector frees whenever it runs, if before the exit at all. So the pass
  unlinks each batch itself as it takes it: whatever Grain still holds is a
  name already gone. A pass left unfinished (a run that stops) closes
  Grain's iterator when it is closed: its workers end and the batches they
  had ready are unlinked; the batches Grain had opened in this process are
  collected and their unlinking waited for.
  """
  batches = iter(ds)
  try:
    for element in batches:
      element = owned(element)  # Grain's arrays dropped here,
      yield element  # not held while this copy is in use.
  except GeneratorExit:
    # Closed in the main thread (a stopping run); one the collector closes
    # in a Grain thread is left to Grain, which cannot join itself.
    if threading.current_thread() is threading.main_thread():
      getattr(batches, 'close', lambda: None)()
      del batches
      release_shared_memory()
    raise


def owned(element):
  """A batch (an array or a tuple of them) with each array that lies in
  Grain's shared memory copied out of it and that memory unlinked at once:
  the batch is ours, and Grain's array, however long something holds it,
  only closes its mapping when it goes (it no longer unlinks)."""
  if isinstance(element, tuple):
    return tuple(owned(x) for x in element)
  if isinstance(element, grain.multiprocessing.SharedMemoryArray):
    copy = np.array(element, copy=True)
    if getattr(element, '_unlink_on_del', False) and element.shm is not None:
      element._unlink_on_del = False  # pylint: disable=protected-access
      element.shm.unlink()
    return copy
  return element


def release_shared_memory():
  """Collects the batches Grain opened here that nothing references (those
  a stopped pass never took), and waits until their shared memory is
  unlinked.

  Run when a pass is closed early, and at exit once Grain's workers have
  been used, before multiprocessing stops Grain's deleter thread (whose
  pending unlinks it would drop).
  """
  gc.collect()
  # Grain unlinks in one thread, in order (enable_async_del(1)):
  # a task that runs after those queued so far finds them done.
  deleter = getattr(grain.multiprocessing.SharedMemoryArray,
                    '_del_thread_pool', None)
  if deleter is not None:
    try:
      deleter.apply_async(int).wait(timeout=10)
    except ValueError:  # Its pool already stopped: the process is ending.
      pass


@functools.cache
def _release_at_exit():
  # Exit handlers run last-registered first: this one before
  # multiprocessing's, registered when Grain imported it.
  atexit.register(release_shared_memory)


def _loader(ds, workers: int, threads: int = 2):
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2))
  if workers > 0:
    _release_at_exit()
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # Grain's worker pool reads its absl flags; outside an absl app (a
      # notebook, a test) they would be unparsed: take their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                        worker_init_fn=functools.partial(_worker_init,
                                                         os.getpid()))
  return ds


class Shuffled:
  """The endless sequence of training records: epoch e is a permutation of
  the source drawn from (seed, e), so position p is record
  perm(seed, p // n)[p % n]. Each process computes a permutation once per
  epoch (numpy's PCG64: tens of ms for ImageNet's 1.28 million), where
  Grain's per-index shuffle would spend about 0.1 ms on every image."""

  def __init__(self, source, seed: int):
    self.source, self.seed = source, seed
    self._epoch, self._perm = None, None

  def __getstate__(self):  # To Grain's workers without the cache.
    return {'source': self.source, 'seed': self.seed, '_epoch': None,
            '_perm': None}

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(
          len(self.source))
      self._epoch = epoch
    return self._perm

  def __getitem__(self, position: int):
    epoch, i = divmod(int(position), len(self.source))
    return self.source[int(self.permutation(epoch)[i])]


def shuffled(source, seed: int) -> Shuffled:
  return Shuffled(source, seed)


def train_batches(source, *, seed: int, global_batch: int, start_step: int,
                  total_steps: int, resize_size: int, crop_size: int,
                  inception_crop: bool = False, workers: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  threads: int = 2):
  """A Grain dataset of this process's (images, labels, replaced) of batches
  start_step .. total_steps - 1 (`replaced`: per example, the source index
  of an unreadable record it stands in for, -2 where that index is unknown
  (the file could not be read), or -1).

  `workers` Grain processes decode (0: this process), each with `threads`
  reader threads (PIL releases the GIL while decoding). `crop_size` 0 hands
  out the stored squares whole (the device crops them).
  """
  local = global_batch // process_count
  example = TrainExample(shuffled(source, seed), source, seed, resize_size,
                         crop_size, inception_crop)
  ds = grain.MapDataset.range(start_step, total_steps).map(
      _Batch(Positions(global_batch, local, process_index), example, local))
  return _loader(ds, workers, threads)


def eval_batches(source, *, global_batch: int, resize_size: int,
                 workers: int = 0, process_index: int = 0,
                 process_count: int = 1):
  """A Grain dataset of this process's (images, labels, mask, unreadable):
  every record once."""
  local = global_batch // process_count
  batches = -(-len(source) // global_batch)
  ds = grain.MapDataset.range(0, batches).map(
      _Batch(Positions(global_batch, local, process_index),
             EvalExample(source, resize_size), local))
  return _loader(ds, workers)
