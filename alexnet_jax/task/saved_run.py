"""A trained run's workdir read back: its config, model, weights and input
preprocessing.

One place for what `predict`, `evaluate` and `visualize` need from a
workdir, so a run trained here and weights converted by
`alexnet_jax.convert` are read the same way: `config.json` says which model,
dataset and preprocessing (through the same builders as training); the
checkpoint holds the parameters.
"""

import dataclasses
import io
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from alexnet_jax import build
from alexnet_jax.data import images
from alexnet_jax.data.input_spec import InputSpec
from alexnet_jax.errors import CheckpointError
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import DataError
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.layout import Layout

# --- Config ------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json over configs/default.py's fields.

  The defaults fill fields added to the trainer after the run was written.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  layout = Layout.of(workdir)
  if not epath.Path(workdir).is_dir():
    raise CheckpointError(f'workdir {workdir} does not exist')
  config_path = layout.config
  if not config_path.exists():
    raise ConfigError(f'{workdir} has no config.json: not a workdir written '
                      'by alexnet_jax.main or alexnet_jax.convert')
  try:
    saved = json.loads(config_path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f'{config_path} is not valid JSON ({e})') from None
  if not isinstance(saved, dict):
    raise ConfigError(f'{config_path} holds a {type(saved).__name__}, not a '
                      'config')
  config = default.get_config()
  for key, value in saved.items():
    if isinstance(value, list):
      value = tuple(value)
    try:
      config[key] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{config_path}: field {key} = {value!r} has the '
                        f'wrong type ({e})') from None
  return config


# --- Model and weights -------------------------------------------------------


def _check_variables(variables, model, side: int, where: str, name: str):
  """Saved parameters (and batch norm statistics) must be the model's own,
  layer for layer."""
  wanted = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, side, side, 3))))
  saved_sig = checkpoints.tree_signature(variables)
  wanted_sig = checkpoints.tree_signature(wanted)
  if saved_sig != wanted_sig:
    raise CheckpointError(
        f'{where} does not fit its config.json (model {name}): '
        f'{checkpoints.describe_mismatch(saved_sig, wanted_sig)}')


def pick_run(config, variables, run: Optional[int], where: str):
  """Run `run`'s variables from a stack's (`task/runs.py`), or a single
  run's own; a missing or wrong index is one error naming the choices."""
  plan = build.run_plan(config)
  if plan is None:
    if run not in (None, 0):
      raise ConfigError(f'--run {run}: {where} holds one run (leave --run '
                        'out, or 0)')
    return variables
  if run is None or not 0 <= run < len(plan):
    given = 'no --run' if run is None else f'--run {run}'
    raise ConfigError(
        f'{given}: {where} holds {len(plan)} runs trained together (runs/'
        f'sweep in its config.json); pick one with --run=0..{len(plan) - 1} '
        '(evaluate, predict, visualize): '
        + '; '.join(r.describe() for r in plan[:8])
        + ('; ...' if len(plan) > 8 else ''))
  return jax.tree.map(lambda x: np.asarray(x)[run], variables)


def load_model(config, workdir: str, step: Optional[int] = None,
               num_classes: Optional[int] = None, run: Optional[int] = None):
  """(step, model, numpy variables) of a workdir's checkpoint (latest or
  `step`); variables = {'params', ['batch_stats']}, what `model.apply` takes;
  `run`: which of a stack of runs (`pick_run`).

  The class count is the checkpoint's own (fc8), unless `num_classes` asks
  for one: then a different count is an error naming both.
  """
  step, variables = checkpoints.load_variables_on_host(workdir, step)
  variables = pick_run(config, variables, run, workdir)
  saved_classes = variables['params']['fc8']['kernel'].shape[-1]
  if num_classes is not None and num_classes != saved_classes:
    raise CheckpointError(
        f'the checkpoint (step {step} in {workdir}) has {saved_classes} '
        f'classes, dataset {config.dataset!r} has {num_classes}')
  model = build.model(config, saved_classes)
  _check_variables(variables, model,
                   build.input_side(config, build.dataset(config)),
                   f'checkpoint step {step} in {workdir}', config.model)
  return step, model, variables


# --- Input -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """An image file -> the model's input, as the workdir's evaluation sees it.

  Image datasets (ImageNet; converted torchvision weights): torchvision's
  ImageClassification preset, i.e. the shorter side to `resize` (PIL
  bilinear, antialiased), the central `crop` square with torchvision's
  rounding, then 0..1 and the ImageNet mean/std. In-memory datasets
  (CIFAR-10, fake): the same at the dataset's own side (32 for CIFAR-10),
  resized on the device to the model's input side as in training, with
  that dataset's mean/std (`input`: the run's input spec, in float32).
  """
  resize: int
  crop: int
  input: InputSpec

  @classmethod
  def from_config(cls, config):
    data = build.dataset(config)
    side = build.input_side(config, data)
    resize = data.stored_side
    crop = side if data.streamed else resize
    return cls(resize, crop, dataclasses.replace(
        build.input_spec(config, data, side), dtype=jnp.float32))

  @property
  def side(self) -> int:
    return self.input.side

  def pixels(self, image) -> np.ndarray:
    """A PIL image -> uint8 [crop, crop, 3]: the host-side part."""
    return images.center_square(images.resize_shorter(image, self.resize),
                                self.crop)

  def normalize(self, pixels, dtype=jnp.float32):
    """uint8 [N, crop, crop, 3] -> model input [N, side, side, 3] (jittable)."""
    return dataclasses.replace(self.input, dtype=dtype).normalize(pixels)


def open_image(path: str):
  """An image file (JPEG, PNG, ...) as an RGB PIL image, or a DataError."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise DataError(f'image {path!r} does not exist')
  if os.path.isdir(path):
    raise DataError(f'image {path!r} is a directory, not an image file')
  try:
    with open(path, 'rb') as f:
      data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()  # Decode now: a truncated file fails here, by name.
    return image.convert('RGB')
  except UnidentifiedImageError:
    raise DataError(f'cannot read image {path!r}: not an image file (JPEG or '
                    'PNG expected)') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f'cannot read image {path!r}: {e} (a damaged or '
                    'truncated file?)') from None
