"""Why layers.Conv splits groups: XLA's grouped convolution vs two convs.

Times jit of the forward pass and of forward + both gradients for the
two-tower layers of `alexnet_paper` (conv2, conv4, conv5 at 227x227 input):
flax's nn.Conv with `feature_group_count=2` against `layers.Conv`, which runs
each group as its own convolution, on the same parameters; checks they agree.

  python -m benchmarks.grouped_conv [--batch 64] [--repeats 7]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import layers
from benchmarks.timing import median_ms


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=7)
  args = parser.parse_args()
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}, batch '
        f'{args.batch}, float32, median of {args.repeats} (ms)')
  rng = np.random.default_rng(0)
  for name, side, cin, cout, k, p in (('conv2', 27, 96, 256, 5, 2),
                                      ('conv4', 13, 384, 384, 3, 1),
                                      ('conv5', 13, 384, 256, 3, 1)):
    x = jnp.asarray(rng.standard_normal((args.batch, side, side, cin)),
                    jnp.float32)
    layers = {
        'grouped': nn.Conv(cout, (k, k), padding=((p, p), (p, p)),
                           feature_group_count=2),
        'split': layers.Conv(cout, k, 1, p, groups=2),
    }
    params = layers['split'].init(jax.random.PRNGKey(0), x)
    cells, results = [], {}
    for label, layer in layers.items():
      fwd = jax.jit(layer.apply)
      grads = jax.jit(jax.grad(
          lambda params, x, layer=layer: (layer.apply(params, x) ** 2).sum(),
          argnums=(0, 1)))
      results[label] = fwd(params, x), grads(params, x)
      cells.append(
          f'{label}: forward '
          f'{median_ms(fwd, params, x, repeats=args.repeats):7.1f}, '
          f'+ gradients {median_ms(grads, params, x, repeats=args.repeats):7.1f}')
    (y0, g0), (y1, g1) = results['grouped'], results['split']
    rel = max(float(jnp.abs(a - b).max() / jnp.abs(a).max())
              for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
    print(f'  {name}: ' + ' | '.join(cells) +
          f' | forward max diff {float(jnp.abs(y0 - y1).max()):.1e}, '
          f'gradients max rel diff {rel:.1e}')


if __name__ == '__main__':
  main()
