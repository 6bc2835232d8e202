"""visualize: conv1's kernels, nearest neighbours by fc7 features, and the
confusion matrix, checked against independent computations.

The run: the tiny net, 4 steps on the real CIFAR-10 subset (../shared),
trained in this process. The paper's and torchvision's kernel layouts come
from the real models' conv1 shapes (`jax.eval_shape`, nothing allocated)
filled with numbers. Each subcommand runs once as users run it (a
subprocess); the rest is called in-process.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import build
from alexnet_jax import train
from alexnet_jax import visualize
from alexnet_jax.data import registry
from alexnet_jax.model import alexnet
from alexnet_jax.task import saved_run
from alexnet_jax.visualize import __main__ as visualize_cli
from alexnet_jax.visualize import inspection
from alexnet_jax.visualize import pictures
from configs import cifar10
from tests import cli
from tests.conftest import REPO
from tests.conftest import require_cifar_subset


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A CIFAR-10 workdir: 4 steps of the tiny net, trained in this process."""
  workdir = str(tmp_path_factory.mktemp('vis_run'))
  config = cifar10.get_config()
  config.update(model='alexnet_tiny', data_dir=require_cifar_subset(),
                num_steps=4, batch_size=32, schedule='constant',
                warmup_epochs=0., log_every_steps=2, learning_rate=0.05,
                val_fraction=0.)
  train.train_and_evaluate(config, workdir)
  return workdir


def start_visualize(args) -> subprocess.Popen:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  return subprocess.Popen([sys.executable, '-m', 'alexnet_jax.visualize'] +
                          args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen):
  """(returncode, stdout, stderr) of a started command."""
  stdout, stderr = process.communicate(timeout=300)
  return process.returncode, stdout, stderr


# --- Filters ------------------------------------------------------------------


def conv1_params(name: str, seed: int = 0):
  """{'conv1': {'kernel'}} of model `name`: its real shape, random numbers."""
  model = alexnet.create_model(name, num_classes=10)
  side = alexnet.NATIVE_INPUT_SIZE[name]
  shape = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, side, side, 3))))['params']['conv1'][
          'kernel'].shape
  kernel = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  return model, {'conv1': {'kernel': kernel}}


@pytest.mark.parametrize('name, k, blocks, per_block, rows', [
    ('alexnet_paper', 11, 2, 48, 3),
    ('alexnet_torchvision', 11, 1, 64, 4),
    ('alexnet_cifar', 3, 1, 48, 3),
])
def test_filter_grids_have_the_models_layout(name, k, blocks, per_block,
                                             rows):
  model, params = conv1_params(name)
  towers = inspection.conv1_towers(params, model.groups)
  assert len(towers) == blocks
  kernel = params['conv1']['kernel']
  for t, tower in enumerate(towers):
    assert tower.kernels.shape == (k, k, 3, per_block)
    np.testing.assert_array_equal(
        tower.kernels, kernel[..., t * per_block:(t + 1) * per_block])
    cell = k * pictures.cell_scale(k)
    assert cell == 33  # 11x11 kernels x3, 3x3 kernels x11 (nearest).
    grid = pictures.kernel_grid(tower.kernels)
    step = cell + pictures.GAP
    assert grid.shape == (pictures.GAP + rows * step,
                          pictures.GAP + 16 * step, 3)
  if blocks == 2:
    assert towers[0].title.startswith('tower 1 (GPU 1)')
    assert towers[1].title.startswith('tower 2 (GPU 2)')


def test_a_kernel_set_to_a_pattern_shows_in_its_cell():
  model, params = conv1_params('alexnet_paper')
  y, x = np.mgrid[:11, :11]
  pattern = np.stack([(x + y) % 2, np.full((11, 11), 0.25), x / 10.], -1)
  # Kernel 53 is tower 2's sixth; scaled by 3 and shifted by -7, which the
  # per-kernel normalisation undoes.
  params['conv1']['kernel'][..., 53] = 3 * pattern - 7
  tower = inspection.conv1_towers(params, model.groups)[1]
  grid = pictures.kernel_grid(tower.kernels)
  top, left = pictures.cell_origin(5, 11)
  assert (top, left) == (2, 2 + 5 * 35)
  expected = np.kron(pattern, np.ones((3, 3, 1)))
  np.testing.assert_allclose(grid[top:top + 33, left:left + 33], expected,
                             atol=1e-6)
  gap = pictures.BACKGROUND
  assert (grid[top:top + 33, left - 2:left] == gap).all()
  assert (grid[top - 2:top, left:left + 33] == gap).all()


def test_chroma_is_zero_for_grey_kernels_and_one_for_colour_opposition():
  rng = np.random.default_rng(0)
  grey = np.repeat(rng.normal(size=(11, 11, 1, 4)), 3, axis=2)
  opposed = rng.normal(size=(11, 11, 1, 4)) * np.array([1., -1., 0.])[
      None, None, :, None]
  noise = rng.normal(size=(11, 11, 3, 2000))
  np.testing.assert_allclose(inspection.chroma(grey), 0., atol=1e-12)
  np.testing.assert_allclose(inspection.chroma(opposed), 1., atol=1e-12)
  assert abs(inspection.chroma(noise).mean() - 2 / 3) < 0.01


# --- Neighbours and errors, in-process ----------------------------------------


def independent_features(model, params, images):
  """fc7 after ReLU, by hand: CIFAR's standardization at 32x32, the model
  applied with mutable intermediates."""
  x = ((images.astype(np.float32) / 255. - np.float32(registry.CIFAR10_MEAN))
       / np.float32(registry.CIFAR10_STD))
  _, state = jax.jit(lambda p, x: model.apply(
      {'params': p}, x, mutable=['intermediates']))(params, x)
  return np.asarray(state['intermediates']['penultimate'][0], np.float64)


@pytest.fixture(scope='module')
def features(run):
  config = saved_run.load_config(run)
  _, model, variables = saved_run.load_model(config, run)
  params = variables['params']
  data = build.host_data(config, build.dataset(config))
  return (data, independent_features(model, params, data.train.images),
          independent_features(model, params, data.test.images))


def test_neighbours_match_brute_force_numpy(run, features, tmp_path):
  data, train_f, test_f = features
  out = tmp_path / 'nb.png'
  png, json_path, nb = visualize.neighbours(run, count=5, k=4, out=out,
                                            log=lambda _: None)
  assert png == str(out) and json_path == str(tmp_path / 'nb.json')
  assert nb.searched == len(data.train) == 5085
  queries = inspection.sample_indices(len(data.test), 5)
  np.testing.assert_array_equal(nb.queries, queries)
  d = np.linalg.norm(test_f[queries][:, None] - train_f[None], axis=-1)
  want = np.argsort(d, axis=1, kind='stable')[:, :4]
  np.testing.assert_array_equal(nb.indices, want)
  np.testing.assert_allclose(nb.distances, np.take_along_axis(d, want, 1),
                             rtol=1e-5)
  np.testing.assert_array_equal(nb.labels, data.train.labels[want])
  np.testing.assert_array_equal(nb.images, data.train.images[want])
  record = json.loads(open(json_path).read())
  assert [q['index'] for q in record['queries']] == list(queries)
  got = [[n['index'] for n in q['neighbours']] for q in record['queries']]
  assert got == want.tolist()
  np.testing.assert_allclose(
      [[n['distance'] for n in q['neighbours']] for q in record['queries']],
      nb.distances, rtol=1e-12)
  assert record['queries'][0]['class'] == registry.CIFAR10_CLASSES[
      data.test.labels[queries[0]]]


def test_confusion_trace_is_the_evaluations_top1_count(run, tmp_path):
  config = saved_run.load_config(run)
  _, model, variables = saved_run.load_model(config, run)
  params = variables['params']
  test = build.host_data(config, build.dataset(config)).test
  metrics = cli.evaluate_arrays(config, model, params, test.images,
                                test.labels)
  path, p, confusion, accuracy, names = visualize.errors(
      run, mistakes=5, out=tmp_path / 'e.png')
  assert os.path.getsize(path) > 0 and names == registry.CIFAR10_CLASSES
  assert confusion.sum() == len(test) == 1017
  assert np.trace(confusion) == round(metrics['top1'] * len(test))
  np.testing.assert_array_equal(confusion.sum(axis=1),
                                np.bincount(test.labels, minlength=10))
  np.testing.assert_allclose(accuracy, np.diag(confusion) /
                             confusion.sum(axis=1))
  worst = inspection.confident_mistakes(p, 5)
  assert (p.predicted[worst] != p.labels[worst]).all()
  assert list(p.confidence[worst]) == sorted(p.confidence[worst],
                                             reverse=True)


# --- The command, as users run it ---------------------------------------------


def test_each_subcommand_writes_its_picture_and_prints_its_path(run):
  started = [start_visualize(args) for args in (
      ['filters', run],
      ['neighbours', run, '--count=3', '--k=2', '--sample=600'],
      ['errors', run])]  # At once: each mostly waits for its imports.
  (rc, out, err), (rc_n, out_n, err_n), (rc_e, out_e, err_e) = (
      finish(p) for p in started)
  assert rc == 0, err[-2000:]
  lines = out.splitlines()
  assert lines[-1] == os.path.join(run, 'filters.png')
  assert lines[0].startswith('conv1: mean chroma ')
  assert rc_n == 0, err_n[-2000:]
  lines = out_n.splitlines()
  assert lines[-2:] == [os.path.join(run, 'neighbours_test.png'),
                        os.path.join(run, 'neighbours_test.json')]
  assert any(l.startswith('600 training images in 2 batches of 500, about ')
             and l.endswith(")") for l in lines), lines
  assert rc_e == 0, err_e[-2000:]
  lines = out_e.splitlines()
  assert lines[0].startswith('top-1 ') and '/1017 = ' in lines[0]
  assert lines[-1] == os.path.join(run, 'errors_test.png')
  for name in ('filters.png', 'neighbours_test.png', 'errors_test.png'):
    with open(os.path.join(run, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('args, expected', [
    (['neighbours', '{run}', '--split=train'],
     "error: argument --split: invalid choice: 'train' (choose from 'test', "
     "'val')"),
    (['errors', '{run}', '--split=val'],
     "error: split 'val' is empty: this run held out no validation images "
     '(val_fraction 0.0, val_examples 0); use --split=test'),
])
def test_bad_input_is_one_line_and_writes_nothing(run, args, expected):
  before = cli.snapshot(run)
  rc, out, err = finish(start_visualize([a.format(run=run) for a in args]))
  assert rc == 2, err[-2000:]
  assert cli.error_lines(err) == [expected], err[-2000:]
  assert 'Traceback' not in err and not out
  assert cli.snapshot(run) == before


# --- An image dataset, streamed -----------------------------------------------

PHOTOS = {'train': {'a': ('astronaut', 'chelsea', 'coffee', 'rocket', 'coins'),
                    'b': ('hubble_deep_field', 'immunohistochemistry',
                          'retina', 'colorwheel', 'camera', 'moon')},
          'val': {'a': ('cat',), 'b': ('brick', 'grass')}}


@pytest.fixture(scope='module')
def streamed_run(run, tmp_path_factory):
  """The CIFAR run's network pointed at an image folder of scikit-image's
  photos (stored at 40x40, centre-cropped to 32), as converted torchvision
  weights are pointed at ImageNet: its config.json says so."""
  skimage_data = pytest.importorskip('skimage.data')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('photos')
  for split, classes in PHOTOS.items():
    for label, names in classes.items():
      os.makedirs(root / split / label)
      for name in names:
        Image.fromarray(getattr(skimage_data, name)()).convert('RGB').save(
            root / split / label / f'{name}.png')
  workdir = tmp_path_factory.mktemp('streamed_run') / 'run'
  shutil.copytree(run, workdir)
  with open(workdir / 'config.json') as f:
    config = json.load(f)
  config.update(dataset='image_folder', data_dir=str(root), resize_size=40,
                crop_padding=0, data_workers=0, eval_batch_size=4)
  with open(workdir / 'config.json', 'w') as f:
    json.dump(config, f)
  return str(workdir), str(root)


@pytest.mark.slow
def test_streamed_neighbours_and_errors_match_independent_ones(streamed_run,
                                                                tmp_path):
  from alexnet_jax.data import streaming  # pylint: disable=g-import-not-at-top
  workdir, root = streamed_run
  config = saved_run.load_config(workdir)
  _, model, variables = saved_run.load_model(config, workdir)
  params = variables['params']

  def model_input(folder):
    """The stored 40x40 squares centre-cropped to 32 by hand, standardized
    with ImageNet's statistics."""
    source = streaming.ImageFolderSource.scan(folder, ('a', 'b'))
    stored = streaming.EvalExample(source, 40)
    squares = np.stack([stored(i)[0]
                        for i in range(len(source))])[:, 4:36, 4:36]
    return ((squares / 255. - np.float32(registry.IMAGENET_MEAN)) /
            np.float32(registry.IMAGENET_STD)).astype(np.float32)

  def features(x):
    _, state = model.apply({'params': params}, x, mutable=['intermediates'])
    return np.asarray(state['intermediates']['penultimate'][0], np.float64)

  train_x, test_x = (model_input(os.path.join(root, s))
                     for s in ('train', 'val'))
  train_f, test_f = features(train_x), features(test_x)
  d = np.linalg.norm(test_f[:, None] - train_f[None], axis=-1)
  # --sample: a fixed random 7 of the 11 training images, streamed in
  # batches of 4 (the last padded).
  _, _, nb = visualize.neighbours(workdir, count=3, k=2, sample=7,
                                  out=tmp_path / 'nb.png', log=lambda _: None)
  subset = inspection.sample_indices(11, 7)
  want = subset[np.argsort(d[:, subset], axis=1, kind='stable')[:, :2]]
  np.testing.assert_array_equal(nb.indices, want)
  np.testing.assert_allclose(nb.distances, np.take_along_axis(d, want, 1),
                             rtol=1e-5)
  assert nb.searched == 7 and nb.images.shape == (3, 2, 40, 40, 3)

  # The run evaluates each image and its mirror, averaging the softmax.
  probs = sum(jax.nn.softmax(model.apply({'params': params}, x))
              for x in (test_x, test_x[:, :, ::-1]))
  _, p, confusion, _, _ = visualize.errors(workdir, out=tmp_path / 'e.png')
  np.testing.assert_array_equal(p.predicted, np.argmax(probs, axis=1))
  assert confusion.sum() == 3


@pytest.mark.parametrize('command', ['filters', 'neighbours', 'errors'])
def test_an_out_in_a_missing_folder_is_refused_before_any_work(
    run, tmp_path, monkeypatch, command):
  """The refusal comes before the checkpoint is read (the first work each
  command does: minutes for a large net), and nothing is written."""
  from alexnet_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import checkpoints  # pylint: disable=g-import-not-at-top
  reads = []
  read = checkpoints.load_variables_on_host
  monkeypatch.setattr(checkpoints, 'load_variables_on_host',
                      lambda *a, **k: reads.append(a) or read(*a, **k))
  before = cli.snapshot(run)
  out = tmp_path / 'missing' / 'f.png'
  with pytest.raises(UserError, match=f'--out {out}: folder '
                     f'{out.parent} does not exist'):
    getattr(visualize, command)(run, out=out)
  assert reads == []
  assert not out.parent.exists()
  assert cli.snapshot(run) == before
  # The hook sees a read when there is one (the check above can fail).
  visualize.filters(run, out=tmp_path / 'f.png')
  assert len(reads) == 1


@pytest.mark.parametrize('argv', [['--help'], ['neighbours', '--help']])
def test_help_exits_zero(argv, capsys):
  with pytest.raises(SystemExit) as stop:
    visualize_cli.main(argv)
  assert stop.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: python -m alexnet_jax.visualize')
  assert ('filters|neighbours|errors' in out if argv == ['--help'] else
          '--sample M' in out)


def test_pictures_are_titled_by_the_run_not_by_a_path(run, tmp_path,
                                                      monkeypatch):
  """Model, dataset and step in the title; the machine's path nowhere."""
  titles = []
  for name in ('filters_png', 'errors_png'):
    draw = getattr(pictures, name)
    monkeypatch.setattr(pictures, name, lambda *a, draw=draw: (
        titles.append(a[-1]), draw(*a))[1])
  visualize.filters(run, out=tmp_path / 'f.png')
  visualize.errors(run, mistakes=2, out=tmp_path / 'e.png')
  assert len(titles) == 2
  for title in titles:
    assert title.startswith('alexnet_tiny on cifar10, step 4: '), title
    assert run not in title and str(tmp_path) not in title
