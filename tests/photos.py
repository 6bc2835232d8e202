"""Real photographs as an `image_folder` tree, for the streaming and store
tests: scikit-image's pictures (`skimage.data`), written as JPEG and PNG into
train/<class>/* and val/<class>/*."""

import os

from PIL import Image

# Real photographs of different sizes and aspect ratios; `camera` is grey.
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'camera',
          'hubble_deep_field')


def _variant(img: Image.Image, k: int) -> Image.Image:
  """The k-th view of a photo: crops of varying size, some mirrored."""
  w, h = img.size
  f = 0.6 + 0.08 * (k % 5)
  cw, ch = int(w * f), int(h * f)
  left, top = (k * 37) % (w - cw + 1), (k * 53) % (h - ch + 1)
  view = img.crop((left, top, left + cw, top + ch))
  return view.transpose(Image.FLIP_LEFT_RIGHT) if k % 2 else view


def write_tree(root, train_per_class=6, val_per_class=2):
  """`train_per_class` and `val_per_class` views of each photo; `root`.
  Callers skip when scikit-image is absent (pytest.importorskip)."""
  from skimage import data as skimage_data  # pylint: disable=g-import-not-at-top
  for name in PHOTOS:
    photo = Image.fromarray(getattr(skimage_data, name)())
    for split, count, offset in (('train', train_per_class, 0),
                                 ('val', val_per_class, 100)):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for k in range(count):
        ext = 'jpg' if k % 2 == 0 else 'png'
        _variant(photo, k + offset).save(os.path.join(folder, f'{k}.{ext}'))
  return root
