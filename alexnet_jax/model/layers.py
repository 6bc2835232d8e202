"""AlexNet's building blocks: the paper's LRN, overlapping max-pooling with a
cheap gradient, a convolution whose towers are separate convolutions, and
torchvision's adaptive average pooling. All NHWC.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def local_response_norm(x, *, size=5, k=2.0, alpha=1e-4, beta=0.75, groups=1):
  """Local response normalization across channels, as in the paper (Sec. 3.3).

  b = a / (k + alpha * sum_{j in window} a_j^2) ** beta, the sum over `size`
  adjacent channels centred on the channel itself, zero-padded at the ends.
  Unlike torch.nn.LocalResponseNorm, alpha is NOT divided by `size`.

  With `groups` > 1 the window stays inside each tower's channels: in the
  paper's two-GPU net each GPU normalized only the kernel maps it held.
  """
  n, h, w, c = x.shape
  sq = jnp.square(x.astype(jnp.float32)).reshape(n, h, w, groups, c // groups)
  window_sum = jax.lax.reduce_window(
      sq, 0., jax.lax.add, (1, 1, 1, 1, size), (1, 1, 1, 1, 1),
      ((0, 0), (0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
  denom = (k + alpha * window_sum.reshape(n, h, w, c)) ** beta
  return (x.astype(jnp.float32) / denom).astype(x.dtype)


def _pool_windows(x, window, stride, padding):
  """The window*window strided slices whose elementwise max is the pool."""
  n, h, w, c = x.shape
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                constant_values=-jnp.inf)
  out_h = (h + 2 * padding - window) // stride + 1
  out_w = (w + 2 * padding - window) // stride + 1
  for dy in range(window):
    for dx in range(window):
      yield jax.lax.slice(
          x, (0, dy, dx, 0),
          (n, dy + stride * (out_h - 1) + 1, dx + stride * (out_w - 1) + 1, c),
          (1, stride, stride, 1))


def _max_pool_fwd(x, window, stride, padding):
  """The pooled map, and which window position won (first of ties)."""
  best = won = None
  for k, part in enumerate(_pool_windows(x, window, stride, padding)):
    if best is None:
      best, won = part, jnp.zeros(part.shape, jnp.int8)
    else:
      take = part > best
      best = jnp.where(take, part, best)
      won = jnp.where(take, jnp.int8(k), won)
  return best, won


def _max_pool_bwd(window, stride, padding, in_size, won, g):
  """Each output's gradient goes back to the input its window took."""
  h, w = in_size
  out_h, out_w = g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  dx = None
  for k in range(window * window):
    dy, dw = divmod(k, window)
    # Interior padding spreads the outputs `stride` apart; the edges put
    # window position (dy, dw) of output (0, 0) at input (dy, dw).
    placed = jax.lax.pad(jnp.where(won == k, g, zero), zero, (
        (0, 0, 0),
        (dy, h + 2 * padding - dy - stride * (out_h - 1) - 1, stride - 1),
        (dw, w + 2 * padding - dw - stride * (out_w - 1) - 1, stride - 1),
        (0, 0, 0)))
    dx = placed if dx is None else dx + placed
  return (dx[:, padding:padding + h, padding:padding + w, :],)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x, window, stride, padding, in_size):
  del in_size  # The backward pass's; static, so it is an argument.
  return _max_pool_fwd(x, window, stride, padding)[0]


_max_pool.defvjp(
    lambda x, window, stride, padding, _: _max_pool_fwd(
        x, window, stride, padding), _max_pool_bwd)


def max_pool(x, window: int = 3, stride: int = 2, padding: int = 0):
  """Max-pooling (NHWC, square windows), values and gradient as nn.max_pool.

  The gradient goes to the first maximum of each window, as XLA's
  select-and-scatter and PyTorch do. Why not nn.max_pool: XLA lowers its
  gradient to select-and-scatter, slow on CPU; and plain autodiff of a max
  over strided slices recomputes the max chain for every input. Here the
  forward pass keeps the winner's position (int8) and the backward pass
  places each gradient with nine padded selects, cheap elementwise work.
  `python -m benchmarks.maxpool_grad` times the three.
  """
  return _max_pool(x, window, stride, padding, x.shape[1:3])


class Conv(nn.Module):
  """A 2-D convolution over NHWC, with nn.Conv's parameters and values.

  `kernel` (HWIO, each group's input channels) and `bias` are named, shaped
  and initialized as nn.Conv's, so checkpoints and converted weights do not
  change. With groups > 1 each group is its own convolution and the outputs
  are concatenated: the same numbers as `feature_group_count` (forward bit
  for bit), but XLA's CPU backend runs grouped convolutions 3-6x slower than
  the split (`python -m benchmarks.grouped_conv`; jax#23713).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  groups: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k, g = self.kernel_size, self.groups
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1] // g, self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,),
                      self.param_dtype)
    return conv(x, kernel, bias, self.stride, self.padding, g, self.dtype)


def conv(x, kernel, bias, stride: int, padding: int, groups: int = 1,
         dtype: Any = jnp.float32):
  """`Conv`'s computation on given parameters: each of `groups` towers its
  own convolution, outputs concatenated. A function, so the tower-parallel
  forward pass (`towers.py`) runs the very numbers of the model."""
  x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
  one = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((padding, padding),) * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ins, outs = x.shape[-1] // groups, kernel.shape[-1] // groups
  y = jnp.concatenate([  # One part, returned as is, when groups == 1.
      one(x[..., i * ins:(i + 1) * ins], kernel[..., i * outs:(i + 1) * outs])
      for i in range(groups)], axis=-1)
  return y + bias


def adaptive_avg_pool(x, out_size: int):
  """torch.nn.AdaptiveAvgPool2d over NHWC: bin i spans [floor(iH/o), ceil((i+1)H/o))."""
  _, h, w, _ = x.shape
  if (h, w) == (out_size, out_size):
    return x

  def bounds(i, n):
    return (i * n) // out_size, -((-(i + 1) * n) // out_size)

  rows = []
  for i in range(out_size):
    r0, r1 = bounds(i, h)
    cols = []
    for j in range(out_size):
      c0, c1 = bounds(j, w)
      cols.append(x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class Dropout(nn.Dropout):
  """flax's `nn.Dropout`, whose rate may also be a traced number: a stack of
  runs sweeping `dropout_rate` (`task/runs.py`) gives each run its own rate
  inside one compiled step. A Python rate is flax's own code path; a traced
  one draws the same mask from the same key (the class keeps flax's name, so
  it is auto-named Dropout_N and `make_rng` folds in the same path)."""

  @nn.compact
  def __call__(self, inputs, deterministic=None, rng=None):
    if isinstance(self.rate, (int, float)):
      return super().__call__(inputs, deterministic, rng)
    if nn.merge_param('deterministic', self.deterministic, deterministic):
      return inputs
    keep = 1. - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep, shape=shape),
                            inputs.shape)
    return jax.lax.select(mask, inputs / keep.astype(inputs.dtype),
                          jnp.zeros_like(inputs))
