"""How fast the streaming pipeline turns ImageNet-sized JPEGs into crops.

Writes `--images` JPEGs of ImageNet's typical size (500x375, quality 90;
views of scikit-image's photos) into a temporary image_folder, then times
`streaming.train_batches` (decode at reduced size, shorter side to 256,
central 256x256, random 227 crop) on one core (in this process, one reader
thread) and with `--workers` Grain worker processes, in steady state (from
the first batch on, over `--epochs` epochs). `--vs_tfdata` also times the
same augmentation written with tf.data (benchmarks/tfdata_pipeline.py) on
one thread and on `--workers` threads. The setups run interleaved, one
stream each per repeat; prints images/s, medians of `--repeats` streams.

  python -m benchmarks.image_pipeline [--images 512] [--workers 2] \\
      [--vs_tfdata] [--json]
"""

import argparse
import itertools
import json
import os
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from alexnet_jax.data import streaming


def write_jpegs(root: str, count: int, size=(500, 375)):
  from skimage import data  # pylint: disable=g-import-not-at-top
  photos = [Image.fromarray(getattr(data, n)()).convert('RGB')
            for n in ('astronaut', 'coffee', 'chelsea', 'rocket',
                      'hubble_deep_field', 'immunohistochemistry')]
  rng = np.random.default_rng(0)
  for i in range(count):
    photo = photos[i % len(photos)]
    w, h = photo.size
    f = rng.uniform(0.5, 1.0)
    cw, ch = int(w * f), int(h * f)
    left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    view = photo.crop((left, top, left + cw, top + ch)).resize(size)
    folder = os.path.join(root, f'class_{i % len(photos)}')
    os.makedirs(folder, exist_ok=True)
    view.save(os.path.join(folder, f'{i}.jpg'), quality=90)


def _steady_rate(stream, batch: int, steps: int) -> float:
  """Images/s from the first batch out (workers started, buffers filled)."""
  next(stream)
  start = time.perf_counter()
  count = sum(1 for _ in itertools.islice(stream, steps - 1))
  return count * batch / (time.perf_counter() - start)


def grain_stream(source, workers: int, batch: int, steps: int, seed: int):
  """alexnet_jax's pipeline: `workers` Grain processes (0: this process,
  one reader thread)."""
  return iter(streaming.train_batches(
      source, seed=seed, global_batch=batch, start_step=0, total_steps=steps,
      resize_size=256, crop_size=227, workers=workers, threads=1))


def tfdata_stream(source, threads: int, batch: int, seed: int):
  """The same augmentation in tf.data, on `threads` threads."""
  from benchmarks import tfdata_pipeline  # pylint: disable=g-import-not-at-top
  ds = tfdata_pipeline.train_batches(source.paths, source.labels, seed=seed,
                                     batch=batch, threads=threads)
  return ds.as_numpy_iterator()


def measure(source, args) -> dict:
  """{setup: median images/s}, the setups interleaved repeat by repeat."""
  steps = args.epochs * (len(source) // args.batch)
  setups = {'grain, 1 core (in-process, 1 thread)':
                lambda r: grain_stream(source, 0, args.batch, steps, r)}
  if args.workers:
    setups[f'grain, {args.workers} worker processes'] = (
        lambda r: grain_stream(source, args.workers, args.batch, steps, r))
  if args.vs_tfdata:
    setups['tf.data, 1 thread'] = (
        lambda r: tfdata_stream(source, 1, args.batch, r))
    if args.workers:
      setups[f'tf.data, {args.workers} threads'] = (
          lambda r: tfdata_stream(source, args.workers, args.batch, r))
  rates = {name: [] for name in setups}
  for r in range(args.repeats):
    for name, make in setups.items():
      rates[name].append(_steady_rate(make(r), args.batch, steps))
  return {name: float(np.median(v)) for name, v in rates.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=512)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--vs_tfdata', action='store_true',
                      help='also time the same augmentation in tf.data')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  for name in ('batch', 'epochs', 'repeats'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be >= 1, got {getattr(args, name)}')
  if args.workers < 0:
    parser.error(f'--workers must be >= 0, got {args.workers}')
  if args.images < 2 * args.batch:
    parser.error(f'--images {args.images} must be at least twice --batch '
                 f'{args.batch}')
  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images)
    source = streaming.ImageFolderSource.scan(root)
    rates = measure(source, args)
  first = next(iter(rates.values()))
  for name, rate in rates.items():
    print(f'{name:40s} {rate:7.1f} images/s ({rate / first:.2f}x)')
  print(f'cores: {os.cpu_count()}')
  if args.json:
    print(json.dumps({'images_per_sec': rates, 'cores': os.cpu_count(),
                      'images': args.images, 'batch': args.batch}))


if __name__ == '__main__':
  main()
