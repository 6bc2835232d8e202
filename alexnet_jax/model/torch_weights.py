"""PyTorch state dicts -> this package's Flax params (torchvision's AlexNet first).

Layouts differ in two places: conv kernels are OIHW in PyTorch and HWIO in
Flax, and fc6 reads the pooled maps flattened as C,H,W in PyTorch but H,W,C
here (NHWC), so its input rows are permuted.

`load_state_dict` and `check_torchvision_alexnet` read a `.pth` file and say
in one line what is wrong with it (a `WeightsError`); torch is imported only
there, so the rest of the package never needs it.
"""

import os
import pickle
import warnings
import zipfile
from typing import Mapping

import numpy as np

from alexnet_jax.errors import WeightsError

# torchvision.models.alexnet's module indices, by our layer names.
TORCHVISION_LAYERS = {
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
    'conv4': 'features.8', 'conv5': 'features.10',
    'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6',
}

# torchvision's AlexNet: (weight, bias) shapes in PyTorch's layout; fc8's
# first dimension is the class count (1000 for the ImageNet weights).
TORCHVISION_SHAPES = {
    'features.0': ((64, 3, 11, 11), (64,)),
    'features.3': ((192, 64, 5, 5), (192,)),
    'features.6': ((384, 192, 3, 3), (384,)),
    'features.8': ((256, 384, 3, 3), (256,)),
    'features.10': ((256, 256, 3, 3), (256,)),
    'classifier.1': ((4096, 9216), (4096,)),
    'classifier.4': ((4096, 4096), (4096,)),
    'classifier.6': (('classes', 4096), ('classes',)),
}


def load_state_dict(path: str) -> dict:
  """A state dict from a torch.save file, loaded as torchvision's are.

  `weights_only=True`: tensors and plain containers only, so a crafted file
  cannot run code. Wrappers' prefixes (DataParallel's `module.`,
  torch.compile's `_orig_mod.`) are dropped.
  """
  if not os.path.exists(path):
    raise WeightsError(f'--torch_weights {path!r} does not exist')
  if os.path.isdir(path):
    raise WeightsError(f'--torch_weights {path!r} is a directory; give the '
                       '.pth file (e.g. alexnet-owt-7be5be79.pth)')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError(
        'reading PyTorch weights needs PyTorch, which is not installed: '
        'pip install -r requirements-parity.txt') from None
  return _state_of(path, _torch_load(torch, path), torch)


def _torch_load(torch, path: str):
  """torch.load with weights_only, its many failures as one WeightsError."""
  try:
    with warnings.catch_warnings():  # Pickle-protocol notes on foreign files.
      warnings.simplefilter('ignore')
      return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # Anything can come out of unpickling a foreign file (KeyError,
    # UnpicklingError, RuntimeError, EOFError, ...). A zip archive that
    # weights_only refuses is torch's own format holding more than tensors.
    if not zipfile.is_zipfile(path):  # torch's messages say little here.
      raise WeightsError(f'{path!r} is not a PyTorch file torch.load can '
                         'read (not written by torch.save, or truncated)'
                         ) from None
    if (isinstance(e, pickle.UnpicklingError) and
        'weights only load failed' in str(e).lower()):
      raise WeightsError(
          f'{path!r} holds Python objects other than tensors (a pickled '
          'model rather than its state_dict?); save model.state_dict() with '
          'torch.save and convert that') from None
    raise WeightsError(f'{path!r} is not a PyTorch file torch.load can read '
                       f'({_first_line(e)})') from None


def _state_of(path: str, loaded, torch) -> dict:
  """The loaded object as a state dict of tensors, wrapper prefixes off."""
  if not isinstance(loaded, Mapping) or not all(
      isinstance(k, str) for k in loaded):
    raise WeightsError(
        f'{path!r} holds a {type(loaded).__name__}, not a state dict (a '
        'mapping of parameter names to tensors, as model.state_dict() '
        'returns)')
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(loaded.get(wrapper), Mapping):
      raise WeightsError(
          f'{path!r} is a training checkpoint, not a state dict: its '
          f'{wrapper!r} entry holds the weights; save '
          f'torch.load(...)[{wrapper!r}] with torch.save and convert that')
  state = {}
  for key, value in loaded.items():
    if not isinstance(value, torch.Tensor):
      raise WeightsError(f'{path!r} is not a state dict: entry {key!r} is a '
                         f'{type(value).__name__}, not a tensor')
    name = '.'.join(p for p in key.split('.') if p not in ('module',
                                                           '_orig_mod'))
    state[name] = value
  return state


def _first_line(e: BaseException) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:160]}' if text else type(e).__name__


def _listed(keys, limit=4):
  keys = sorted(keys)
  more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more


def check_torchvision_alexnet(state_dict) -> int:
  """The class count of a torchvision AlexNet state dict; else a WeightsError
  naming the missing or unexpected keys, or the first mismatched shape."""
  expected = {f'{m}.{p}' for m in TORCHVISION_SHAPES for p in ('weight',
                                                               'bias')}
  missing, unexpected = expected - set(state_dict), set(state_dict) - expected
  if missing or unexpected:
    parts = ([f'missing {_listed(missing)}'] if missing else []) + (
        [f'unexpected {_listed(unexpected)}'] if unexpected else [])
    raise WeightsError(
        f"not torchvision's AlexNet state dict: {'; '.join(parts)} "
        "(torchvision's keys are features.{0,3,6,8,10} and "
        'classifier.{1,4,6}, each .weight and .bias)')
  fc8 = tuple(state_dict['classifier.6.weight'].shape)
  classes = fc8[0] if len(fc8) == 2 and fc8[0] > 0 else 1000
  for module, shapes in TORCHVISION_SHAPES.items():
    for part, shape in zip(('weight', 'bias'), shapes):
      want = tuple(classes if d == 'classes' else d for d in shape)
      got = tuple(state_dict[f'{module}.{part}'].shape)
      if got != want:
        raise WeightsError(
            f"not torchvision's AlexNet state dict: {module}.{part} has shape "
            f"{got}, torchvision's AlexNet has {want}")
  return classes


def params_from_torch(state_dict, layers=None, pool_hw=(6, 6)):
  """Flax params for `models.AlexNet` from a PyTorch AlexNet state dict.

  Args:
    state_dict: name -> tensor or array (torch tensors are converted).
    layers: our layer name -> the PyTorch module prefix; torchvision's default.
    pool_hw: spatial size of the maps fc6 reads (6x6 for 224/227 input).
  """
  layers = layers or TORCHVISION_LAYERS

  def get(key):
    value = state_dict[key]
    if hasattr(value, 'detach'):
      value = value.detach().cpu().float().numpy()  # bf16/fp16 files too.
    return np.asarray(value, np.float32)

  params = {}
  for name, prefix in layers.items():
    w, b = get(prefix + '.weight'), get(prefix + '.bias')
    if name.startswith('conv'):
      kernel = w.transpose(2, 3, 1, 0)
    elif name == 'fc6':
      h, wd = pool_hw
      out, fan_in = w.shape
      kernel = (w.reshape(out, fan_in // (h * wd), h, wd)
                .transpose(2, 3, 1, 0).reshape(fan_in, out))
    else:
      kernel = w.T
    params[name] = {'kernel': kernel, 'bias': b}
  return params
