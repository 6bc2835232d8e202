"""Why layers.max_pool exists: the gradient of 3x3/2 max-pooling on CPU.

Times jit(grad) of flax's nn.max_pool (XLA select-and-scatter), of plain
autodiff through a max over strided slices, and of layers.max_pool (the
winner's position kept, its gradient placed by padded selects) on
conv1-sized maps of the CIFAR net, and of the whole CIFAR-form gradient with
each. Prints medians.

  python -m benchmarks.maxpool_grad [--batch 32] [--repeats 20]
"""

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import alexnet
from alexnet_jax.model import layers
from benchmarks.timing import median_ms


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 48)), jnp.float32)
  ours = layers.max_pool
  pools = {
      'nn.max_pool (select-and-scatter)': lambda v: nn.max_pool(
          v, (3, 3), (2, 2), padding=((1, 1), (1, 1))),
      'autodiff of max over strided slices': lambda v: functools.reduce(
          jnp.maximum, layers._pool_windows(v, 3, 2, 1)),  # pylint: disable=protected-access
      'layers.max_pool (winner kept)': lambda v: ours(v, 3, 2, 1),
  }
  print(f'{jax.devices()[0].device_kind}, {jax.device_count()} device(s), '
        f'jax {jax.__version__}, batch {args.batch}, median of {args.repeats}')
  for name, pool in pools.items():
    grad = jax.jit(jax.grad(lambda v: (pool(v) ** 2).sum()))
    print(f'  pool1 gradient, {name}: '
          f'{median_ms(grad, x, repeats=args.repeats):7.2f} ms')

  images = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 3)), jnp.float32)
  model = alexnet.AlexNetCifar(num_classes=10)
  params = model.init(jax.random.PRNGKey(0), images[:1])['params']
  for name, pool in pools.items():
    # The CIFAR form pools 3x3/2 with padding 1 everywhere, like `pool`.
    alexnet.max_pool = lambda v, w, s, p, pool=pool: pool(v)
    try:
      grad = jax.jit(jax.grad(lambda p: (model.apply(
          {'params': p}, images) ** 2).sum()))
      ms = median_ms(grad, params, repeats=args.repeats)
    finally:
      alexnet.max_pool = ours
    print(f'  CIFAR-form gradient step, {name}: {ms:7.2f} ms '
          f'({args.batch / ms * 1e3:6.1f} img/s)')


if __name__ == '__main__':
  main()
