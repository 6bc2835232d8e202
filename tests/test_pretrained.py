"""torchvision's pretrained AlexNet in JAX: convert, then predict like PyTorch.

torchvision's weights cannot be downloaded here, so its AlexNet is built in
real PyTorch, module for module (`tests/torch_models.py`),
with random weights saved by torch.save exactly as a state dict file is.
`alexnet_jax.convert` and `alexnet_jax.predict` run as users run them; the
photos are scikit-image's, written as JPEG and PNG. PyTorch's side of the
comparison preprocesses them itself, the way torchvision's
ImageClassification preset does (PIL + numpy, below).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import build
from alexnet_jax import convert
from alexnet_jax.runtime import checkpoints
from alexnet_jax.task import finetune
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.model import torch_weights
from alexnet_jax.errors import UserError
from configs import imagenet_torchvision
from tests import cli
from tests.conftest import REPO

torch = pytest.importorskip(
    'torch', reason='PyTorch not installed: pip install -r requirements-parity.txt')
skimage_data = pytest.importorskip('skimage.data')
from tests.torch_models import torchvision_alexnet  # pylint: disable=g-import-not-at-top,wrong-import-position
from alexnet_jax.task import state as state_lib

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


run_tool = cli.run_tool
assert_one_error_line = cli.assert_one_error_line


@pytest.fixture(scope='module')
def torch_model():
  """torchvision's AlexNet with random weights; fc8 scaled up so the softmax
  is far from uniform and the top-5 is a real ranking."""
  torch.manual_seed(0)
  model = torchvision_alexnet(1000).eval()
  with torch.no_grad():
    model.classifier[6].weight.mul_(300.)
  return model


@pytest.fixture(scope='module')
def weights(torch_model, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('torch') / 'alexnet-random.pth')
  torch.save(torch_model.state_dict(), path)
  return path


@pytest.fixture(scope='module')
def converted(weights, tmp_path_factory, subprocess_env):
  workdir = str(tmp_path_factory.mktemp('converted') / 'w')
  result = run_tool('convert', [f'--torch_weights={weights}',
                                f'--workdir={workdir}'], subprocess_env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'converted' in result.stdout and '61,100,840 parameters' in \
      result.stdout
  return workdir


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """Landscape, square, portrait and grey photos, as JPEG and PNG."""
  folder = tmp_path_factory.mktemp('photos')
  images = {
      'astronaut.jpg': skimage_data.astronaut(),  # 512 x 512
      'coffee.png': skimage_data.coffee(),  # 400 x 600
      'chelsea-portrait.jpg': np.rot90(skimage_data.chelsea()),  # 451 x 300
      'camera.png': skimage_data.camera(),  # grey, 512 x 512
      'rocket.jpg': skimage_data.rocket(),  # 427 x 640
  }
  paths = []
  for name, array in images.items():
    path = str(folder / name)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    paths.append(path)
  return paths


def torchvision_preprocess(path):
  """torchvision's ImageClassification(crop_size=224) on a PIL image, step by
  step: Resize([256]) (PIL bilinear; the long side becomes
  int(256 * long / short)), CenterCrop(224) (top = int(round((h - 224) /
  2.0))), pil_to_tensor, convert_image_dtype (/ 255), Normalize."""
  img = Image.open(path).convert('RGB')
  w, h = img.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(256 * long / short)
  img = img.resize((256, new_long) if w <= h else (new_long, 256),
                   Image.BILINEAR)
  w, h = img.size
  top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
  img = img.crop((left, top, left + 224, top + 224))
  x = np.asarray(img, np.float32).transpose(2, 0, 1) / np.float32(255)
  x = (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
  return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.slow
def test_predict_matches_pytorch_on_real_photos(torch_model, converted,
                                                photos, subprocess_env):
  """Logits within 1e-4 relative error: max |ours - PyTorch's| over the 1000
  logits of an image, divided by max |PyTorch's|."""
  result = run_tool('predict', [f'--workdir={converted}', '--json',
                                '--logits'] + photos, subprocess_env)
  assert result.returncode == 0, result.stderr[-2000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r['image'] for r in records] == photos

  with torch.no_grad():
    expected = torch_model(torch.stack(
        [torchvision_preprocess(p) for p in photos])).double().numpy()
  for record, want in zip(records, expected):
    got = np.asarray(record['logits'])
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error <= 1e-4, (record['image'], error)
    top = [t['class'] for t in record['top5']]
    assert top == list(np.argsort(-want)[:5]), record['image']
    probs = np.exp(want - want.max()) / np.exp(want - want.max()).sum()
    np.testing.assert_allclose([t['prob'] for t in record['top5']],
                               probs[top], rtol=1e-4, atol=1e-7)
    names = [t['label'] for t in record['top5']]
    assert all(isinstance(n, str) and n and not n.startswith('class ')
               for n in names)


@pytest.mark.slow
def test_a_run_resumes_from_the_converted_checkpoint(converted, weights):
  """The same config and workdir in train: orbax restores step 0 and the
  converted weights into the state train_and_evaluate builds."""
  config = imagenet_torchvision.get_config()
  mesh = mesh_lib.make_mesh(1)
  model = build.model(config, 1000)
  tx, _ = build.optimizer(config, build.durations(config, 100))
  _, abstract = state_lib.create_train_state(model, tx, (224, 224, 3),
                                         config.seed, mesh)
  ckpt = checkpoints.Checkpointer(converted, config.keep_checkpoints)
  try:
    step, state = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  assert step == 0 and int(state.step) == 0
  want = torch_weights.params_from_torch(
      torch.load(weights, map_location='cpu', weights_only=True))
  for layer, parts in want.items():
    for part, value in parts.items():
      np.testing.assert_array_equal(np.asarray(state.params[layer][part]),
                                    value)
  with open(os.path.join(converted, 'config.json')) as f:
    saved = json.load(f)
  assert (saved['model'], saved['num_classes'], saved['image_size'],
          saved['schedule'], saved['lr_step_epochs']) == (
              'alexnet_torchvision', 1000, 224, 'step', [30, 60])


def test_init_from_converted_weights_into_ten_classes(converted, weights,
                                                      tmp_path):
  """Fine-tuning's start: conv1..fc7 are torchvision's, fc8 the new run's."""
  config = imagenet_torchvision.get_config()
  config.update(init_from=converted)
  model = build.model(config, 10)
  tx, _ = build.optimizer(config, build.durations(config, 10))
  fresh, _ = state_lib.create_train_state(model, tx, (224, 224, 3), config.seed,
                                      mesh_lib.make_mesh(1))
  messages = []
  state = finetune.init_from(config.init_from, config.model,
                             str(tmp_path / 'tuned'), fresh, log=messages.append)
  assert messages == [f'initialized from {converted} (step 0): every layer '
                      'but fc8 loaded; fc8 re-initialized (1000 classes '
                      'there, 10 here); fresh optimizer state, step 0']
  want = torch_weights.params_from_torch(
      torch.load(weights, map_location='cpu', weights_only=True))
  for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
    for part in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(state.params[layer][part]),
                                    want[layer][part])
  assert state.params['fc8']['kernel'].shape == (4096, 10)
  assert not np.asarray(state.params['fc8']['kernel']).any()  # He: fc8 at 0.


# --- convert's bad input -----------------------------------------------------------


def _save(path, obj):
  torch.save(obj, path)
  return str(path)


def _torchvision_like(**shapes):
  """torchvision's keys with zero tensors (stride-0 views: tiny files)."""
  state = {}
  for module, (w, b) in torch_weights.TORCHVISION_SHAPES.items():
    for part, shape in (('weight', w), ('bias', b)):
      shape = tuple(1000 if d == 'classes' else d for d in shape)
      state[f'{module}.{part}'] = torch.zeros(1).expand(
          shapes.get(f'{module}.{part}', shape))
  return state


BAD_WEIGHTS = {
    'missing': (lambda d: str(d / 'none.pth'), 'does not exist'),
    'a photo': (lambda d: _photo(d), 'is not a PyTorch file torch.load can '
                'read'),
    'truncated': (lambda d: _truncated(d), 'is not a PyTorch file torch.load '
                  'can read'),
    'a whole model': (lambda d: _save(d / 'm.pth', torch.nn.Sequential(
        torch.nn.Linear(2, 2))), 'holds Python objects other than tensors'),
    'a list': (lambda d: _save(d / 'l.pth', [torch.zeros(2)]),
               'holds a list, not a state dict'),
    'a training checkpoint': (lambda d: _save(d / 'c.pth', {
        'epoch': 3, 'state_dict': _torchvision_like()}),
                              "is a training checkpoint, not a state dict: "
                              "its 'state_dict' entry"),
    'another network': (lambda d: _save(d / 'r.pth', torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
        torch.nn.Linear(8, 10)).state_dict() | {'fc.weight': torch.zeros(2)}),
                        "not torchvision's AlexNet state dict: missing "
                        'classifier.1.bias, classifier.1.weight, '
                        'classifier.4.bias, classifier.4.weight and 12 more; '
                        'unexpected 0.bias, 0.weight, 2.bias, 2.weight and 1 '
                        'more'),
    'the paper\'s conv1': (lambda d: _save(d / 'p.pth', _torchvision_like(**{
        'features.0.weight': (96, 3, 11, 11)})),
                           "not torchvision's AlexNet state dict: "
                           'features.0.weight has shape (96, 3, 11, 11), '
                           "torchvision's AlexNet has (64, 3, 11, 11)"),
}


def _photo(folder):
  path = str(folder / 'photo.jpg')
  Image.fromarray(skimage_data.astronaut()).save(path)
  return path


def _truncated(folder):
  path = _save(folder / 'full.pth', _torchvision_like())
  with open(path, 'rb') as f:
    data = f.read()
  short = str(folder / 'truncated.pth')
  with open(short, 'wb') as f:
    f.write(data[:len(data) // 2])
  return short


@pytest.mark.parametrize('case', list(BAD_WEIGHTS))
def test_convert_refuses_what_is_not_torchvisions_alexnet(case, tmp_path):
  make, expected = BAD_WEIGHTS[case]
  path = make(tmp_path)
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    convert.convert(path, str(workdir), imagenet_torchvision.get_config(),
                    log=lambda _: None)
  assert expected in str(e.value)
  assert not workdir.exists()


def _listing(folder):
  return sorted((os.path.relpath(os.path.join(root, n), folder),
                 os.path.getsize(os.path.join(root, n)))
                for root, _, names in os.walk(folder) for n in names)


@pytest.mark.parametrize('case', ['a list', 'workdir', 'no torch'])
def test_convert_cli_bad_input_is_one_line(case, converted, weights, tmp_path,
                                           subprocess_env):
  """As users see it: one `error:` line, exit status 2, nothing written."""
  workdir, path = str(tmp_path / 'w'), weights
  prefix = [sys.executable, '-m', 'alexnet_jax.convert']
  expected = {'a list': 'holds a list, not a state dict',
              'workdir': 'already holds checkpoints (latest step 0); convert '
                         'into a new --workdir',
              'no torch': 'reading PyTorch weights needs PyTorch'}[case]
  if case == 'a list':
    path = BAD_WEIGHTS['a list'][0](tmp_path)
  elif case == 'workdir':
    workdir = converted
  elif case == 'no torch':  # As on a machine without PyTorch.
    prefix = [sys.executable, '-c', 'import runpy, sys; '
              "sys.modules['torch'] = None; sys.argv[0] = 'convert'; "
              "runpy.run_module('alexnet_jax.convert', run_name='__main__')"]
  before = _listing(converted)
  result = subprocess.run(
      prefix + [f'--torch_weights={path}', f'--workdir={workdir}'], cwd=REPO,
      env=subprocess_env, capture_output=True, text=True, timeout=300)
  assert_one_error_line(result, expected)
  assert _listing(converted) == before
  if workdir != converted:
    assert not os.path.exists(workdir)
