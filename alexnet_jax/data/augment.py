"""Device-side augmentation and normalization, inside the jitted steps.

The cheap, per-pixel work runs on the accelerator, on uint8 batches that
arrive from either data path (CIFAR held on the device, or the streaming
pipeline's host workers, which do the expensive decode and resize):
  * `random_crop_flip`: CIFAR's pad-and-crop plus flip;
  * `random_flip`, `pca_lighting`: the paper's flip and its "fancy PCA"
    colour noise (Sec. 4.1);
  * `normalize`: uint8 -> model input (scaled, centred, optionally resized);
  * `center_crop`, `ten_crops`: the paper's test-time views (Sec. 4.1).
Random draws use keys per position in the global batch, so the result does
not depend on how the batch is sharded.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

# ImageNet's RGB covariance, eigen-decomposed (0..1 pixel scale): the values
# fb.resnet.torch and many reproductions of the paper use, computed from the
# ImageNet training set. Columns of the matrix are eigenvectors.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))


def random_crop_flip(key, images, pad: int = 4, flip: bool = True):
  """Per-image random crop (after zero-padding by `pad`) and horizontal flip.

  Works on uint8 and keeps the dtype.
  """
  n, h, w, _ = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5 if flip else 0., (n,))

  def one(img, off, mirror):
    img = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jnp.where(mirror, img[:, ::-1], img)

  return jax.vmap(one)(padded, offsets, flips)


def random_crop(key, images, size: int):
  """A random size x size window of each image (the paper's 227 of 256)."""
  n, h, w, c = images.shape
  tops = jax.random.randint(jax.random.fold_in(key, 0), (n,), 0, h - size + 1)
  lefts = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, w - size + 1)
  return jax.vmap(lambda img, t, l: jax.lax.dynamic_slice(
      img, (t, l, 0), (size, size, c)))(images, tops, lefts)


def _rrc_box(key, h: int, w: int, scale, ratio, tries: int = 10):
  """torchvision's RandomResizedCrop box (top, left, height, width): up to
  `tries` draws, the first that fits, else the whole image."""
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = h * w * jax.random.uniform(k_area, (tries,), minval=scale[0],
                                    maxval=scale[1])
  log_ratio = jax.random.uniform(k_ratio, (tries,), minval=jnp.log(ratio[0]),
                                 maxval=jnp.log(ratio[1]))
  cw = jnp.round(jnp.sqrt(area * jnp.exp(log_ratio)))
  ch = jnp.round(jnp.sqrt(area / jnp.exp(log_ratio)))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(fits)
  cw = jnp.where(fits.any(), cw[first], w)
  ch = jnp.where(fits.any(), ch[first], h)
  top = jnp.floor(jax.random.uniform(k_top) * (h - ch + 1))
  left = jnp.floor(jax.random.uniform(k_left) * (w - cw + 1))
  return top, left, ch, cw


def random_resized_crop(key, images, size: int, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop on the device: a random box of each
  (stored 256x256) image, resampled to size x size (bilinear, antialiased
  when shrinking). Returns float32 in 0..1."""
  n, h, w, c = images.shape

  def one(key, img):
    top, left, ch, cw = _rrc_box(key, h, w, scale, ratio)
    sy, sx = size / ch, size / cw
    return jax.image.scale_and_translate(
        to_unit(img), (size, size, c), (0, 1),
        jnp.stack([sy, sx]), jnp.stack([-top * sy, -left * sx]),
        method='linear', antialias=True)

  return jax.vmap(one)(jax.random.split(key, n), images)


def random_flip(key, images):
  """Each image mirrored left-right with probability 1/2."""
  flips = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def pca_lighting(key, images, std: float = 0.1,
                 eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec=IMAGENET_PCA_EIGVEC):
  """The paper's colour augmentation on float images in 0..1 scale.

  Adds to every pixel of image i the same RGB offset
  sum_j eigvec[:, j] * alpha_ij * eigval[j], with alpha_ij ~ N(0, std), drawn
  once per image (and per epoch, since keys change every step).
  """
  alpha = std * jax.random.normal(key, (images.shape[0], 3), jnp.float32)
  offset = (alpha * jnp.asarray(eigval, jnp.float32)) @ jnp.asarray(
      eigvec, jnp.float32).T
  return images + offset[:, None, None, :]


def to_unit(images):
  """uint8 -> float32 in 0..1; floats are taken to be in 0..1 already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.
  return images


def normalize(images, mean, std, image_size: Optional[int] = None,
              dtype=jnp.float32, scale: float = 1.0):
  """uint8 (or 0..1 float) -> model input: (x - mean) / std * scale.

  Images of another side than `image_size` are resized (bilinear), e.g.
  CIFAR's 32 into the 227 net. `scale` 255 with std 1 gives the paper's
  centred raw RGB values (its Sec. 2).
  """
  x = to_unit(images)
  if image_size and image_size != x.shape[1]:
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]),
                         method='bilinear')
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return (x * scale).astype(dtype)


def center_crop(images, size: int):
  """The central size x size window of each image."""
  h, w = images.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def ten_crops(images, size: int):
  """[10, N, size, size, C]: the four corners and the centre, each also
  mirrored: the paper's test-time views of a 256 x 256 image."""
  h, w = images.shape[1:3]
  corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
             ((h - size) // 2, (w - size) // 2)]
  crops = [images[:, t:t + size, l:l + size] for t, l in corners]
  return jnp.stack(crops + [c[:, :, ::-1] for c in crops])
