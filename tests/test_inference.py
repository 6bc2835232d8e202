"""predict, evaluate and init_from on a run trained here; ImageNet's names.

The run: the tiny net, 2 steps on the real CIFAR-10 subset (../shared). The
photos are scikit-image's, written by the tests as JPEG and PNG. Commands
run as users run them (subprocesses); what needs no process of its own
(init_from's parameter surgery) is called in-process.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import build
from alexnet_jax import train
from alexnet_jax.data import registry
from alexnet_jax.model import alexnet
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import finetune
from alexnet_jax.task import saved_run
from alexnet_jax.task import state as state_lib
from configs import cifar10
from tests import cli
from tests.conftest import require_cifar_subset

skimage_data = pytest.importorskip('skimage.data')


run_tool = cli.run_tool
assert_one_error_line = cli.assert_one_error_line


def tiny_cifar_config(**overrides):
  config = cifar10.get_config()
  config.update(model='alexnet_tiny', data_dir=require_cifar_subset(),
                num_steps=2, batch_size=32, schedule='constant',
                warmup_epochs=0., log_every_steps=1, learning_rate=0.05,
                val_fraction=0.)
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A CIFAR-10 workdir: 2 steps of the tiny net, trained in this process."""
  workdir = str(tmp_path_factory.mktemp('cifar_run'))
  train.train_and_evaluate(tiny_cifar_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('photos')
  paths = []
  for name, ext in (('chelsea', 'jpg'), ('coffee', 'png'), ('camera', 'png')):
    path = str(folder / f'{name}.{ext}')
    Image.fromarray(getattr(skimage_data, name)()).save(path)
    paths.append(path)
  return paths


# --- predict -------------------------------------------------------------------


def cifar_input(path):
  """CIFAR-style input written out independently: shorter side to 32 (PIL
  bilinear), central 32x32, 0..1, CIFAR-10's mean and std."""
  img = Image.open(path).convert('RGB')
  w, h = img.size
  size = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
  img = img.resize(size, Image.BILINEAR)
  w, h = img.size
  left, top = int(round((w - 32) / 2.)), int(round((h - 32) / 2.))
  x = np.asarray(img.crop((left, top, left + 32, top + 32)), np.float32) / 255.
  return ((x - np.float32(registry.CIFAR10_MEAN)) /
          np.float32(registry.CIFAR10_STD))


def test_predict_names_cifar_classes_with_the_runs_preprocessing(
    run, photos, subprocess_env):
  result = run_tool('predict', [f'--workdir={run}', '--json', '--logits'] +
                    photos, subprocess_env)
  assert result.returncode == 0, result.stderr[-2000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r['image'] for r in records] == photos

  params = cli.load_state_on_host(run)['params']
  model = alexnet.create_model('alexnet_tiny', num_classes=10)
  x = jnp.asarray(np.stack([cifar_input(p) for p in photos]))
  expected = np.asarray(model.apply({'params': params}, x))
  for record, want in zip(records, expected):
    got = np.asarray(record['logits'])
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    top = record['top5']
    assert [t['class'] for t in top] == list(np.argsort(-want)[:5])
    assert all(t['label'] == registry.CIFAR10_CLASSES[t['class']]
               for t in top)
    probs = [t['prob'] for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    softmax = np.exp(want - want.max()) / np.exp(want - want.max()).sum()
    np.testing.assert_allclose(probs, softmax[[t['class'] for t in top]],
                               rtol=1e-4)

  table = run_tool('predict', [f'--workdir={run}', photos[0]], subprocess_env)
  assert table.returncode == 0, table.stderr[-2000:]
  lines = table.stdout.splitlines()
  assert photos[0] in lines
  ranked = [l for l in lines if l.strip()[:2] in ('1.', '2.', '3.', '4.',
                                                  '5.')]
  assert len(ranked) == 5
  assert registry.CIFAR10_CLASSES[records[0]['top5'][0]['class']] in \
      ranked[0]


def test_imagenet_class_names_ship_in_torchvision_order():
  names = registry.imagenet_classes()
  assert len(names) == 1000 == len(set(names))
  assert (names[0], names[1], names[999]) == ('tench', 'goldfish',
                                              'toilet tissue')
  assert names[817] == 'sports car' and names[281] == 'tabby'


def _truncated_jpeg(folder):
  path = str(folder / 'truncated.jpg')
  buf = Image.fromarray(skimage_data.astronaut())
  buf.save(path, quality=90)
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 3])
  return path


@pytest.mark.parametrize('case, expected', [
    ('text', "cannot read image '{path}': not an image file"),
    ('truncated', "cannot read image '{path}'"),
    ('missing', "image '{path}' does not exist"),
    ('no_checkpoints', 'no checkpoints in'),
    ('no_step', 'no checkpoint step 7 in'),
])
def test_predict_bad_input_is_one_line(run, photos, tmp_path, subprocess_env,
                                       case, expected):
  workdir, image, extra = run, photos[0], []
  if case == 'text':
    image = str(tmp_path / 'notes.jpg')
    with open(image, 'w') as f:
      f.write('not a picture\n')
  elif case == 'truncated':
    image = _truncated_jpeg(tmp_path)
  elif case == 'missing':
    image = str(tmp_path / 'nowhere.png')
  elif case == 'no_checkpoints':
    workdir = str(tmp_path / 'empty')
    os.makedirs(workdir)
    with open(os.path.join(run, 'config.json')) as f:
      config_text = f.read()
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config_text)
  elif case == 'no_step':
    extra = ['--step=7']
  result = run_tool('predict', [f'--workdir={workdir}', image] + extra,
                    subprocess_env)
  assert_one_error_line(result, expected.format(path=image))
  assert not result.stdout.strip()


# --- evaluate --------------------------------------------------------------------


def test_evaluate_reproduces_the_runs_final_test_metrics(run, subprocess_env):
  result = run_tool('evaluate', [f'--workdir={run}', '--json'],
                    subprocess_env)
  assert result.returncode == 0, result.stderr[-2000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  with open(os.path.join(run, 'final_metrics.json')) as f:
    final = json.load(f)
  assert got['step'] == final['step'] == 2
  assert got['examples'] == 1017 and got['dataset'] == 'cifar10'
  for key in ('loss', 'top1', 'top5'):
    assert got[key] == pytest.approx(final['test'][key], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize('args, expected', [
    (['--ten_crop'], '--ten_crop needs an ImageNet-style dataset'),
    (['--config.datset=fake'], "unknown config key 'datset' (did you mean "
     "'dataset'?)"),
    (['--config.dataset=fake'], 'has 10 classes, dataset '),
])
def test_evaluate_bad_input_is_one_line(run, subprocess_env, args, expected):
  extra = ['--config.num_classes=7'] if 'has 10 classes' in expected else []
  result = run_tool('evaluate', [f'--workdir={run}'] + args + extra,
                    subprocess_env)
  assert_one_error_line(result, expected)


# --- init_from -------------------------------------------------------------------


def fresh_state(config, num_classes):
  """The train state train_and_evaluate creates for `config`, before step 1."""
  mesh = mesh_lib.make_mesh(1)
  model = build.model(config, num_classes)
  tx, _ = build.optimizer(config, build.durations(config, 10))
  state, _ = state_lib.create_train_state(model, tx, (32, 32, 3), config.seed,
                                      mesh)
  return state


def test_init_from_loads_every_layer_but_a_new_head(run, tmp_path):
  config = tiny_cifar_config(dataset='fake', num_classes=5, init_from=run,
                             seed=1)
  fresh = fresh_state(config, 5)
  messages = []
  state = finetune.init_from(config.init_from, config.model,
                             str(tmp_path / 'new'), fresh, log=messages.append)
  source = cli.load_state_on_host(run)
  for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
    for part in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(state.params[layer][part]),
                                    source['params'][layer][part])
  for part in ('kernel', 'bias'):  # fc8: the new run's own initialization.
    np.testing.assert_array_equal(np.asarray(state.params['fc8'][part]),
                                  np.asarray(fresh.params['fc8'][part]))
  assert state.params['fc8']['kernel'].shape == (64, 5)
  assert int(state.step) == 0
  assert messages == [f'initialized from {run} (step 2): every layer but fc8 '
                      'loaded; fc8 re-initialized (10 classes there, 5 here); '
                      'fresh optimizer state, step 0']

  # A run with checkpoints of its own resumes from them: init_from is ignored.
  messages.clear()
  again = finetune.init_from(config.init_from, config.model, run, fresh,
                             log=messages.append)
  assert again is fresh
  assert messages == [f'init_from {run} ignored: {run} has checkpoints of its '
                      'own (latest step 2); resuming from them']


@pytest.mark.slow
def test_fine_tuning_run_says_fc8_is_new_and_trains(run, tmp_path,
                                                    subprocess_env):
  workdir = str(tmp_path / 'tuned')
  args = cli.cli_args('', workdir, dataset='fake', fake_image_size=32,
                      num_classes=5, fake_num_train=64, fake_num_test=16,
                      batch_size=16, num_steps=1, num_epochs=1,
                      schedule='constant', init_from=run, val_fraction=0,
                      eval_flip=False)
  result = cli.run_cli(args, subprocess_env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert sum('fc8 re-initialized (10 classes there, 5 here)' in l
             for l in lines) == 1, result.stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['init_from'] == run


@pytest.mark.slow
def test_init_from_another_architecture_is_one_line(run, tmp_path,
                                                    subprocess_env):
  workdir = tmp_path / 'other'
  args = cli.cli_args('', str(workdir), model='alexnet_cifar', dataset='fake',
                      fake_image_size=32, num_classes=10, fake_num_train=64,
                      fake_num_test=16, batch_size=16, num_steps=1,
                      init_from=run)
  result = cli.run_cli(args, subprocess_env, timeout=300)
  assert_one_error_line(
      result, f"init_from '{run}': conv1 kernel is (3, 3, 3, 16) there, "
      '(3, 3, 3, 48) here; only fc8 may differ (the class count), so use '
      'the same model (this run: alexnet_cifar, that run: alexnet_tiny)')
  assert not workdir.exists()
