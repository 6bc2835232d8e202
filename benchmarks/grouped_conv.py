"""Why models.Conv splits groups: XLA's grouped convolution vs two convs.

Times jit of the forward pass and of forward + both gradients for the
two-tower layers of `alexnet_paper` (conv2, conv4, conv5 at 227x227 input),
computed with `feature_group_count=2` and as two convolutions over the
halves, concatenated (what `models.Conv` does); checks they agree.

  python -m benchmarks.grouped_conv [--batch 64] [--repeats 7]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

_DN = ('NHWC', 'HWIO', 'NHWC')


def grouped(x, w, p):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)),
                                      dimension_numbers=_DN,
                                      feature_group_count=2)


def split(x, w, p):
  ins, outs = x.shape[-1] // 2, w.shape[-1] // 2
  conv = lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN)
  return jnp.concatenate([conv(x[..., :ins], w[..., :outs]),
                          conv(x[..., ins:], w[..., outs:])], axis=-1)


def median_ms(fn, repeats):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


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
    w = jnp.asarray(0.05 * rng.standard_normal((k, k, cin // 2, cout)),
                    jnp.float32)
    cells, results = [], {}
    for label, fn in (('grouped', grouped), ('split', split)):
      fwd = jax.jit(lambda x, w, fn=fn: fn(x, w, p))
      grads = jax.jit(jax.grad(lambda x, w, fn=fn: (fn(x, w, p) ** 2).sum(),
                               argnums=(0, 1)))
      results[label] = fwd(x, w), grads(x, w)
      cells.append(f'{label}: forward {median_ms(lambda: fwd(x, w), args.repeats):7.1f}, '
                   f'+ gradients {median_ms(lambda: grads(x, w), args.repeats):7.1f}')
    (y0, (gx0, gw0)), (y1, (gx1, gw1)) = results['grouped'], results['split']
    rel = max(float(jnp.abs(a - b).max() / jnp.abs(a).max())
              for a, b in ((gx0, gx1), (gw0, gw1)))
    print(f'  {name}: ' + ' | '.join(cells) +
          f' | forward max diff {float(jnp.abs(y0 - y1).max()):.1e}, '
          f'gradients max rel diff {rel:.1e}')


if __name__ == '__main__':
  main()
