"""Writes the paper's store (`store.py`) once, on all cores, resumably.

Each split is cut into shards of about `SHARD_IMAGES` source images; worker
processes each take a whole shard: read, decode (at reduced size when the
JPEG is much larger), shorter side to 256, central 256x256, encode, write.
A shard is written to a temporary name with a JSON sidecar (its count and
the files it left out, and why) and renamed into place when whole, so an
interrupted prepare resumes at the first missing shard and never reads a
half-written one. The manifest is written last. A gs:// store is written
through a local temporary file per shard, then copied up.
"""

import dataclasses
import io
import json
import multiprocessing
import os
import re
import tempfile
import time
from typing import Callable, Optional

from etils import epath

from alexnet_jax.data import images
from alexnet_jax.data import store
from alexnet_jax.errors import DataError

SHARD_IMAGES = 1024
DEFAULT_QUALITY = 90  # As FFCV writes ImageNet: indistinguishable crops, faster decode.
_WRITER_OPTIONS = 'group_size:1,uncompressed'  # Random access; JPEG is packed.


@dataclasses.dataclass(frozen=True)
class Job:
  """One shard: records [start, stop) of a split's source."""
  split: str
  k: int
  n: int
  start: int
  stop: int

  @property
  def name(self) -> str:
    return store.shard_name(self.split, self.k, self.n)


def square(image) -> 'np.ndarray':
  """An encoded image (or a decoded array) -> the paper's uint8 256x256."""
  img = images.decode(image, store.SIDE)
  return images.center_square(images.resize_shorter(img, store.SIDE),
                              store.SIDE)


def encode(pixels, encoding: str, quality: int) -> bytes:
  if encoding == 'raw':
    return pixels.tobytes()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, 'JPEG', quality=quality)
  return buf.getvalue()


# --- Workers -------------------------------------------------------------------

_WORKER = {}


def _init_worker(sources, encoding, quality, counter, ignore_sigint=True):
  import signal  # pylint: disable=g-import-not-at-top
  if ignore_sigint:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # The parent stops the pool.
  _WORKER.update(sources=sources, encoding=encoding, quality=quality,
                 counter=counter)


def _square_record(source, index):
  """(label, payload) of one record, or the reason it is left out."""
  try:
    record = source[index]
    return record['label'], encode(square(record['image']),
                                   _WORKER['encoding'], _WORKER['quality'])
  except Exception as e:  # pylint: disable=broad-except
    why = re.sub(r' <[^>]* at 0x[0-9a-f]+>', '', str(e))  # No object reprs.
    return None, f'{type(e).__name__}: {why}'[:200]


def _write_shard(job: Job, root: str) -> dict:
  """Writes one shard; its sidecar {count, left_out, encoding, quality}."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  source = _WORKER['sources'][job.split]
  final = epath.Path(root) / job.name
  partial = final.parent / (job.name + '.tmp')
  local = '://' not in root
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    path = str(partial) if local else os.path.join(tmp, job.name)
    writer = array_record_module.ArrayRecordWriter(path, _WRITER_OPTIONS)
    count, left_out = 0, []
    for index in range(job.start, job.stop):
      label, payload = _square_record(source, index)
      if label is None:
        left_out.append({'split': job.split, 'path': source.describe(index),
                         'reason': payload})
      else:
        writer.write(store.pack(label, payload))
        count += 1
      with _WORKER['counter'].get_lock():
        _WORKER['counter'].value += 1
    writer.close()
    sidecar = {'count': count, 'left_out': left_out,
               'encoding': _WORKER['encoding'], 'quality': _WORKER['quality'],
               'seconds': time.perf_counter() - start}
    # The sidecar first, the shard last: a shard on disk is a whole shard.
    (final.parent / (job.name + '.json')).write_text(json.dumps(sidecar))
    if not local:
      epath.Path(path).copy(partial, overwrite=True)
    partial.rename(final)
  return sidecar


def _run_job(args):
  job, root = args
  return job, _write_shard(job, root)


# --- The driver ------------------------------------------------------------------

def _jobs(counts: dict, shard_images: int) -> list:
  jobs = []
  for split, count in counts.items():
    n = max(1, -(-count // shard_images))
    for k in range(n):
      jobs.append(Job(split, k, n, k * count // n, (k + 1) * count // n))
  return jobs


def _done(root: epath.Path, job: Job) -> Optional[dict]:
  """A finished shard's sidecar, or None."""
  if not (root / job.name).exists():
    return None
  try:
    return json.loads((root / (job.name + '.json')).read_text())
  except (OSError, ValueError):
    return None


def _progress_line(done: int, total: int, start: float, log):
  elapsed = time.monotonic() - start
  rate = done / elapsed if elapsed > 0 else 0.
  eta = (total - done) / rate if rate > 0 else 0.
  log(f'  {done:,}/{total:,} images ({100 * done / max(total, 1):.1f}%) | '
      f'{rate:,.0f} img/s | ETA {int(eta) // 60}m{int(eta) % 60:02d}s')


def write_store(sources: dict, root, classes, *, encoding: str = 'jpeg',
                quality: int = DEFAULT_QUALITY, workers: int = 0,
                shard_images: int = SHARD_IMAGES, source_name: str = '',
                log: Callable = print) -> dict:
  """Writes (or finishes) the store of `sources` {split: source} at `root`.

  Sources are random access, with `describe(index)` naming a record. Returns
  the manifest (also `root/manifest.json`).
  """
  if encoding not in store.ENCODINGS:
    raise DataError(f'unknown encoding {encoding!r}; valid: '
                    f'{", ".join(store.ENCODINGS)}')
  if not 1 <= quality <= 100:
    raise DataError(f'quality {quality} must be in 1..100')
  root = epath.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  if shard_images < 1:
    raise DataError(f'shard_images {shard_images} must be positive')
  jobs = _jobs({split: len(s) for split, s in sources.items()}, shard_images)
  sidecars = {job: _done(root, job) for job in jobs}
  _check_same_flags(root, sidecars.values(), encoding, quality)
  todo = [job for job in jobs if sidecars[job] is None]
  workers = workers or os.cpu_count() or 1
  log(f'store {root}: {sum(len(s) for s in sources.values()):,} images in '
      f'{len(jobs)} shards, {encoding}'
      f'{f" quality {quality}" if encoding == "jpeg" else ""}, {workers} '
      f'workers' + (f'; resuming: {len(jobs) - len(todo)} shards already '
                    'written' if len(todo) < len(jobs) else ''))
  run = _run_here if workers == 1 else _run_pool
  sidecars.update(run(todo, str(root), sources, encoding, quality, workers,
                      log))
  return _write_manifest(root, jobs, sidecars, classes, encoding, quality,
                         source_name)


def _check_same_flags(root, sidecars, encoding, quality):
  for sidecar in sidecars:
    if sidecar and (sidecar['encoding'], sidecar['quality']) != (encoding,
                                                                quality):
      raise DataError(
          f'store {root} was begun with --encoding={sidecar["encoding"]} '
          f'--quality={sidecar["quality"]}; finish it with the same flags, '
          'or write a new --store')


def _run_here(todo, root, sources, encoding, quality, workers, log) -> dict:
  """One worker: the shards in this process (no start-up, and sources that
  only exist here, such as TFDS's mock data, work too)."""
  del workers
  counter = multiprocessing.Value('q', 0)
  _init_worker(sources, encoding, quality, counter, ignore_sigint=False)
  total, start, done = sum(j.stop - j.start for j in todo), time.monotonic(), {}
  for job in todo:
    done[job] = _write_shard(job, root)
    _progress_line(counter.value, total, start, log)
  return done


def _run_pool(todo, root, sources, encoding, quality, workers, log) -> dict:
  """The shards shared out to `workers` processes, with a progress line
  every 10 s and one at the end."""
  context = multiprocessing.get_context('spawn')  # No JAX state forked.
  counter = context.Value('q', 0)
  total, done = sum(j.stop - j.start for j in todo), {}
  start = last = time.monotonic()
  with context.Pool(min(workers, max(len(todo), 1)), _init_worker,
                    (sources, encoding, quality, counter)) as pool:
    pending = pool.imap_unordered(_run_job, [(job, root) for job in todo])
    while len(done) < len(todo):
      try:
        job, sidecar = pending.next(timeout=2.)
        done[job] = sidecar
      except multiprocessing.TimeoutError:
        pass
      if time.monotonic() - last >= 10. and counter.value < total:
        last = time.monotonic()
        _progress_line(counter.value, total, start, log)
  if todo:
    _progress_line(counter.value, total, start, log)
  return done


def _write_manifest(root, jobs, sidecars, classes, encoding, quality,
                    source_name) -> dict:
  splits = {}
  left_out = []
  for job in jobs:
    info = splits.setdefault(job.split, {'count': 0, 'shards': []})
    info['count'] += sidecars[job]['count']
    info['shards'].append(job.name)
    left_out += sidecars[job]['left_out']
  manifest = {'format': store.FORMAT, 'side': store.SIDE,
              'encoding': encoding,
              'quality': quality if encoding == 'jpeg' else None,
              'classes': list(classes), 'source': source_name,
              'splits': splits, 'left_out': left_out}
  path = root / store.MANIFEST
  (root / (store.MANIFEST + '.tmp')).write_text(
      json.dumps(manifest, indent=1) + '\n')
  (root / (store.MANIFEST + '.tmp')).rename(path)
  return manifest
