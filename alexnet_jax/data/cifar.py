"""CIFAR-10 from a local copy of the standard python archive.

`cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/` folder, read
through a restricted unpickler: a batch file can only rebuild the arrays and
plain values real CIFAR-10 files hold, so a crafted pickle cannot run code.
(Through TFDS instead: `tfds.py`.)
"""

import io
import os
import pickle
import tarfile

import numpy as np

from alexnet_jax.data.registry import Split
from alexnet_jax.errors import DataError

_CIFAR_TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
_CIFAR_TEST_FILE = 'test_batch'
CIFAR_DIRNAME = 'cifar-10-batches-py'


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
                    f'extracted {CIFAR_DIRNAME}/ folder')
  if os.path.isdir(path):
    for candidate in (os.path.join(path, CIFAR_DIRNAME),
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
                    f'cifar-10-python.tar.gz or a {CIFAR_DIRNAME}/ folder')
  missing = [n for n in _CIFAR_TRAIN_FILES + (_CIFAR_TEST_FILE,) if n not in files]
  if missing:
    raise DataError(f'data_dir {path!r} is not a CIFAR-10 archive: missing '
                    f'{", ".join(missing)} (expected data_batch_1..5 and '
                    'test_batch in the python pickle format)')
  train = _concat([_read_cifar_batch(n, files[n]) for n in _CIFAR_TRAIN_FILES])
  test = _read_cifar_batch(_CIFAR_TEST_FILE, files[_CIFAR_TEST_FILE])
  return train, test
