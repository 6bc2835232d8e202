"""The CIFAR input side alone: on-device batching, then its augmentation.

Builds the feed training uses for CIFAR (`in_memory.InMemoryFeed`: uint8
images on the device, batch k gathered there from per-epoch permutations)
and times, over `--steps` batches after one untimed epoch boundary:
  * gather: the batches as the train loop receives them;
  * gather + augmentation: each batch then padded, randomly cropped and
    flipped and normalized to float32, the work the train step does first
    (`augment.random_crop_flip`, `augment.normalize`), jitted alone.
Prints images/s for each, to set beside the train step's own rate
(`python -m benchmarks.train_step --model=alexnet_cifar`): if these are far
above it, the input side is not what bounds training.

  python -m benchmarks.cifar_feed [--data_dir DIR] [--batch_size 32]
      [--steps 200]

Without --data_dir it uses fake CIFAR-shaped data (50,000 images).
"""

import argparse
import statistics
import time

import jax

from alexnet_jax import build
from alexnet_jax.data import augment
from alexnet_jax.runtime import mesh as mesh_lib


def _config(args):
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  c = cifar10.get_config()
  c.batch_size = args.batch_size
  if args.data_dir:
    c.data_dir = args.data_dir
  else:
    c.dataset, c.fake_image_size = 'fake', 32
    c.fake_num_train, c.fake_num_test = 50_000, 10_000
  return c


def images_per_sec(batches_of, batch_size: int, steps: int, repeats: int):
  """Median over `repeats` runs of `steps` batches, each run timed whole."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    last = None
    for last in batches_of(steps):
      pass
    jax.block_until_ready(last)
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  config = _config(args)
  mesh = mesh_lib.make_mesh()
  data = build.dataset(config)
  feed = build.feed(config, mesh, data, build.input_side(config, data))
  per_epoch = build.durations_of_feed(config, feed).steps_per_epoch
  spec, key = feed.input_spec, jax.random.key(0)

  @jax.jit
  def augmented(images, step):
    x = augment.random_crop_flip(jax.random.fold_in(key, step), images,
                                 spec.pad_crop, spec.flip)
    return augment.normalize(x, spec.mean, spec.std, None, jax.numpy.float32,
                             spec.scale)

  def gathered(steps):
    return (b['images'] for b in feed.train(0, per_epoch, steps))

  def with_augmentation(steps):
    return (augmented(b['images'], i)
            for i, b in enumerate(feed.train(0, per_epoch, steps)))

  for fn in (gathered, with_augmentation):  # Compile and warm up.
    jax.block_until_ready(list(fn(2)))
  print(f"{config.dataset} ({feed.sizes['train']} train images) on "
        f'{jax.devices()[0].device_kind}, batch {args.batch_size}, '
        f'{args.steps} batches, median of {args.repeats}:')
  for name, fn in (('gather', gathered),
                   ('gather + crop, flip, normalize', with_augmentation)):
    rate = images_per_sec(fn, args.batch_size, args.steps, args.repeats)
    print(f'  {name}: {rate:,.0f} images/s')


if __name__ == '__main__':
  main()
