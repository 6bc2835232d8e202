"""The AlexNet family as one Flax Linen module, with presets.

One module, `AlexNet`, covers every variant; the presets at the bottom are
`functools.partial`s of it (as in flax's ImageNet example), so a config names a
preset and the rest is data.

Layers are always named conv1..conv5 and fc6..fc8, whatever the variant, so a
checkpoint or imported torchvision state maps onto them by name.

Input size, 224 or 227: the 2012 paper says 224x224x3, but 11x11 kernels at
stride 4 without padding only give the paper's 55x55 first-layer maps from
227x227 ((227 - 11) / 4 + 1 = 55). The paper preset takes 227; torchvision's
variant pads conv1 by 2 and takes 224.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT_SCHEMES = ('paper', 'caffe', 'he')

# Bias init per layer under the paper's scheme (Sec. 5): 1 on conv2, conv4,
# conv5 and the hidden FC layers "to accelerate the early stages of learning by
# providing the ReLUs with positive inputs", 0 elsewhere. Caffe's reference
# model (bvlc_alexnet) lowered the 1s to 0.1 and fc6/fc7 std to 0.005, because
# the paper's values often stall at chance.
_PAPER_BIAS = dict(conv1=0., conv2=1., conv3=0., conv4=1., conv5=1.,
                   fc6=1., fc7=1., fc8=0.)
_CAFFE_STD = dict(fc6=0.005, fc7=0.005)


def _initializers(scheme: str, name: str):
  """(kernel_init, bias_init) for layer `name` under an init scheme."""
  if scheme == 'paper':
    return (nn.initializers.normal(0.01),
            nn.initializers.constant(_PAPER_BIAS[name]))
  if scheme == 'caffe':
    return (nn.initializers.normal(_CAFFE_STD.get(name, 0.01)),
            nn.initializers.constant(0.1 if _PAPER_BIAS[name] else 0.))
  if scheme == 'he':
    # He et al. 2015 for layers followed by ReLU. The logits layer starts at
    # zero (as big_vision's heads): max-pooling grows activations layer by
    # layer, and random logits would start the loss well above log(classes).
    if name == 'fc8':
      return nn.initializers.zeros, nn.initializers.zeros
    return (nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
            nn.initializers.zeros)
  raise ValueError(f'unknown init {scheme!r}; valid: {", ".join(INIT_SCHEMES)}')


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
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (self.stride, self.stride), ((self.padding, self.padding),) * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    ins, outs = x.shape[-1] // g, self.features // g
    y = jnp.concatenate([  # One part, returned as is, when g == 1.
        conv(x[..., i * ins:(i + 1) * ins],
             kernel[..., i * outs:(i + 1) * outs]) for i in range(g)], axis=-1)
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


class AlexNet(nn.Module):
  """AlexNet: five convolutions, three fully connected layers, logits out.

  Attributes:
    num_classes: size of the logits layer (fc8). No ReLU/softmax after it.
    widths: output channels of conv1..conv5.
    kernels, strides, paddings: per conv layer (square, symmetric).
    groups: towers for conv2, conv4 and conv5 (see `Conv`); 2 is
      the paper's two-GPU net, 1 its single-tower form. conv1 and conv3 are
      always full (every tower sees all of their inputs, as in the paper).
    lrn: local response normalization after ReLU of conv1 and conv2.
    pool_padding: padding of the overlapping 3x3/2 max-pools (0 in the paper).
    adaptive_pool: torchvision's AdaptiveAvgPool2d to this size, or None.
    hidden: width of fc6 and fc7.
    dropout_rate: dropout probability (training only).
    dropout_placement: 'paper' drops the outputs of fc6 and fc7; 'torchvision'
      drops the inputs of fc6 and fc7 (its classifier's layer order).
    init_scheme: 'paper', 'caffe' or 'he' (see `_initializers`).
    dtype: compute dtype (bfloat16 on accelerators); parameters stay float32.
  """
  num_classes: int = 1000
  widths: Sequence[int] = (96, 256, 384, 384, 256)
  kernels: Sequence[int] = (11, 5, 3, 3, 3)
  strides: Sequence[int] = (4, 1, 1, 1, 1)
  paddings: Sequence[int] = (0, 2, 1, 1, 1)
  groups: int = 2
  lrn: bool = True
  pool_padding: int = 0
  adaptive_pool: Optional[int] = None
  hidden: int = 4096
  dropout_rate: float = 0.5
  dropout_placement: str = 'paper'
  init_scheme: str = 'paper'
  dtype: Any = jnp.float32

  def spatial_sizes(self, size: int) -> list:
    """Side of the feature maps after each conv and pool, for `size` input.

    The shape arithmetic of `__call__` (floor((n + 2p - k) / s) + 1), so an
    input too small for the net is caught by name before anything is traced.
    """
    sizes = []
    for i, (k, s, p) in enumerate(
        zip(self.kernels, self.strides, self.paddings), start=1):
      size = (size + 2 * p - k) // s + 1
      sizes.append(size)
      if i in (1, 2, 5) and size >= 1:
        size = (size + 2 * self.pool_padding - 3) // 2 + 1
        sizes.append(size)
    return sizes

  def min_input_size(self) -> int:
    """The smallest square input that leaves every feature map non-empty."""
    size = 1
    while min(self.spatial_sizes(size)) < 1:
      size += 1
    return size

  def _dense(self, name, features):
    kinit, binit = _initializers(self.init_scheme, name)
    return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=kinit, bias_init=binit, name=name)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.dropout_placement not in ('paper', 'torchvision'):
      raise ValueError(f'unknown dropout_placement {self.dropout_placement!r}; '
                       'valid: paper, torchvision')
    x = x.astype(self.dtype)
    grouped = {2, 4, 5}
    for i, (width, k, s, p) in enumerate(
        zip(self.widths, self.kernels, self.strides, self.paddings), start=1):
      name = f'conv{i}'
      kinit, binit = _initializers(self.init_scheme, name)
      groups = self.groups if i in grouped else 1
      x = Conv(width, k, s, p, groups, dtype=self.dtype,
               param_dtype=jnp.float32, kernel_init=kinit, bias_init=binit,
               name=name)(x)
      x = nn.relu(x)
      if self.lrn and i <= 2:
        x = local_response_norm(x, groups=groups)
      if i in (1, 2, 5):
        x = max_pool(x, 3, 2, self.pool_padding)
        self.sow('intermediates', f'pool{i}', x)
    if self.adaptive_pool is not None:
      x = adaptive_avg_pool(x, self.adaptive_pool)
    x = x.reshape((x.shape[0], -1))
    self.sow('intermediates', 'flatten', x)

    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    for name in ('fc6', 'fc7'):
      if self.dropout_placement == 'torchvision':
        x = drop(x)
      x = nn.relu(self._dense(name, self.hidden)(x))
      if self.dropout_placement == 'paper':
        x = drop(x)
    return self._dense('fc8', self.num_classes)(x)


# --- Presets -----------------------------------------------------------------

# The 2012 paper's two-tower net on 227x227x3: 60,965,224 parameters.
AlexNetPaper = functools.partial(AlexNet)

# The same net as a single tower (the form most reimplementations use):
# 62,378,344 parameters.
AlexNetPaperOneTower = functools.partial(AlexNet, groups=1)

# torchvision.models.alexnet (Krizhevsky 2014, "One weird trick"), layer for
# layer, on 224x224x3: 61,100,840 parameters.
AlexNetTorchvision = functools.partial(
    AlexNet, widths=(64, 192, 384, 256, 256), paddings=(2, 2, 1, 1, 1),
    groups=1, lrn=False, adaptive_pool=6, dropout_placement='torchvision',
    init_scheme='he')

# AlexNet for native 32x32 input (CIFAR): conv1 becomes 3x3/1, so the three
# overlapping 3x3/2 pools (padded by 1) take 32 -> 16 -> 8 -> 4, and fc6 sees
# 4x4x128. Widths are about half the paper's (48-96-192-128-128) and the FC
# layers 1024 wide, so a CPU runs it fast even at the small batches that suit
# a small dataset (README "Results": how this was chosen). The shape (5 conv +
# 3 FC, ReLU, overlapping pooling, dropout 0.5) is AlexNet's; LRN is off
# (`lrn=True` turns it on).
AlexNetCifar = functools.partial(
    AlexNet, widths=(48, 96, 192, 128, 128), kernels=(3, 3, 3, 3, 3),
    strides=(1, 1, 1, 1, 1), paddings=(1, 1, 1, 1, 1), groups=1, lrn=False,
    pool_padding=1, hidden=1024, init_scheme='he')

# Tiny net with the CIFAR form's topology, for fast tests only.
AlexNetTiny = functools.partial(
    AlexNetCifar, widths=(16, 32, 32, 32, 32), hidden=64)

MODELS = {
    'alexnet_paper': AlexNetPaper,
    'alexnet_paper_one_tower': AlexNetPaperOneTower,
    'alexnet_torchvision': AlexNetTorchvision,
    'alexnet_cifar': AlexNetCifar,
    'alexnet_tiny': AlexNetTiny,
}

# The input side each preset was built for: the crop a streaming dataset
# (ImageNet) is cut to when config.image_size is 0.
NATIVE_INPUT_SIZE = {
    'alexnet_paper': 227, 'alexnet_paper_one_tower': 227,
    'alexnet_torchvision': 224, 'alexnet_cifar': 32, 'alexnet_tiny': 32,
}


def create_model(name: str, **kwargs) -> AlexNet:
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid: {", ".join(MODELS)}')
  return MODELS[name](**kwargs)
