"""Where XLA's CPU step loses to PyTorch: each convolution, pass by pass.

For every convolution of a preset at a batch size (one tower: groups are
left out), times XLA's forward
convolution, its weight gradient and its input gradient (each jitted alone,
float32, NHWC) next to PyTorch's (`aten.convolution_backward`, NCHW), in two
interleaved rounds; prints the better median of each.

  python -m benchmarks.conv_layers [--model alexnet_cifar] [--batch 128]

Set XLA_FLAGS to compare XLA CPU backends, e.g.
--xla_cpu_experimental_ynn_fusion_type=individual_dot keeps YNNPACK for
matmuls only, so convolutions run on Eigen.
"""

import argparse

import jax
import numpy as np

from alexnet_jax.model import alexnet
from benchmarks.timing import median_ms


def conv_shapes(model, side):
  """(name, input side, in channels, out channels, kernel, stride, padding)."""
  sizes = model.spatial_sizes(side)
  ins = [side] + [sizes[i] for i in (1, 3, 4, 5)]  # After pool1, pool2, ...
  chans = [3] + list(model.widths[:-1])
  return [(f'conv{i + 1}', ins[i], chans[i], model.widths[i],
           model.kernels[i], model.strides[i], model.paddings[i])
          for i in range(5)]


def time_layer(batch, side, cin, cout, k, s, p):
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, side, side, cin), np.float32)
  w = 0.05 * rng.standard_normal((k, k, cin, cout), np.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (s, s), ((p, p), (p, p)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  g = rng.standard_normal(jax.eval_shape(conv, x, w).shape, np.float32)
  fwd = jax.jit(conv)
  wgrad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  igrad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  xj, wj, gj = jax.device_put((x, w, g))
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
  gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

  def torch_pass(mask):
    return lambda: torch.ops.aten.convolution_backward(
        gt, xt, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

  def torch_fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)

  passes = {
      'forward': (lambda: fwd(xj, wj).block_until_ready(), torch_fwd),
      'weight grad': (lambda: wgrad(xj, wj, gj).block_until_ready(),
                      torch_pass([False, True, False])),
      'input grad': (lambda: igrad(xj, wj, gj).block_until_ready(),
                     torch_pass([True, False, False])),
  }
  best = {}
  for _ in range(2):  # Interleaved rounds; the better median of each.
    for name, fns in passes.items():
      for who, fn in zip(('jax', 'torch'), fns):
        t = median_ms(fn, repeats=15, warmup=2)
        best[name, who] = min(best.get((name, who), t), t)
  return best


def main():
  import torch  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='alexnet_cifar',
                      choices=tuple(alexnet.MODELS))
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=0)
  args = parser.parse_args()
  model = alexnet.create_model(args.model, num_classes=1000)
  side = args.image_size or alexnet.NATIVE_INPUT_SIZE[args.model]
  print(f'{args.model} batch {args.batch} {side}x{side}, float32; jax '
        f'{jax.__version__}, torch {torch.__version__}; ms (jax / torch)')
  total = {}
  for name, *shape in conv_shapes(model, side):
    best = time_layer(args.batch, *shape)
    cells = []
    for kind in ('forward', 'weight grad', 'input grad'):
      j, t = best[kind, 'jax'], best[kind, 'torch']
      if not (name == 'conv1' and kind == 'input grad'):  # Never needed.
        total[kind, 'jax'] = total.get((kind, 'jax'), 0.) + j
        total[kind, 'torch'] = total.get((kind, 'torch'), 0.) + t
      cells.append(f'{kind} {j:7.2f} / {t:7.2f}')
    print(f'  {name}: ' + ' | '.join(cells), flush=True)
  print('  sum (conv1 input grad left out, training never needs it): ' +
        ' | '.join(f"{kind} {total[kind, 'jax']:.1f} / "
                   f"{total[kind, 'torch']:.1f}"
                   for kind in ('forward', 'weight grad', 'input grad')))


if __name__ == '__main__':
  main()
