"""The paper's store: every image written once as the paper kept ImageNet
(Sec. 2: shorter side 256, the central 256x256), in ArrayRecord files that
Grain (and DALI) read by random access.

A store directory holds `manifest.json` (what is there: classes, counts per
split, encoding, the files left out and why) and, per split, shards
`{split}-{k:05d}-of-{n:05d}.array_record`. A record is a 4-byte
little-endian label followed by the image: a JPEG of the 256x256 square
(`encoding='jpeg'`, at the manifest's quality), or its raw 196,608 bytes
(`encoding='raw'`: nothing to decode). Splits are the source's: `train`, and
`test` (an image folder's val/, ImageNet's official validation set);
validation is held out of `train` when training reads the store, by the
registry's rule, as for every dataset.

Writing (`write_store`, `python -m alexnet_jax.prepare --store=DST`) is in
`store_writer.py`; this module reads.
"""

import hashlib
import json
import os
from typing import Optional

import numpy as np
from etils import epath

from alexnet_jax.errors import DataError

SIDE = 256
ENCODINGS = ('jpeg', 'raw')
MANIFEST = 'manifest.json'
SPLITS = ('train', 'test')
FORMAT = 1


def shard_name(split: str, k: int, n: int) -> str:
  return f'{split}-{k:05d}-of-{n:05d}.array_record'


def pack(label: int, payload: bytes) -> bytes:
  return int(label).to_bytes(4, 'little', signed=True) + payload


def unpack(record: bytes):
  """(label, payload bytes)."""
  return int.from_bytes(record[:4], 'little', signed=True), record[4:]


def read_manifest(root) -> dict:
  """The store's manifest, or a DataError naming what is wrong."""
  path = epath.Path(root) / MANIFEST
  if not path.parent.is_dir():
    raise DataError(f'store {root} does not exist; write it once with '
                    '`python -m alexnet_jax.prepare --dataset=image_folder '
                    f'--data_dir=SRC --store={root}` (docs/imagenet.md)')
  if not path.exists():
    partial = sorted(p.name for p in path.parent.glob('*.array_record'))
    why = (f'an interrupted prepare ({len(partial)} shards written): rerun '
           'the same prepare command to finish it' if partial else
           'not a store written by `python -m alexnet_jax.prepare --store`')
    raise DataError(f'{root} has no {MANIFEST}: {why}')
  try:
    manifest = json.loads(path.read_text())
  except ValueError as e:
    raise DataError(f'{path} is not valid JSON ({e})') from None
  if manifest.get('format') != FORMAT:
    raise DataError(f'{path} is store format {manifest.get("format")!r}; '
                    f'this code reads format {FORMAT}: prepare the store again')
  return manifest


def _cache_dir(root) -> epath.Path:
  base = os.environ.get('ALEXNET_JAX_CACHE', '~/.cache/alexnet_jax')
  tag = hashlib.sha1(str(root).encode()).hexdigest()[:12]
  return epath.Path(os.path.expanduser(base)) / 'stores' / tag


def local_shards(root, names, log=print) -> list:
  """Paths ArrayRecord can open: the shards themselves on a local disk; for
  a store on gs:// (a TPU pod's), copies in a per-host cache
  (ALEXNET_JAX_CACHE, default ~/.cache/alexnet_jax), made once: each is
  copied under a temporary name and renamed when whole, so processes
  sharing a host, or a rerun, never read half of one."""
  root = epath.Path(root)
  if '://' not in str(root):
    return [str(root / name) for name in names]
  cache = _cache_dir(root)
  cache.mkdir(parents=True, exist_ok=True)
  missing = [n for n in names if not (cache / n).exists()]
  if missing:
    log(f'copying {len(missing)} of the store\'s {len(names)} shards from '
        f'{root} to {cache} (once per host)')
  for name in missing:
    partial = cache / f'{name}.{os.getpid()}.tmp'
    (root / name).copy(partial, overwrite=True)
    partial.rename(cache / name)
  return [str(cache / name) for name in names]


class StoreSource:
  """One split of a store as a random-access source of
  {'image': JPEG bytes or a uint8 [256, 256, 3] array, 'label', 'index'}."""

  def __init__(self, root, split: str, manifest: Optional[dict] = None):
    self.root = epath.Path(root)
    self.manifest = manifest or read_manifest(root)
    self.split = split
    info = self.manifest['splits'].get(split)
    if not info or not info['count']:
      raise DataError(f'store {root} has no {split!r} images (splits: '
                      f'{", ".join(self.manifest["splits"])})')
    self.encoding = self.manifest['encoding']
    self.paths = local_shards(self.root, info['shards'])
    self._count = info['count']
    self._records = None  # Opened lazily: in each Grain worker, not pickled.

  def _open(self):
    if self._records is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._records = grain.sources.ArrayRecordDataSource(self.paths)
      if len(self._records) != self._count:
        raise DataError(f'store {self.root} {self.split}: the manifest says '
                        f'{self._count} images, the shards hold '
                        f'{len(self._records)}; prepare the store again')
    return self._records

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_records'] = None
    return state

  def __len__(self):
    return self._count

  def __getitem__(self, index):
    label, payload = unpack(self._open()[int(index)])
    if self.encoding == 'raw':
      image = np.frombuffer(payload, np.uint8).reshape(SIDE, SIDE, 3)
    else:
      image = payload
    return {'image': image, 'label': label, 'index': int(index)}

  def describe(self, index: int) -> str:
    return f'{self.root} {self.split} record {index}'

  @property
  def classes(self) -> tuple:
    return tuple(self.manifest['classes'])
