"""What each dataset is, in one record per dataset.

How it is read (held in device memory, or streamed from files by Grain), its
TFDS name and splits, its classes and their names, the side of its stored
images, its per-channel mean and std, and the rule that holds validation
examples out of its training split. Config checks, the feeds, inference,
`prepare` and the benchmark all read it here, nowhere else.
"""

import dataclasses
import importlib.resources
from typing import Optional

from etils import epath
import numpy as np

from alexnet_jax.errors import DataError

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
# Per-channel statistics of the full training sets (0..1 pixel scale).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Imagenette's 10 synsets are these ImageNet classes, in sorted-synset order.
_IMAGENETTE_IN_IMAGENET = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)


@dataclasses.dataclass
class Split:
  """One split held on the host: uint8 [N, H, W, C] images, int32 [N] labels."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


def imagenet_classes() -> tuple:
  """ImageNet's 1000 class names, torchvision's order (imagenet_classes.txt)."""
  text = (importlib.resources.files('alexnet_jax.data') /
          'imagenet_classes.txt').read_text(encoding='utf-8')
  return tuple(line for line in text.splitlines()
               if line and not line.startswith('#'))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset, as it is whatever the run.

  Attributes:
    name: the `--config.dataset` value.
    streamed: read from files by Grain workers (image datasets), or held in
      device memory whole (CIFAR-10, fake).
    num_classes: None where the data decides (an image folder's class
      folders, the store's manifest) or the run does (`fake`).
    mean, std: per-channel, 0..1 pixel scale.
    tfds_name, tfds_splits: the TFDS dataset and its (train, test) splits;
      ImageNet's official validation set is the test split.
  """
  name: str
  streamed: bool
  num_classes: Optional[int]
  mean: tuple
  std: tuple
  tfds_name: Optional[str] = None
  tfds_splits: tuple = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset as one run reads it: its record with the run's values
  resolved once (`resolve`), so nothing below asks the config again.

  stored_side: the side of the images as stored, what crops and resizes
    start from (the paper's 256 for image datasets, 32 for CIFAR-10).
  num_classes: None where the data decides (an image folder).
  shards: equal shards of the training set (`in_memory.process_share`); a
    stream's batches are positions in one shuffled sequence: one shard.
  """
  spec: DatasetSpec
  data_dir: str
  stored_side: int
  num_classes: Optional[int]
  shards: int

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def streamed(self) -> bool:
    return self.spec.streamed

  @property
  def mean(self) -> tuple:
    return self.spec.mean

  @property
  def std(self) -> tuple:
    return self.spec.std

  def class_names(self, num_classes: int) -> tuple:
    """Human-readable names in label order; 'class K' where none are known."""
    name, data_dir = self.spec.name, self.data_dir
    if name == 'cifar10' and num_classes == 10:
      return CIFAR10_CLASSES
    if name == 'store' and data_dir:
      from alexnet_jax.data import store  # pylint: disable=g-import-not-at-top
      names = tuple(store.read_manifest(data_dir)['classes'])
      if len(names) == 1000 and names[0] == 'n01440764':
        return imagenet_classes()  # ImageNet's synsets: torchvision's names.
      if len(names) == num_classes:
        return names
    if name in ('imagenet2012', 'image_folder') and num_classes == 1000:
      return imagenet_classes()
    if name == 'imagenette' and num_classes == 10:
      names = imagenet_classes()
      return tuple(names[i] for i in _IMAGENETTE_IN_IMAGENET)
    if name == 'image_folder' and data_dir:
      root = epath.Path(data_dir) / 'train'  # Local or gs://.
      if root.is_dir():
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if len(folders) == num_classes:
          return tuple(folders)
    return tuple(f'class {k}' for k in range(num_classes))


def resolve(name: str, *, data_dir: str = '', num_classes: int = 0,
            fake_image_size: int = 32, resize_size: int = 256,
            data_shards: int = 0, process_count: int = 1) -> Dataset:
  """Dataset `name` with the run's values: `num_classes` and
  `fake_image_size` are the fake dataset's; `resize_size` the stored side of
  image datasets; `data_shards` 0 means one shard per process."""
  spec = get(name)
  classes = spec.num_classes
  if name == 'fake':
    classes = num_classes
  elif name == 'store' and data_dir:
    from alexnet_jax.data import store  # pylint: disable=g-import-not-at-top
    classes = len(store.read_manifest(data_dir)['classes'])
  if spec.streamed:
    side, shards = resize_size, 1  # The paper's 256x256 (Sec. 2).
  else:
    side = fake_image_size if name == 'fake' else 32
    shards = data_shards or process_count
  return Dataset(spec, data_dir, side, classes, shards)


DATASETS = {spec.name: spec for spec in (
    DatasetSpec('cifar10', False, 10, CIFAR10_MEAN, CIFAR10_STD,
                tfds_name='cifar10'),
    DatasetSpec('fake', False, None, CIFAR10_MEAN, CIFAR10_STD),
    DatasetSpec('image_folder', True, None, IMAGENET_MEAN, IMAGENET_STD),
    DatasetSpec('imagenet2012', True, 1000, IMAGENET_MEAN, IMAGENET_STD,
                tfds_name='imagenet2012', tfds_splits=('train', 'validation')),
    DatasetSpec('imagenette', True, 10, IMAGENET_MEAN, IMAGENET_STD,
                tfds_name='imagenette', tfds_splits=('train', 'validation')),
    # The paper's store (`store.py`): any of the above, written once at
    # 256x256 by `python -m alexnet_jax.prepare --store=DIR`.
    DatasetSpec('store', True, None, IMAGENET_MEAN, IMAGENET_STD),
)}


def get(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; valid: {", ".join(DATASETS)}')
  return DATASETS[name]


# --- The hold-out rule -----------------------------------------------------------

def validation_count(val_examples: int, val_fraction: float,
                     num_train: int) -> int:
  """How many training examples become validation: `val_examples`, else
  the `val_fraction` share (0: no validation split)."""
  if val_examples > 0:
    return val_examples
  return int(round(val_fraction * num_train))


def hold_out(num_train: int, count: int, seed: int = 0):
  """(train indices, val indices or None), both sorted: `count` examples
  drawn with a fixed seed, the same whatever the training seed."""
  if count <= 0:
    return np.arange(num_train), None
  if count >= num_train:
    raise DataError(f'cannot hold out {count} validation examples from a '
                    f'training split of {num_train}; lower '
                    '--config.val_examples or --config.val_fraction')
  order = np.random.default_rng(seed).permutation(num_train)
  return np.sort(order[count:]), np.sort(order[:count])
