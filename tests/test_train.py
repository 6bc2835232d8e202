"""The training run end to end on real CIFAR-10 images with the tiny model:
what it writes, exact resume after kill -9, evaluation over every example,
and one-line errors on bad input that leave the workdir untouched."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import sharding
from alexnet_jax import train
from configs import cifar10


def tiny_config(cifar_dir, **overrides):
  c = cifar10.get_config()
  c.model = 'alexnet_tiny'
  c.data_dir = cifar_dir
  c.batch_size = 128
  c.learning_rate = 0.02
  c.num_epochs = 2
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  c.keep_checkpoints = 2
  c.update(overrides)
  return c


def read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_run_writes_metrics_tensorboard_and_checkpoints(cifar_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  final = train.train_and_evaluate(tiny_config(cifar_dir), workdir)

  assert final['step'] == 70  # 4577 train images // 128, times 2 epochs.
  assert 0 <= final['test']['top1'] <= final['test']['top5'] <= 1
  records = read_jsonl(workdir)
  train_records = [r for r in records if r['split'] == 'train']
  assert {'step', 'epoch', 'split', 'loss', 'top1', 'top5', 'lr',
          'images_per_sec'} <= set(train_records[0])
  assert [r['step'] for r in train_records][:3] == [5, 10, 15]
  assert all(np.isfinite(r['loss']) and r['images_per_sec'] > 0
             for r in train_records)
  assert [r['step'] for r in records if r['split'] == 'val'] == [35, 70]
  assert [r['split'] for r in records].count('test') == 1
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints')))
  # Latest 2 (60, 70) plus the best by val top-1 (35 or 70).
  assert steps[-2:] == [60, 70] and len(steps) <= 3
  assert final['best_val_step'] in (35, 70)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert json.load(f)['test'] == final['test']


def test_training_learns_real_images(cifar_dir, tmp_path):
  """A few epochs of the tiny net beat chance (10%) clearly on val and test."""
  final = train.train_and_evaluate(
      tiny_config(cifar_dir, num_epochs=6, learning_rate=0.05,
                  dropout_rate=0.1, checkpoint_every_steps=0),
      str(tmp_path / 'w'))
  assert final['val']['top1'] > 0.3
  assert final['test']['top1'] > 0.3


def run_cli(args, env, **kwargs):
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/cifar10.py']
      + args, cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
      capture_output=True, text=True, **kwargs)


def cli_args(cifar_dir, workdir, **overrides):
  base = dict(model='alexnet_tiny', data_dir=cifar_dir, num_epochs=3,
              batch_size=128,
              log_every_steps=5, checkpoint_every_steps=10,
              schedule='plateau', plateau_patience=1, learning_rate=0.02)
  base.update(overrides)
  return [f'--workdir={workdir}'] + [f'--config.{k}={v}'
                                     for k, v in base.items()]


def test_kill_9_then_rerun_resumes_to_identical_final_metrics(
    cifar_dir, tmp_path, subprocess_env):
  # Uninterrupted reference run.
  ref = str(tmp_path / 'ref')
  done = run_cli(cli_args(cifar_dir, ref), subprocess_env, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]

  # Same command, killed with SIGKILL once it is past a checkpoint mid-epoch.
  work = str(tmp_path / 'killed')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/cifar10.py']
      + cli_args(cifar_dir, work), cwd=os.path.dirname(os.path.dirname(
          __file__)), env=subprocess_env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(os.path.join(work, 'checkpoints', '50')):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(work, 'final_metrics.json'))

  resumed = run_cli(cli_args(cifar_dir, work), subprocess_env, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming from' in resumed.stdout
  with open(os.path.join(ref, 'final_metrics.json')) as f:
    want = json.load(f)
  with open(os.path.join(work, 'final_metrics.json')) as f:
    got = json.load(f)
  assert got == want
  # The log has no duplicated or torn records after the resume, and the same
  # values (speed aside) as the uninterrupted run's.
  def comparable(records):
    return [{k: v for k, v in r.items() if k != 'images_per_sec'}
            for r in records]
  assert comparable(read_jsonl(work)) == comparable(read_jsonl(ref))


@pytest.mark.parametrize('eval_flip', [False, True])
def test_eval_scores_every_example_exactly_once(cifar_dir, eval_flip):
  """1,017 test images in batches of 500: padded and masked, none dropped."""
  cfg = tiny_config(cifar_dir, eval_batch_size=500, eval_flip=eval_flip)
  _, test = input_pipeline.load_cifar10_archive(cifar_dir)
  model = models.AlexNetTiny(num_classes=10, init_scheme='paper')
  params = model.init(jax.random.PRNGKey(0),
                      jnp.zeros((1, 32, 32, 3)))['params']
  mesh = sharding.make_mesh()
  eval_fn = train.make_eval_fn(cfg, model, 10, input_pipeline.CIFAR10_MEAN,
                               input_pipeline.CIFAR10_STD, mesh)
  metrics, _ = train.evaluate(eval_fn, params, (jnp.asarray(test.images),
                                                jnp.asarray(test.labels)))
  x = input_pipeline.normalize(jnp.asarray(test.images),
                               input_pipeline.CIFAR10_MEAN,
                               input_pipeline.CIFAR10_STD)
  probs = jax.nn.softmax(model.apply({'params': params}, x))
  if eval_flip:
    probs = (probs + jax.nn.softmax(
        model.apply({'params': params}, x[:, :, ::-1]))) / 2
  labels = jnp.asarray(test.labels)
  want_top1 = float((probs.argmax(-1) == labels).mean())
  want_loss = float(-jnp.log(probs[jnp.arange(len(labels)), labels]).mean())
  assert metrics['top1'] == pytest.approx(want_top1, abs=1e-7)
  assert metrics['loss'] == pytest.approx(want_loss, rel=1e-5)


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A workdir holding checkpoints, to check that bad input leaves it alone."""
  from tests.conftest import CIFAR_SUBSET
  if not (CIFAR_SUBSET / 'test_batch').is_file():
    pytest.skip(f'real CIFAR-10 subset not found at {CIFAR_SUBSET}')
  workdir = str(tmp_path_factory.mktemp('trained') / 'w')
  train.train_and_evaluate(
      tiny_config(str(CIFAR_SUBSET), num_epochs=0, num_steps=10), workdir)
  return workdir


def snapshot(folder):
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def make_bad_archive(tmp_path, kind):
  path = tmp_path / kind
  path.mkdir()
  if kind == 'truncated':
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
      with open(path / name, 'wb') as f:
        pickle.dump({'data': rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                     'labels': [1] * 20}, f)
    data = (path / 'data_batch_2').read_bytes()
    (path / 'data_batch_2').write_bytes(data[:len(data) // 3])
  return str(path)


@pytest.mark.parametrize('override, expected', [
    ({'model': 'vgg16'}, "unknown model 'vgg16'; valid: alexnet_paper"),
    ({'dataset': 'mnist'}, "unknown dataset 'mnist'; valid: cifar10, fake"),
    ({'data_dir': '/no/such/dir'}, "data_dir '/no/such/dir' does not exist"),
    ({'data_dir': 'EMPTY'}, 'is not a CIFAR-10 archive: missing data_batch_1'),
    ({'data_dir': 'TRUNCATED'}, 'data_batch_2 is truncated or corrupt'),
    ({'batch_size': 0}, 'batch_size 0 must be a positive integer'),
    ({'batch_size': -8}, 'batch_size -8 must be a positive integer'),
    ({'modle': 'x'}, "unknown config key 'modle' (did you mean 'model'?)"),
    ({'schedule': 'linear'}, "unknown schedule 'linear'; valid: plateau"),
])
def test_bad_input_is_one_line_nonzero_and_leaves_workdir_alone(
    trained_workdir, tmp_path, subprocess_env, cifar_dir, override, expected):
  override = dict(override)
  if override.get('data_dir') == 'EMPTY':
    override['data_dir'] = make_bad_archive(tmp_path, 'empty')
  if override.get('data_dir') == 'TRUNCATED':
    override['data_dir'] = make_bad_archive(tmp_path, 'truncated')
  before = snapshot(trained_workdir)
  args = cli_args(cifar_dir, trained_workdir, **override)
  result = run_cli(args, subprocess_env, timeout=300)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert snapshot(trained_workdir) == before


def test_batch_not_divisible_by_device_count(trained_workdir, subprocess_env,
                                             cifar_dir):
  env = dict(subprocess_env)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  before = snapshot(trained_workdir)
  result = run_cli(cli_args(cifar_dir, trained_workdir, batch_size=127), env,
                   timeout=300)
  assert result.returncode == 2
  assert ('error: batch_size 127 is not divisible by the device count 2'
          in result.stderr), result.stderr[-2000:]
  assert snapshot(trained_workdir) == before


def test_non_finite_loss_stops_without_saving(cifar_dir, tmp_path,
                                              subprocess_env):
  workdir = str(tmp_path / 'w')
  result = run_cli(cli_args(cifar_dir, workdir, learning_rate=1e8,
                            schedule='constant'), subprocess_env, timeout=300)
  assert result.returncode == 2
  assert 'non-finite training loss' in result.stderr
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  assert not os.path.exists(ckpt_dir) or not os.listdir(ckpt_dir)
