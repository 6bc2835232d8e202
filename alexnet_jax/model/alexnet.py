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
import jax.numpy as jnp

from alexnet_jax.model.layers import Conv
from alexnet_jax.model.layers import Dropout
from alexnet_jax.model.layers import adaptive_avg_pool
from alexnet_jax.model.layers import local_response_norm
from alexnet_jax.model.layers import max_pool

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
    batch_norm: AlexNet-BN (You, Gitman & Ginsburg 2017, as the authors'
      nvcaffe `alexnet_bn` nets put it): batch normalization of the inputs of
      conv2..conv5 (after pool1, pool2, relu3, relu4) in place of LRN, no
      learned scale or shift, epsilon 1e-4, running averages at 0.9.
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
  batch_norm: bool = False
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
  def __call__(self, x, *, train: bool = False, dropout_rate=None):
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
      if self.batch_norm and i >= 2:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-4, use_scale=False, use_bias=False,
                         dtype=self.dtype, name=f'bn{i}')(x)
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

    # `dropout_rate`: a stacked run's own rate (traced), else the module's.
    drop = Dropout(self.dropout_rate if dropout_rate is None else dropout_rate,
                   deterministic=not train)
    for name in ('fc6', 'fc7'):
      if self.dropout_placement == 'torchvision':
        x = drop(x)
      x = nn.relu(self._dense(name, self.hidden)(x))
      if name == 'fc7':
        # The paper's "last, 4096-dimensional hidden layer" (its Fig. 4),
        # before dropout. Not named 'fc7': that is the Dense layer's scope.
        self.sow('intermediates', 'penultimate', x)
      if self.dropout_placement == 'paper':
        x = drop(x)
    return self._dense('fc8', self.num_classes)(x)


# --- Presets -----------------------------------------------------------------

# The 2012 paper's two-tower net on 227x227x3: 60,965,224 parameters.
AlexNetPaper = functools.partial(AlexNet)

# The same net as a single tower (the form most reimplementations use):
# 62,378,344 parameters.
AlexNetPaperOneTower = functools.partial(AlexNet, groups=1)

# AlexNet-BN for large batches (You, Gitman & Ginsburg 2017, with LARS): the
# two-tower net with batch normalization where the paper had LRN and before
# conv4/conv5 (`batch_norm`), Caffe's Gaussian init (the authors' nvcaffe
# nets draw the same std's): 60,965,224 parameters, the paper's count (the
# normalization learns none; its running averages are train state).
AlexNetBN = functools.partial(AlexNet, lrn=False, batch_norm=True,
                              init_scheme='caffe')

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

# The CIFAR form with AlexNet-BN's batch norm (in place of nothing: the
# CIFAR form has no LRN): the large-batch comparison at CIFAR scale.
AlexNetCifarBN = functools.partial(AlexNetCifar, batch_norm=True)

# The tiny net with AlexNet-BN's batch norm, for tests only.
AlexNetTinyBN = functools.partial(AlexNetTiny, batch_norm=True)

# The tiny net as the paper's two towers (grouped conv2/4/5, LRN), for tests
# of the tower layout (`towers.py`) only.
AlexNetTinyTowers = functools.partial(AlexNetTiny, groups=2, lrn=True)

MODELS = {
    'alexnet_paper': AlexNetPaper,
    'alexnet_paper_one_tower': AlexNetPaperOneTower,
    'alexnet_bn': AlexNetBN,
    'alexnet_torchvision': AlexNetTorchvision,
    'alexnet_cifar': AlexNetCifar,
    'alexnet_cifar_bn': AlexNetCifarBN,
    'alexnet_tiny': AlexNetTiny,
    'alexnet_tiny_bn': AlexNetTinyBN,
    'alexnet_tiny_towers': AlexNetTinyTowers,
}

# The input side each preset was built for: the crop a streaming dataset
# (ImageNet) is cut to when config.image_size is 0.
NATIVE_INPUT_SIZE = {
    'alexnet_paper': 227, 'alexnet_paper_one_tower': 227, 'alexnet_bn': 227,
    'alexnet_torchvision': 224, 'alexnet_cifar': 32, 'alexnet_tiny': 32,
    'alexnet_cifar_bn': 32, 'alexnet_tiny_bn': 32, 'alexnet_tiny_towers': 32,
}


def create_model(name: str, **kwargs) -> AlexNet:
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid: {", ".join(MODELS)}')
  return MODELS[name](**kwargs)
