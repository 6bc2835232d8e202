"""How fast the streaming pipeline turns ImageNet-sized JPEGs into crops.

Writes `--images` JPEGs of ImageNet's typical size (500x375, quality 90;
views of scikit-image's photos) into a temporary image_folder, then times
`streaming.train_batches` (decode at reduced size, shorter side to 256,
central 256x256, random 227 crop) on one core (in this process, one reader
thread) and with `--workers` Grain worker processes, in steady state (from
the first batch on, over `--epochs` epochs). Prints images/s, medians of
`--repeats` streams.

  python -m benchmarks.image_pipeline [--images 512] [--workers 2]
"""

import argparse
import os
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from alexnet_jax import streaming


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


def images_per_sec(source, workers: int, threads: int, batch: int,
                   epochs: int, repeats: int) -> float:
  """Steady state: timed from the first batch out (workers started) on."""
  steps = epochs * (len(source) // batch)
  rates = []
  for r in range(repeats):
    stream = streaming.train_batches(
        source, seed=r, global_batch=batch, start_step=0, total_steps=steps,
        resize_size=256, crop_size=227, workers=workers, threads=threads)
    next(stream)
    start = time.perf_counter()
    count = sum(1 for _ in stream)
    rates.append(count * batch / (time.perf_counter() - start))
  return float(np.median(rates))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=512)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images)
    source = streaming.ImageFolderSource.scan(root)
    run = lambda w, t: images_per_sec(source, w, t, args.batch, args.epochs,
                                      args.repeats)
    one = run(0, 1)
    print(f'one core (in-process, 1 thread): {one:7.1f} images/s')
    if args.workers:
      many = run(args.workers, 1)
      print(f'{args.workers} worker processes:             {many:7.1f} '
            f'images/s ({many / one:.2f}x)')
    print(f'cores: {os.cpu_count()}')

if __name__ == '__main__':
  main()
