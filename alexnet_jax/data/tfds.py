"""Everything that goes through TFDS: CIFAR-10 downloaded and held in memory,
image datasets prepared once as ArrayRecord and read by Grain, and that
one-time preparation (`python -m alexnet_jax.prepare`).

TensorFlow and TFDS are imported here only, lazily, and on the CPU only
(`runtime.tf_cpu`): the accelerator image need not have them. On a machine
without network access every download fails in seconds with one line saying
what to do instead.
"""

import os
import socket
from typing import Optional

import numpy as np

from alexnet_jax.data.cifar import CIFAR_DIRNAME
from alexnet_jax.data.registry import Split
from alexnet_jax.errors import DataError

# Where TFDS's builders download from.
_CIFAR10_HOST = 'www.cs.toronto.edu'
_IMAGENETTE_HOST = 's3.amazonaws.com'
_IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
PREPARABLE = ('imagenet2012', 'imagenette')


def _tfds():
  from alexnet_jax.runtime import tf_cpu  # pylint: disable=g-import-not-at-top
  tf_cpu.tensorflow()  # CPU only: never the accelerators JAX uses.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def default_data_dir(data_dir: Optional[str] = None) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')


def unreachable(host: str, timeout: float = 10.) -> Optional[str]:
  """Why `host` cannot be reached (in seconds, not after minutes of TFDS's
  download retries), or None."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return None
  except OSError as e:
    return f'{host} is unreachable: {e}'


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


# --- CIFAR-10, held in memory ------------------------------------------------------

def _cifar10_offline(where: str, reason: str) -> str:
  return (f'could not download TFDS cifar10 into {where} ({reason}). Without '
          'network access, download cifar-10-python.tar.gz from '
          'https://www.cs.toronto.edu/~kriz/cifar.html elsewhere and pass '
          '--config.data_dir=/path/to/cifar-10-python.tar.gz (or its extracted '
          f'{CIFAR_DIRNAME}/ folder)')


def _prepare_cifar10(tfds, data_dir: Optional[str]):
  """Downloads and prepares TFDS cifar10 unless it is there already."""
  builder = tfds.builder('cifar10', data_dir=data_dir)
  try:
    builder.as_dataset(split='test')  # Lazy: reads nothing yet.
    return
  except AssertionError:  # TFDS's "could not find data in <dir>".
    pass
  where = default_data_dir(data_dir)
  reason = unreachable(_CIFAR10_HOST)
  if reason:
    raise DataError(_cifar10_offline(where, reason))
  try:
    builder.download_and_prepare()
  except Exception as e:  # Network failures come as many exception types.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise DataError(_cifar10_offline(
        where, f'{type(e).__name__}: {first_line}')) from None


def load_cifar10(data_dir: Optional[str] = None):
  """(train, test) Splits of TFDS `cifar10`, downloading it if needed.

  In a multi-process job, process 0 downloads and prepares it once.
  """
  tfds = _tfds()
  prepare_once(lambda: _prepare_cifar10(tfds, data_dir), 'TFDS cifar10')
  splits = tfds.load('cifar10', split=['train', 'test'], batch_size=4096,
                     data_dir=data_dir, download=False)
  out = []
  for ds in splits:
    batches = list(tfds.as_numpy(ds))
    out.append(Split(
        np.concatenate([b['image'] for b in batches]).astype(np.uint8),
        np.concatenate([b['label'] for b in batches]).astype(np.int32)))
  return tuple(out)


# --- Image datasets, streamed from ArrayRecord ---------------------------------------

class Records:
  """A TFDS data source whose records carry their index, so an unreadable
  one can be named (`describe`)."""

  def __init__(self, records, name: str, split: str):
    self.records, self.name, self.split = records, name, split

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return dict(self.records[int(index)], index=int(index))

  def describe(self, index: int) -> str:
    return f'TFDS {self.name} {self.split} record {index}'


def source(name: str, split: str, data_dir: Optional[str]) -> Records:
  """A TFDS dataset prepared as ArrayRecord, as a random-access source."""
  tfds = _tfds()
  try:
    return Records(tfds.data_source(name, split=split,
                                    data_dir=data_dir or None,
                                    download=False), name, split)
  except Exception as e:  # pylint: disable=broad-except
    where = default_data_dir(data_dir)
    raise DataError(
        f'TFDS {name} ({split}) is not prepared as ArrayRecord in {where} '
        f'({type(e).__name__}); prepare it once with `python -m '
        f'alexnet_jax.prepare --dataset={name} --tfds_data_dir={where}` '
        '(docs/imagenet.md)') from None


def prepare(name: str, data_dir=None, manual_dir=None) -> str:
  """Downloads (imagenette) and writes ArrayRecord files; their directory."""
  if name not in PREPARABLE:
    raise DataError(f'unknown dataset {name!r}; valid: {", ".join(PREPARABLE)}')
  tfds = _tfds()
  data_dir = os.path.expanduser(default_data_dir(data_dir))
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return str(builder.data_dir)
  manual_dir = manual_dir or os.path.join(data_dir, 'downloads', 'manual')
  if name == 'imagenet2012':
    missing = [t for t in _IMAGENET_TARS
               if not os.path.exists(os.path.join(manual_dir, t))]
    if missing:
      raise DataError(
          f'{" and ".join(missing)} not found in {manual_dir}; download them '
          'from https://image-net.org (an account is needed) into that folder, '
          'or pass --manual_dir=DIR')
  else:
    reason = unreachable(_IMAGENETTE_HOST)
    if reason:
      raise DataError(
          f'cannot download imagenette ({reason}); without network access, '
          'extract imagenette2.tgz (from https://github.com/fastai/imagenette) '
          'elsewhere and train with --config.dataset=image_folder '
          '--config.data_dir=.../imagenette2')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return str(builder.data_dir)


def store_sources(name: str, data_dir: Optional[str]):
  """({'train', 'test'} sources, class names) of a prepared TFDS dataset,
  to write the paper's store from (its 'test' is the official validation
  set)."""
  from alexnet_jax.data import registry  # pylint: disable=g-import-not-at-top
  train_split, test_split = registry.get(name).tfds_splits
  names = _tfds().builder(name, data_dir=data_dir or None).info.features[
      'label'].names
  return ({'train': source(name, train_split, data_dir),
           'test': source(name, test_split, data_dir)}, tuple(names))
