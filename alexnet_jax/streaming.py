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
import io
import os
import threading
import time
from typing import Optional, Sequence

import grain
import numpy as np

from alexnet_jax.errors import DataError

DATASETS = ('image_folder', 'imagenet2012', 'imagenette')
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


def hold_out(source, count: int, seed: int = 0):
  """(train, val): `count` records drawn with a fixed seed become val."""
  n = len(source)
  if count <= 0:
    return source, None
  if count >= n:
    raise DataError(f'cannot hold out {count} validation images from a '
                    f'training split of {n}')
  order = np.random.default_rng(seed).permutation(n)
  return (Subset(source, np.sort(order[count:])),
          Subset(source, np.sort(order[:count])))


def tfds_source(name: str, split: str, data_dir: Optional[str]):
  """A TFDS dataset prepared as ArrayRecord, as a random-access source."""
  from alexnet_jax import tf_cpu  # pylint: disable=g-import-not-at-top
  tf_cpu.tensorflow()  # CPU only: never the accelerators JAX uses.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None,
                            download=False)
  except Exception as e:  # pylint: disable=broad-except
    where = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
    raise DataError(
        f'TFDS {name} ({split}) is not prepared as ArrayRecord in {where} '
        f'({type(e).__name__}); prepare it once with `python -m '
        f'alexnet_jax.prepare --dataset={name} --tfds_data_dir={where}` '
        '(README "ImageNet")') from None


# --- Host-side image work --------------------------------------------------------


def decode(image, min_side: int = 0):
  """Encoded bytes or a uint8 array -> an RGB PIL image.

  JPEGs much larger than needed are decoded at a reduced scale (libjpeg's
  DCT scaling, via PIL's `draft`), never below `min_side` on the short side.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(image, np.ndarray):
    return Image.fromarray(image).convert('RGB')
  img = Image.open(io.BytesIO(image))
  if min_side and img.format == 'JPEG':
    w, h = img.size
    scale = min(w, h) / min_side
    if scale >= 2:
      img.draft('RGB', (int(w / scale) + 1, int(h / scale) + 1))
  return img.convert('RGB')


def _shorter_to(w: int, h: int, size: int) -> tuple:
  """(width, height) with the shorter side `size`, as torchvision's Resize."""
  return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def resize_shorter(img, size: int):
  """Shorter side to `size` (bilinear, antialiased), as torchvision's Resize."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  new = _shorter_to(*img.size, size)
  return img if new == img.size else img.resize(new, Image.BILINEAR)


def _centered(length: int, size: int) -> int:
  """Where a central window of `size` starts (halves round to even)."""
  return int(round((length - size) / 2.))


def center_square(img, size: int) -> np.ndarray:
  """The central size x size window as uint8 [size, size, 3]."""
  w, h = img.size
  left, top = _centered(w, size), _centered(h, size)
  return np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)


def resized_window(img, resize_size: int, top: int, left: int,
                   size: int) -> np.ndarray:
  """center_square(resize_shorter(img, resize_size), resize_size)
  [top:top + size, left:left + size], computing only that window: PIL
  resamples just the window's box of the original on the same sampling grid
  (equal up to a level's rounding), instead of resizing the whole image and
  throwing most of it away."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = img.size
  new_w, new_h = _shorter_to(w, h, resize_size)
  x = _centered(new_w, resize_size) + left
  y = _centered(new_h, resize_size) + top
  if (new_w, new_h) == (w, h):
    return np.asarray(img.crop((x, y, x + size, y + size)), np.uint8)
  sx, sy = w / new_w, h / new_h
  box = (x * sx, y * sy, (x + size) * sx, (y + size) * sy)
  return np.asarray(img.resize((size, size), Image.BILINEAR, box=box),
                    np.uint8)


def random_resized_crop(img, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop (Inception-style), on a PIL image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = img.size
  area = w * h
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      left = int(rng.integers(0, w - cw + 1))
      top = int(rng.integers(0, h - ch + 1))
      break
  else:  # Fall back to the central crop at the nearest allowed aspect.
    aspect = w / h
    if aspect < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
      cw, ch = int(round(h * ratio[1])), h
    else:
      cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
  crop = img.crop((left, top, left + cw, top + ch))
  return np.asarray(crop.resize((size, size), Image.BILINEAR), np.uint8)


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
      img = decode(record['image'], self.crop_size)
      image = random_resized_crop(img, self.crop_size, rng)
    else:
      img = decode(record['image'], self.resize_size)
      top, left = rng.integers(0, self.resize_size - self.crop_size + 1, 2)
      image = resized_window(img, self.resize_size, int(top), int(left),
                             self.crop_size)
    return image, np.int32(record['label'])


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """(position, record) -> (uint8 central square, label, mask)."""
  resize_size: int
  num_records: int

  def __call__(self, item):
    position, record = item
    img = decode(record['image'], self.resize_size)
    image = resized_window(img, self.resize_size, 0, 0, self.resize_size)
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
  """Iterates this process's (images, labels) of batches start_step.. total_steps-1.

  `workers` Grain processes decode (0: this process), each with `threads`
  reader threads (PIL releases the GIL while decoding).
  """
  local = global_batch // process_count
  order = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = grain.MapDataset.range(start_step * local, total_steps * local)
  ds = ds.map(_Position(order, global_batch, local, process_index))
  ds = ds.map(TrainExample(seed, resize_size, crop_size, inception_crop))
  return iter(_loader(ds, local, workers, threads))


def eval_batches(source, *, global_batch: int, resize_size: int,
                 workers: int = 0, process_index: int = 0,
                 process_count: int = 1):
  """Iterates this process's (images, labels, mask): every record once."""
  local = global_batch // process_count
  batches = -(-len(source) // global_batch)
  ds = grain.MapDataset.range(0, batches * local)
  ds = ds.map(_Position(source, global_batch, local, process_index,
                        clamp=True))
  ds = ds.map(EvalExample(resize_size, len(source)))
  return iter(_loader(ds, local, workers))
