"""What the model's input is, and how a uint8 batch from a feed becomes it.

Built once, with the feed (`build.feed`), from the dataset, the model's
input side and the augmentation asked for; the train step, the evaluator,
`predict` and `visualize` are all made from it, so the input's facts (side,
mean, std, scaling, dtype, which crops run on the device, the test views)
are said in one place and never passed back down.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax.data import augment

# How a training crop is cut on the device: '' where it is not (CIFAR is
# padded and cropped instead; an image folder's crop is cut on the host),
# 'random' (the paper's 227 of the stored 256), 'resized' (torchvision's
# RandomResizedCrop).
DEVICE_CROPS = ('', 'random', 'resized')


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """A uint8 batch's way to the model.

  side: the model's input side; batches of another side are cropped (image
    datasets) or resized (CIFAR into the 227 net) to it.
  mean, std, scale: normalization, (x / 255 - mean) / std * scale ('paper'
    input scaling: std 1, scale 255: the centred raw RGB values).
  dtype: the model's compute dtype.
  pad_crop: CIFAR's random crop after zero-padding by this many pixels.
  device_crop: see DEVICE_CROPS.
  flip: random horizontal flips in training.
  pca_lighting: std of the paper's colour noise (0: off).
  ten_crop, eval_flip: the test views (`eval_views`).
  """
  side: int
  mean: tuple
  std: tuple
  scale: float = 1.0
  dtype: Any = jnp.float32
  pad_crop: int = 0
  device_crop: str = ''
  flip: bool = False
  pca_lighting: float = 0.0
  ten_crop: bool = False
  eval_flip: bool = False

  def __post_init__(self):
    if self.device_crop not in DEVICE_CROPS:
      raise ValueError(f'device_crop {self.device_crop!r} not in '
                       f'{DEVICE_CROPS}')

  def normalize(self, images):
    """uint8 (or 0..1 float) [N, s, s, C] -> model input [N, side, side, C]."""
    return augment.normalize(images, self.mean, self.std, self.side,
                             self.dtype, self.scale)

  def train_view(self, key, images):
    """The training view of a uint8 batch: CIFAR's pad-crop-flip; or a crop
    of the stored square where the host did not cut one, and a flip; the
    paper's PCA colour noise; then normalization."""
    x = images
    if self.pad_crop:
      x = augment.random_crop_flip(key, x, self.pad_crop, self.flip)
    else:
      if self.device_crop:
        crop = (augment.random_resized_crop if self.device_crop == 'resized'
                else augment.random_crop)
        x = crop(jax.random.fold_in(key, 2), x, self.side)
      if self.flip:
        x = augment.random_flip(key, x)
    if self.pca_lighting:
      x = augment.pca_lighting(jax.random.fold_in(key, 1), augment.to_unit(x),
                               self.pca_lighting)
    return self.normalize(x)

  def eval_views(self, images):
    """The test views of a uint8 batch, [V, N, side, side, C], still uint8
    (each is `normalize`d on its way into the model).

    The paper's 10 crops (`ten_crop`: corners and centre, each mirrored), or
    the centre crop of larger images; with `eval_flip`, each view's
    reflection too (the paper's test-time averaging).
    """
    if self.ten_crop:
      return augment.ten_crops(images, self.side)
    if images.shape[1] > self.side:
      images = augment.center_crop(images, self.side)
    views = [images]
    if self.eval_flip:
      views.append(images[:, :, ::-1])
    return jnp.stack(views)
