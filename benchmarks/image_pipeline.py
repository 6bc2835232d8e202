"""How many training images per second the host turns out, per input path.

Writes `--images` JPEGs of ImageNet's typical size (500x375, quality 90;
views of scikit-image's photos) into a temporary image folder, and the
paper's store of them (`python -m alexnet_jax.prepare --store`: JPEG at
quality 95, and raw), then times, in steady state (from the first batch on,
over `--epochs` epochs), on one core (in this process, one reader thread)
and with `--workers` Grain worker processes:
  * folder: `streaming.train_batches` on the folder (decode, shorter side to
    256, central 256x256, random 227 crop: all on the host);
  * store (jpeg) / store (raw): the store's records (decode a 256x256 JPEG,
    or nothing); the crop runs on the device, not timed here;
  * DALI CPU (`--dali`, if installed): the store decoded by DALI's CPU
    operators on one thread and on `--workers` threads; DALI GPU
    (`--dali_gpu`): the same on GPU 0 (nvJPEG), host threads likewise;
  * tf.data (`--vs_tfdata`): the folder path's work in tf.data.
The setups run interleaved, one stream each per repeat; prints images/s,
medians of `--repeats` streams, and each one's factor over the folder path
on the same number of cores.

  python -m benchmarks.image_pipeline [--images 512] [--workers 2] \\
      [--dali] [--dali_gpu] [--vs_tfdata] [--json]
"""

import argparse
import functools
import itertools
import json
import os
import pathlib
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from alexnet_jax.data import store
from alexnet_jax.data import store_writer
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


def grain_stream(source, workers: int, batch: int, steps: int, seed: int,
                 crop_size: int = 227):
  """alexnet_jax's pipeline: `workers` Grain processes (0: this process,
  one reader thread); crop_size 0 hands out the stored squares whole."""
  return iter(streaming.train_batches(
      source, seed=seed, global_batch=batch, start_step=0, total_steps=steps,
      resize_size=256, crop_size=crop_size, workers=workers, threads=1))


def dali_stream(root: str, threads: int, batch: int, steps: int, seed: int,
                device_id=None):
  """The store's JPEGs decoded by DALI's CPU operators (device_id None), or
  on GPU `device_id` (nvJPEG; the batch stays on the GPU, as training hands
  it to JAX), in the project's order (the records come from the same
  shuffle as the Grain path)."""
  from alexnet_jax.data import dali  # pylint: disable=g-import-not-at-top
  source = store.StoreSource(root, 'train')
  pipe = dali._pipeline(batch, device_id, threads, resize=False)  # pylint: disable=protected-access
  pick = streaming.TrainExample(streaming.shuffled(source, seed), source,
                                seed, 256, 0, False)
  for step in range(steps):
    encoded = [np.frombuffer(pick.record(step * batch + j)[0]['image'],
                             np.uint8) for j in range(batch)]
    pipe.feed_input('encoded', encoded)
    images = pipe.run()[0].as_tensor()  # run() returns once it is decoded.
    yield np.asarray(images) if device_id is None else images


def tfdata_stream(source, threads: int, batch: int, seed: int):
  """The same augmentation in tf.data, on `threads` threads."""
  from benchmarks import tfdata_pipeline  # pylint: disable=g-import-not-at-top
  ds = tfdata_pipeline.train_batches(source.paths, source.labels, seed=seed,
                                     batch=batch, threads=threads)
  return ds.as_numpy_iterator()


def setups(sources: dict, roots: dict, args, steps: int) -> dict:
  """{name: make_stream(repeat)}, one core first, then `workers` cores."""
  out = {}
  for cores in ((1, args.workers) if args.workers else (1,)):
    workers = 0 if cores == 1 else cores
    tag = '1 core' if cores == 1 else f'{cores} workers'
    out[f'folder, {tag}'] = functools.partial(
        grain_stream, sources['folder'], workers, args.batch, steps)
    for kind in ('jpeg', 'raw'):
      out[f'store ({kind}), {tag}'] = functools.partial(
          grain_stream, sources[kind], workers, args.batch, steps,
          crop_size=0)
    if args.dali:
      out[f'DALI CPU, {tag}'] = functools.partial(
          dali_stream, roots['jpeg'], cores, args.batch, steps)
    if getattr(args, 'dali_gpu', False):
      out[f'DALI GPU, {tag}'] = functools.partial(
          dali_stream, roots['jpeg'], cores, args.batch, steps, device_id=0)
    if args.vs_tfdata:
      out[f'tf.data, {tag}'] = functools.partial(
          tfdata_stream, sources['folder'], cores, args.batch)
  return out


def measure(sources: dict, roots: dict, args) -> dict:
  """{setup: median images/s}, the setups interleaved repeat by repeat."""
  steps = args.epochs * (len(sources['folder']) // args.batch)
  makers = setups(sources, roots, args, steps)
  rates = {name: [] for name in makers}
  for r in range(args.repeats):
    for name, make in makers.items():
      rates[name].append(_steady_rate(make(seed=r), args.batch, steps))
  return {name: float(np.median(v)) for name, v in rates.items()}


def write_stores(root: str, source) -> dict:
  """The paper's store of `source`, as JPEG and raw: {kind: directory}."""
  roots = {}
  for kind in ('jpeg', 'raw'):
    roots[kind] = os.path.join(root, f'store_{kind}')
    store_writer.write_store({'train': source}, roots[kind], source.classes,
                             encoding=kind, log=lambda m: None,
                             shard_images=64)
  return roots


def prepare_ms_per_image(root: str) -> float:
  """Writing the JPEG store, per image and core: the workers' own time in
  their shards (read, decode, resize, crop, encode, write), start-up left
  out."""
  sidecars = [json.loads(p.read_text()) for p in
              pathlib.Path(root).glob('*.array_record.json')]
  return 1e3 * sum(s['seconds'] for s in sidecars) / sum(
      s['count'] for s in sidecars)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=512)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--vs_tfdata', action='store_true',
                      help='also time the same augmentation in tf.data')
  parser.add_argument('--dali', action='store_true',
                      help='also time DALI\'s CPU decoder on the store')
  parser.add_argument('--dali_gpu', action='store_true',
                      help='also time DALI\'s GPU decoder (nvJPEG) on the '
                      'store, on GPU 0')
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
  if args.dali or args.dali_gpu:
    try:
      import nvidia.dali  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      parser.error(f'--dali{"_gpu" if args.dali_gpu else ""} needs NVIDIA '
                   'DALI: pip install -r requirements-dali.txt')
  with tempfile.TemporaryDirectory() as root:
    folder = os.path.join(root, 'folder')
    write_jpegs(folder, args.images)
    source = streaming.ImageFolderSource.scan(folder)
    roots = write_stores(root, source)
    sources = {'folder': source,
               **{k: store.StoreSource(v, 'train') for k, v in roots.items()}}
    rates = measure(sources, roots, args)
    prepare_ms = prepare_ms_per_image(roots['jpeg'])
  report(rates, args, prepare_ms)


def report(rates: dict, args, prepare_ms: float):
  """Each setup's rate, and its factor over the folder path on as many
  cores."""
  for name, rate in rates.items():
    tag = name.split(', ')[-1]
    base = rates[f'folder, {tag}']
    print(f'{name:32s} {rate:8.1f} images/s ({rate / base:.2f}x the folder '
          f'path on {tag})')
  print(f'prepare --store (JPEG): {prepare_ms:.2f} ms per image per core, '
        f'so about {prepare_ms * 1e6 / 3.6e6:.2f} core-hours per million '
        'images (extrapolated)')
  print(f'cores: {os.cpu_count()}')
  if args.json:
    print(json.dumps({'images_per_sec': rates, 'cores': os.cpu_count(),
                      'images': args.images, 'batch': args.batch,
                      'workers': args.workers,
                      'prepare_ms_per_image': prepare_ms}))


if __name__ == '__main__':
  main()
