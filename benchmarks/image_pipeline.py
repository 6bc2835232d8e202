"""How fast the streaming pipeline turns ImageNet-sized JPEGs into crops.

Writes `--images` JPEGs of ImageNet's typical size (about 500x375, quality
90; views of scikit-image's photos) into a temporary image_folder, then times
`streaming.train_batches` (decode at reduced size, shorter side to 256,
central 256x256, random 227 crop) in this process (= one worker's rate) and
with `--workers` Grain worker processes. Prints images/s, medians of
`--repeats` passes.

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


def images_per_sec(source, workers: int, batch: int, repeats: int) -> float:
  steps = len(source) // batch
  rates = []
  for r in range(repeats + 1):
    start = time.perf_counter()
    for _ in streaming.train_batches(
        source, seed=r, global_batch=batch, start_step=0, total_steps=steps,
        resize_size=256, crop_size=227, workers=workers):
      pass
    if r:  # The first pass warms the page cache and starts the workers.
      rates.append(steps * batch / (time.perf_counter() - start))
  return float(np.median(rates))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=512)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images)
    source = streaming.ImageFolderSource.scan(root)
    one = images_per_sec(source, 0, args.batch, args.repeats)
    print(f'in-process (one worker\'s rate): {one:7.1f} images/s')
    if args.workers:
      many = images_per_sec(source, args.workers, args.batch, args.repeats)
      print(f'{args.workers} worker processes:            {many:7.1f} images/s '
            f'({many / one:.2f}x)')
    print(f'cores: {os.cpu_count()}')


if __name__ == '__main__':
  main()
