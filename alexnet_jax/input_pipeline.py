"""Datasets held in memory: host arrays loaded once, and their on-device batching.

Loading (host, once): `load_dataset(config)` returns uint8 NHWC images and
int32 labels for train / val / test from one of
  * `cifar10` via TFDS (downloads into the TFDS data dir on a networked machine),
  * `cifar10` from a local copy of the standard python archive
    (`cifar-10-python.tar.gz` or its `cifar-10-batches-py/` folder), when
    `config.data_dir` is set,
  * `fake`: random images of any size, for smoke runs and benchmarks.
The validation split is held out of train with a fixed seed, so it is the same
whatever the training seed.

Batching (device, every step; `batches.InMemoryFeed`): the whole split lives
on the device as uint8; a batch is a gather by indices from a per-epoch
permutation that is a pure function of (seed, epoch). Augmentation follows in
the jitted train step (`augment.py`). Nothing but two integers crosses from
host to device per step, and a resumed run sees exactly the batches it would
have seen. Datasets too big for this stream from files (`streaming.py`).

TensorFlow / TFDS are imported only on the TFDS path.
"""

import dataclasses
import io
import os
import pickle
import tarfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import DataError

DATASETS = ('cifar10', 'fake')

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
# Per-channel statistics of the full CIFAR-10 training set (0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_CIFAR_TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
_CIFAR_TEST_FILE = 'test_batch'
_CIFAR_DIRNAME = 'cifar-10-batches-py'


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class Dataset:
  train: Split
  val: Optional[Split]  # None when val_fraction == 0
  test: Split
  num_classes: int
  mean: tuple = CIFAR10_MEAN
  std: tuple = CIFAR10_STD


# --- CIFAR-10 from the standard python archive --------------------------------

class _HostilePickle(Exception):
  pass


# The only globals a CIFAR-10 batch file refers to: numpy's array rebuild,
# and (in files re-written with numpy) its scalar rebuild.
_NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NUMPY_SCALAR = np.int64(0).__reduce__()[0]


def _numeric_scalar(dtype, *args):
  """numpy's scalar rebuild, for plain numeric dtypes only (an object dtype
  would read raw bytes as a Python object)."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise _HostilePickle(f'numpy scalar of dtype {dtype!r}')
  return _NUMPY_SCALAR(dtype, *args)


_CIFAR_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _NUMPY_RECONSTRUCT,
    ('numpy._core.multiarray', '_reconstruct'): _NUMPY_RECONSTRUCT,
    ('numpy.core.multiarray', 'scalar'): _numeric_scalar,
    ('numpy._core.multiarray', 'scalar'): _numeric_scalar,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles what real CIFAR-10 files hold, and nothing that can run code.

  A pickle can call any importable function on load. The batch files only
  ever need dicts, lists, strings, numbers and numpy arrays, so every other
  global (os.system, builtins.eval, ...) is refused before it is looked up.
  """

  def find_class(self, module, name):
    if (module, name) in _CIFAR_GLOBALS:
      return _CIFAR_GLOBALS[(module, name)]
    raise _HostilePickle(f'{module}.{name}')


def _read_cifar_batch(name: str, data: bytes) -> Split:
  try:
    d = _CifarUnpickler(io.BytesIO(data), encoding='latin1').load()
    if not isinstance(d, dict) or not {'data', 'labels'} <= set(d):
      raise ValueError(f'a {type(d).__name__} without data and labels')
    if isinstance(d['data'], np.ndarray) and d['data'].dtype != np.uint8:
      raise ValueError(f'data of dtype {d["data"].dtype}, not uint8')
    images = np.asarray(d['data'], dtype=np.uint8)
    labels = np.asarray(d['labels'], dtype=np.int32)
  except _HostilePickle as e:
    raise DataError(f'CIFAR-10 batch file {name} asks to load the Python '
                    f'object {e}, which CIFAR-10 files never contain; refusing '
                    'to load it (a crafted or foreign pickle). Use the '
                    'original archive') from None
  except Exception as e:  # pickle raises many types on truncated input.
    raise DataError(f'CIFAR-10 batch file {name} is truncated or corrupt '
                    f'({type(e).__name__}: {e}); re-extract the archive') from None
  if images.ndim != 2 or images.shape[1] != 3072 or len(images) != len(labels):
    raise DataError(f'CIFAR-10 batch file {name} has data of shape '
                    f'{images.shape} and {len(labels)} labels; expected Nx3072 '
                    'and N labels')
  if len(labels) and (labels.min() < 0 or labels.max() >= 10):
    raise DataError(f'CIFAR-10 batch file {name} has labels outside 0..9')
  # Rows hold 1024 red, 1024 green, 1024 blue values, each plane row-major.
  images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return Split(np.ascontiguousarray(images), labels)


def _concat(splits):
  return Split(np.concatenate([s.images for s in splits]),
               np.concatenate([s.labels for s in splits]))


def load_cifar10_archive(path: str):
  """(train, test) Splits from a CIFAR-10 python archive, folder or tarball.

  `path` may be `cifar-10-python.tar.gz`, the extracted `cifar-10-batches-py/`
  folder, or a folder that contains either. Batch files may hold any number of
  images.
  """
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise DataError(f'data_dir {path!r} does not exist; point '
                    '--config.data_dir at cifar-10-python.tar.gz or its '
                    f'extracted {_CIFAR_DIRNAME}/ folder')
  if os.path.isdir(path):
    for candidate in (os.path.join(path, _CIFAR_DIRNAME),
                      os.path.join(path, 'cifar-10-python.tar.gz')):
      if os.path.exists(candidate) and not os.path.exists(
          os.path.join(path, _CIFAR_TEST_FILE)):
        return load_cifar10_archive(candidate)
    files = {}
    for name in _CIFAR_TRAIN_FILES + (_CIFAR_TEST_FILE,):
      f = os.path.join(path, name)
      if os.path.isfile(f):
        with open(f, 'rb') as fh:
          files[name] = fh.read()
  elif tarfile.is_tarfile(path):
    files = {}
    try:
      with tarfile.open(path) as tar:
        for member in tar.getmembers():
          name = os.path.basename(member.name)
          if member.isfile() and name in _CIFAR_TRAIN_FILES + (_CIFAR_TEST_FILE,):
            files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
      raise DataError(f'data_dir {path!r} is a truncated or corrupt tarball '
                      f'({e}); download cifar-10-python.tar.gz again') from None
  else:
    raise DataError(f'data_dir {path!r} is not a CIFAR-10 archive: expected '
                    f'cifar-10-python.tar.gz or a {_CIFAR_DIRNAME}/ folder')
  missing = [n for n in _CIFAR_TRAIN_FILES + (_CIFAR_TEST_FILE,) if n not in files]
  if missing:
    raise DataError(f'data_dir {path!r} is not a CIFAR-10 archive: missing '
                    f'{", ".join(missing)} (expected data_batch_1..5 and '
                    'test_batch in the python pickle format)')
  train = _concat([_read_cifar_batch(n, files[n]) for n in _CIFAR_TRAIN_FILES])
  test = _read_cifar_batch(_CIFAR_TEST_FILE, files[_CIFAR_TEST_FILE])
  return train, test


# --- CIFAR-10 through TFDS ------------------------------------------------------

# Where TFDS's cifar10 builder downloads the archive from.
_CIFAR10_HOST = 'www.cs.toronto.edu'


def _offline_message(where: str, reason: str) -> str:
  return (f'could not download TFDS cifar10 into {where} ({reason}). Without '
          'network access, download cifar-10-python.tar.gz from '
          'https://www.cs.toronto.edu/~kriz/cifar.html elsewhere and pass '
          '--config.data_dir=/path/to/cifar-10-python.tar.gz (or its extracted '
          f'{_CIFAR_DIRNAME}/ folder)')


def _check_reachable(host: str, timeout: float = 10.):
  """Fails in seconds, not after minutes of TFDS download retries."""
  import socket
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return None
  except OSError as e:
    return f'{host} is unreachable: {e}'


def _prepare_cifar10_tfds(tfds, tfds_data_dir: Optional[str]):
  """Downloads and prepares TFDS cifar10 unless it is there already."""
  builder = tfds.builder('cifar10', data_dir=tfds_data_dir)
  try:
    builder.as_dataset(split='test')  # Lazy: reads nothing yet.
    return
  except AssertionError:  # TFDS's "could not find data in <dir>".
    pass
  where = tfds_data_dir or os.environ.get('TFDS_DATA_DIR',
                                          '~/tensorflow_datasets')
  unreachable = _check_reachable(_CIFAR10_HOST)
  if unreachable:
    raise DataError(_offline_message(where, unreachable))
  try:
    builder.download_and_prepare()
  except Exception as e:  # Network failures come as many exception types.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise DataError(_offline_message(
        where, f'{type(e).__name__}: {first_line}')) from None


def prepare_once(prepare, what: str):
  """Runs `prepare` on process 0 first, while the others wait for it.

  Several processes preparing one dataset into one shared directory at once
  would each download it and write over each other. Process 0 prepares; the
  others wait, learn whether it worked, then call `prepare` themselves, which
  finds the data ready on shared storage (or, on a host-local data dir,
  prepares that host's own copy).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return prepare()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  failure = None
  if jax.process_index() == 0:
    try:
      prepare()
    except DataError as e:
      failure = e
  ok = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
  if failure is not None:
    raise failure
  if not int(ok):
    raise DataError(f'process 0 could not prepare {what} (its error says why); '
                    'this process did not try')
  if jax.process_index() != 0:
    prepare()


def load_cifar10_tfds(tfds_data_dir: Optional[str] = None):
  """(train, test) Splits of TFDS `cifar10`, downloading it if needed.

  In a multi-process job, process 0 downloads and prepares it once.
  """
  from alexnet_jax import tf_cpu  # pylint: disable=g-import-not-at-top
  tf_cpu.tensorflow()  # Lazy: only this path needs TF, and on the CPU.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  prepare_once(lambda: _prepare_cifar10_tfds(tfds, tfds_data_dir),
               'TFDS cifar10')
  splits = tfds.load('cifar10', split=['train', 'test'], batch_size=4096,
                     data_dir=tfds_data_dir, download=False)
  out = []
  for ds in splits:
    batches = list(tfds.as_numpy(ds))
    out.append(Split(
        np.concatenate([b['image'] for b in batches]).astype(np.uint8),
        np.concatenate([b['label'] for b in batches]).astype(np.int32)))
  return tuple(out)


# --- Fake data ------------------------------------------------------------------

def load_fake(num_train: int, num_test: int, image_size: int, num_classes: int,
              seed: int = 0):
  """Random uint8 images and labels of the right shapes; no download."""
  rng = np.random.default_rng(seed)

  def split(n):
    return Split(
        rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
        rng.integers(0, num_classes, (n,), dtype=np.int32))

  return split(num_train), split(num_test)


# --- Assembly -------------------------------------------------------------------

def hold_out_validation(train: Split, fraction: float, seed: int = 0):
  """(train, val) with `fraction` of train held out by a fixed-seed shuffle."""
  if not 0 <= fraction < 1:
    raise DataError(f'val_fraction {fraction} must be in [0, 1)')
  n_val = int(round(len(train) * fraction))
  if n_val == 0:
    return train, None
  perm = np.random.default_rng(seed).permutation(len(train))
  val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return (Split(train.images[train_idx], train.labels[train_idx]),
          Split(train.images[val_idx], train.labels[val_idx]))


def load_dataset(config) -> Dataset:
  """Host-side train/val/test arrays for `config.dataset`."""
  if config.dataset == 'cifar10':
    if config.data_dir:
      train, test = load_cifar10_archive(config.data_dir)
    else:
      train, test = load_cifar10_tfds(config.tfds_data_dir or None)
    num_classes = 10
  elif config.dataset == 'fake':
    num_classes = config.num_classes
    train, test = load_fake(config.fake_num_train, config.fake_num_test,
                            config.fake_image_size, num_classes)
  else:
    raise DataError(f'unknown dataset {config.dataset!r}; valid: '
                    f'{", ".join(DATASETS)}')
  train, val = hold_out_validation(train, config.val_fraction)
  return Dataset(train=train, val=val, test=test, num_classes=num_classes)


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
