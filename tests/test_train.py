"""The training run end to end on real CIFAR-10 images with the tiny model:
what it writes (and what a rerun of a finished run does not), the best-val
checkpoint, evaluation over every example, and the table of bad input that
must end in one line and leave the workdir untouched. Faults (signals,
kill -9, damaged checkpoints, full disks) are in test_faults.py."""

import json
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.data import augment
from alexnet_jax.data import cifar
from alexnet_jax.data import registry
from alexnet_jax.model import alexnet
from alexnet_jax import build
from alexnet_jax import train
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import reporting
from alexnet_jax.task import optim
from alexnet_jax.task import state as state_lib
from alexnet_jax.errors import UserError
from tests import cli
from tests.cli import read_jsonl
from tests.cli import tiny_config
from tests.conftest import require_cifar_subset
from tests.helpers import simulated_devices_env


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
  assert os.path.getsize(os.path.join(workdir, 'curves.png')) > 10_000


@pytest.mark.slow
def test_relative_workdir_as_the_readme_writes_it_saves_and_resumes(
    cifar_dir, tmp_path, subprocess_env):
  """`--workdir=workdirs/cifar10`, relative to where the command runs: orbax
  needs absolute paths, so the checkpoints must still be written (and found
  again by the rerun) under that directory."""
  config = os.path.join(cli.REPO, 'configs', 'cifar10.py')
  first = cli.run_cli(cli.cli_args(cifar_dir, 'workdirs/run', config=config,
                                   num_epochs=1), subprocess_env, cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-2000:]
  workdir = tmp_path / 'workdirs' / 'run'
  assert sorted(int(s) for s in os.listdir(workdir / 'checkpoints'))[-1] == 35
  again = cli.run_cli(cli.cli_args(cifar_dir, 'workdirs/run', config=config,
                                   num_epochs=2), subprocess_env, cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming from' in again.stdout and 'at step 35' in again.stdout
  assert read_jsonl(str(workdir))[-1]['step'] == 70


@pytest.mark.slow
def test_training_learns_real_images(cifar_dir, tmp_path):
  """A few epochs of the tiny net beat chance (10%) clearly on val and test."""
  final = train.train_and_evaluate(
      tiny_config(cifar_dir, num_epochs=6, learning_rate=0.05,
                  dropout_rate=0.1, checkpoint_every_steps=0),
      str(tmp_path / 'w'))
  assert final['val']['top1'] > 0.3
  assert final['test']['top1'] > 0.3


@pytest.mark.parametrize('eval_flip, eval_batch_size', [
    (False, 500), (True, 500), (True, 250)])
def test_eval_scores_every_example_exactly_once(cifar_dir, eval_flip,
                                                eval_batch_size):
  """1,017 test images in 3 batches of 339, or 5 of 204 (3 padded and
  masked): none dropped, none counted twice."""
  cfg = tiny_config(cifar_dir, eval_batch_size=eval_batch_size,
                    eval_flip=eval_flip)
  _, test = cifar.load_cifar10_archive(cifar_dir)
  model = alexnet.AlexNetTiny(num_classes=10, init_scheme='paper')
  params = model.init(jax.random.PRNGKey(0),
                      jnp.zeros((1, 32, 32, 3)))['params']
  metrics = cli.evaluate_arrays(cfg, model, params, test.images,
                                test.labels)
  x = augment.normalize(jnp.asarray(test.images),
                               registry.CIFAR10_MEAN,
                               registry.CIFAR10_STD)
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
  cifar = require_cifar_subset()
  workdir = str(tmp_path_factory.mktemp('trained') / 'w')
  train.train_and_evaluate(tiny_config(cifar, num_epochs=0, num_steps=10),
                           workdir)
  return workdir


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



def make_hostile_archive(tmp_path, marker):
  """A CIFAR folder whose data_batch_1 would create `marker` when unpickled."""
  path = tmp_path / 'hostile'
  path.mkdir()

  class Exploit:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    with open(path / name, 'wb') as f:
      pickle.dump({'data': Exploit(), 'labels': [1]}, f)
  return str(path)


def make_garbled_archive(tmp_path):
  path = tmp_path / 'garbled'
  path.mkdir()
  rng = np.random.default_rng(1)
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    (path / name).write_bytes(rng.integers(0, 256, 5000,
                                           dtype=np.uint8).tobytes())
  return str(path)


# (overrides of cli.cli_args, or special arguments; what the one line says)
BAD_INPUT = [
    ({'model': 'vgg16'}, "unknown model 'vgg16'; valid: alexnet_paper, "
     'alexnet_paper_one_tower, alexnet_bn, alexnet_torchvision, alexnet_cifar, '
     'alexnet_cifar_bn, alexnet_tiny'),
    ({'dataset': 'mnist'}, "unknown dataset 'mnist'; valid: cifar10, fake, "
     'image_folder, imagenet2012, imagenette'),
    ({'schedule': 'linear'}, "unknown schedule 'linear'; valid: plateau, "
     'step, cosine, poly, constant'),
    ({'init': 'xavier'}, "unknown init 'xavier'; valid: paper, caffe, he"),
    ({'modle': 'x'}, "unknown config key 'modle' (did you mean 'model'?)"),
    ({'batch_size': 'abc'}, "--config.batch_size=abc: invalid literal for "
     'int()'),
    ({'learning_rate': 'fast'}, '--config.learning_rate=fast'),
    ({'batch_size': 0}, 'batch_size 0 must be a positive integer'),
    ({'batch_size': -8}, 'batch_size -8 must be a positive integer'),
    ({'batch_size': 127, 'devices': 2},
     'batch_size 127 is not divisible by the device count 2'),
    ({'eval_batch_size': 0}, 'eval_batch_size 0 must be a positive integer'),
    ({'log_every_steps': 0}, 'log_every_steps 0 must be a positive integer'),
    ({'checkpoint_every_steps': -5},
     'checkpoint_every_steps -5 must be an integer >= 0'),
    ({'keep_checkpoints': 0}, 'keep_checkpoints 0 must be a positive integer'),
    ({'num_epochs': 0}, 'num_epochs 0.0 must be positive (or set num_steps'),
    ({'num_epochs': -2, 'num_steps': -1}, 'num_epochs -2.0 must be positive'),
    ({'learning_rate': 0}, 'learning_rate 0.0 must be a positive finite'),
    ({'learning_rate': -0.1}, 'learning_rate -0.1 must be a positive finite'),
    ({'learning_rate': 'nan'}, 'learning_rate nan must be a positive finite'),
    ({'learning_rate': 'inf'}, 'learning_rate inf must be a positive finite'),
    ({'model_parallelism': 3},
     'model_parallelism 3 must be a positive divisor of the device count 1'),
    ({'data_dir': '/no/such/dir'}, "data_dir '/no/such/dir' does not exist"),
    ({'data_dir': 'EMPTY'}, 'is not a CIFAR-10 archive: missing data_batch_1'),
    ({'data_dir': 'A_FILE'}, 'is not a CIFAR-10 archive: expected '
     'cifar-10-python.tar.gz'),
    ({'data_dir': 'TRUNCATED'}, 'data_batch_2 is truncated or corrupt'),
    ({'data_dir': 'GARBLED'}, 'data_batch_1 is truncated or corrupt'),
    ({'data_dir': 'HOSTILE'}, 'data_batch_1 asks to load the Python object '
     'posix.system, which CIFAR-10 files never contain'),
    ({'config': 'configs/no_such.py'}, 'cannot load --config: [Errno 2] No '
     "such file or directory: 'configs/no_such.py'"),
    ({'config': 'NO_GET_CONFIG'}, 'defines no get_config()'),
    ({'runs': 2, 'memory_limit_gib': 0.001}, 'a stack of 2 runs needs about'),
    ({'model': 'alexnet_cifar'}, 'was saved by a different model or config '
     '(params/conv1/bias is (16,) float32 there, (48,) float32 here)'),
]


def _special_values(override, tmp_path, marker):
  """The table's placeholders as real files: broken archives, a pickle that
  would run code, a file where a folder belongs, a config without
  get_config."""
  special = {
      'EMPTY': lambda: make_bad_archive(tmp_path, 'empty'),
      'TRUNCATED': lambda: make_bad_archive(tmp_path, 'truncated'),
      'GARBLED': lambda: make_garbled_archive(tmp_path),
      'HOSTILE': lambda: make_hostile_archive(tmp_path, marker),
      'A_FILE': lambda: str(cli.REPO / 'README.md'),
      'NO_GET_CONFIG': lambda: str(cli.REPO / 'configs' / '__init__.py'),
  }
  return {key: special[value]() if value in special else value
          for key, value in override.items()}


def _cli_only(override) -> bool:
  """What only a real command line can show: flag parsing, config files,
  the device count."""
  return bool({'modle', 'config', 'devices'} & set(override)) or (
      override.get('batch_size') == 'abc' or
      override.get('learning_rate') == 'fast')


CONFIG_CASES = [c for c in BAD_INPUT if not _cli_only(c[0])]
CLI_CASES = ([c for c in BAD_INPUT if _cli_only(c[0])] +
             [pytest.param(*c, marks=pytest.mark.slow) for c in CONFIG_CASES])


@pytest.mark.parametrize('override, expected', CONFIG_CASES,
                         ids=[e[:40] for _, e in CONFIG_CASES])
def test_bad_input_is_one_user_error_and_leaves_workdir_alone(
    trained_workdir, tmp_path, cifar_dir, override, expected):
  """The table's config-level cases in this process: the UserError that
  `main` turns into the one `error:` line, the workdir untouched. The full
  tier runs them as commands too (below)."""
  marker = tmp_path / 'pwned'
  override = _special_values(dict(override), tmp_path, marker)
  config = tiny_config(cifar_dir, num_epochs=3, log_every_steps=5,
                       checkpoint_every_steps=10, schedule='plateau',
                       plateau_patience=1)
  for key, value in override.items():
    config[key] = type(config[key])(value) if isinstance(
        config[key], float) and isinstance(value, str) else value
  before = cli.snapshot(trained_workdir)
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(config, trained_workdir)
  assert expected in ' '.join(str(error.value).split())
  assert cli.snapshot(trained_workdir) == before
  assert not marker.exists()


@pytest.mark.parametrize('override, expected', CLI_CASES,
                         ids=[(c.values if hasattr(c, 'values') else c)[1][:40]
                              for c in CLI_CASES])
def test_bad_input_on_the_command_line(
    trained_workdir, tmp_path, subprocess_env, cifar_dir, override, expected):
  """The table as a user meets it: one `error:` line, exit 2, no traceback,
  the workdir untouched. The command-line cases in the fast tier, the rest
  (done in-process above) in the full one."""
  override = dict(override)
  env = simulated_devices_env(subprocess_env, override.pop('devices', 1))
  marker = tmp_path / 'pwned'
  override = _special_values(override, tmp_path, marker)
  before = cli.snapshot(trained_workdir)
  result = cli.run_cli(cli.cli_args(cifar_dir, trained_workdir, **override),
                       env, timeout=300)
  cli.assert_one_error_line(result, expected)
  assert cli.snapshot(trained_workdir) == before
  assert not marker.exists()


def test_verbose_shows_the_traceback(trained_workdir, subprocess_env,
                                     cifar_dir):
  result = cli.run_cli(cli.cli_args(cifar_dir, trained_workdir,
                                    learning_rate=0) + ['--verbose'],
                       subprocess_env, timeout=300)
  assert result.returncode == 2
  assert 'Traceback' in result.stderr
  assert cli.error_lines(result.stderr)[-1].startswith(
      'error: learning_rate 0.0 must be')


def test_rerunning_a_finished_run_says_so_and_changes_nothing(
    trained_workdir, subprocess_env, cifar_dir):
  before = cli.snapshot(trained_workdir)
  result = cli.run_cli(cli.cli_args(cifar_dir, trained_workdir, num_epochs=0,
                                    num_steps=10), subprocess_env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'already finished at step 10' in result.stdout
  assert cli.snapshot(trained_workdir) == before


def test_config_json_records_the_values_used(trained_workdir):
  with open(os.path.join(trained_workdir, 'config.json')) as f:
    used = json.load(f)
  # cifar10.py leaves num_classes at default's 1000, init '' and image_size 0.
  assert used['num_classes'] == 10
  assert used['init'] == 'he'  # alexnet_tiny's own.
  assert used['image_size'] == 32
  assert used['model'] == 'alexnet_tiny'


@pytest.mark.slow
def test_logged_learning_rate_is_the_one_the_step_used(cifar_dir, tmp_path):
  """Warmup then cosine: the record at step s carries schedule(s - 1)."""
  config = tiny_config(cifar_dir, num_epochs=0, num_steps=20, warmup_epochs=0.4,
                       log_every_steps=1, eval_every_epochs=0,
                       checkpoint_every_steps=0)
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir)
  _, schedule = build.optimizer(config, build.durations(config, 35))
  logged = {r['step']: r['lr'] for r in read_jsonl(workdir)
            if r['split'] == 'train'}
  assert logged[1] == 0.0  # The first step of a warmup from zero.
  for step, lr in logged.items():
    assert lr == pytest.approx(float(schedule(step - 1)), rel=1e-6), step


@pytest.mark.slow
def test_best_val_checkpoint_that_is_not_the_last_is_restored_and_reported(
    cifar_dir, tmp_path):
  """Evaluations at steps 10, 20, 30 and 40; step 10 is made the best (its
  recorded val top-1, which orbax ranks by, set to 1.0 between two parts of
  the run), so the final test of the best checkpoint must restore step 10's
  parameters: its test metrics are recomputed here from that checkpoint and
  differ from the last step's."""
  workdir = str(tmp_path / 'w')
  config = lambda steps, keep: tiny_config(
      cifar_dir, num_epochs=0, num_steps=steps, eval_every_epochs=10 / 35,
      keep_checkpoints=keep, checkpoint_every_steps=0, learning_rate=0.05)
  train.train_and_evaluate(config(20, 2), workdir)
  metrics_file = os.path.join(workdir, 'checkpoints', '10', 'metrics',
                              'metrics')
  with open(metrics_file, 'w') as f:
    json.dump({checkpoints.BEST_METRIC: 1.0}, f)
  final = train.train_and_evaluate(config(40, 1), workdir)
  assert final['best_val_step'] == 10 and final['step'] == 40
  kept = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints')))
  assert kept == [10, 40]  # The latest 1 plus the best.
  state = cli.load_state_on_host(workdir, 10)
  model = build.model(tiny_config(cifar_dir), 10)
  _, test = cifar.load_cifar10_archive(cifar_dir)
  metrics = cli.evaluate_arrays(tiny_config(cifar_dir), model,
                                state['params'], test.images, test.labels)
  assert final['best_val_test'] == pytest.approx(metrics, rel=1e-6)
  assert final['best_val_test']['loss'] != final['test']['loss']


def test_checkpointer_keeps_the_best_of_a_known_order(tmp_path):
  """Val top-1 0.5, 0.8, 0.6, 0.7 at steps 10..40, keep 1: 20 and 40 stay,
  20 is the best, and each restores to what was saved."""
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'w'), keep=1)
  for step, top1 in zip((10, 20, 30, 40), (0.5, 0.8, 0.6, 0.7)):
    ckpt.save(step, {'w': jnp.full((4,), float(step))},
              {checkpoints.BEST_METRIC: top1})
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'w' / 'checkpoints')) == ['20', '40']
  reopened = checkpoints.Checkpointer(str(tmp_path / 'w'), keep=1)
  assert reopened.best_step() == 20 and reopened.latest_step() == 40
  reopened.close()
  for step in (20, 40):
    restored = cli.load_state_on_host(str(tmp_path / 'w'), step)
    np.testing.assert_array_equal(restored['w'], np.full((4,), float(step)))


@pytest.mark.slow
def test_train_step_compiles_once(cifar_dir, tmp_path, caplog):
  """Evaluation, the plateau value, logging, checkpoints and a resume cause
  no recompilation of the train step (counted by jax.log_compiles)."""
  config = tiny_config(cifar_dir, num_epochs=0, num_steps=12,
                       eval_every_epochs=0.2, checkpoint_every_steps=5)
  with jax.log_compiles(), caplog.at_level('WARNING'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  compiles = [r for r in caplog.records
              if 'Compiling jit(step_fn)' in r.getMessage()]
  assert len(compiles) == 1


def test_reporter_rewrites_metrics_only_when_something_was_written(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), cli.durations(10))
  reporter.write(1, 'train', loss=1.0)
  reporter.flush(force=True)
  path = tmp_path / 'metrics.jsonl'
  first = path.stat().st_ino, path.stat().st_mtime_ns
  reporter.flush(force=True)  # Nothing new: the file is not rewritten.
  assert (path.stat().st_ino, path.stat().st_mtime_ns) == first
  reporter.write(2, 'train', loss=0.5)
  reporter.close()
  assert [r['step'] for r in read_jsonl(str(tmp_path))] == [1, 2]


def test_reporter_without_tensorflow_still_writes_metrics(tmp_path, capsys,
                                                          monkeypatch):
  """A machine without TensorFlow (clu's writers import it): one line says
  so; steps/s, metrics.jsonl and the console line work as always."""
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # Import fails.
  reporter = reporting.Reporter(str(tmp_path), cli.durations(5, log_every=2))
  assert ('TensorBoard events off: tensorflow is not installed'
          in capsys.readouterr().out)
  rates = [reporter.after_step(step) for step in range(1, 6)]
  assert [r is not None for r in rates] == [False, True, False, True, True]
  assert all(r > 0 for r in rates if r is not None)
  reporter.write(5, 'train', loss=0.5)
  reporter.progress(5, 1.0, 0.5, 0.25, 0.01, 123.)
  reporter.close()
  assert 'step 5/5 | epoch   1.00 | loss 0.5000' in capsys.readouterr().out
  assert [r['step'] for r in read_jsonl(str(tmp_path))] == [5]


def test_curves_are_drawn_off_the_training_thread(tmp_path, monkeypatch):
  """A redraw runs in its own thread: write_curves returns while it draws,
  asks made meanwhile are left to the next redraw, the last one (wait=True)
  is drawn whole, and a write that failed comes back as one WorkdirError
  at the next call."""
  import threading  # pylint: disable=g-import-not-at-top
  from alexnet_jax.errors import WorkdirError  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import curves  # pylint: disable=g-import-not-at-top
  release, drawn, threads = threading.Event(), [], []

  def slow_draw(layout, title):
    threads.append(threading.current_thread())
    assert release.wait(60)
    drawn.append(title)
    if title.endswith('step 4'):
      raise OSError(28, 'No space left on device')

  monkeypatch.setattr(curves, 'write_run_curves', slow_draw)
  reporter = reporting.Reporter(str(tmp_path), cli.durations(10), title='run')
  reporter.write(1, 'train', loss=1.0)
  reporter.write_curves()  # Returns while the drawing waits.
  reporter.write(2, 'train', loss=0.9)
  reporter.write_curves()  # Busy: left to the next one.
  release.set()
  reporter.write(3, 'train', loss=0.8)
  reporter.write_curves(wait=True)
  assert drawn == ['run, step 1', 'run, step 3']
  assert all(t is not threading.main_thread() for t in threads)
  reporter.write(4, 'train', loss=0.7)
  reporter.write_curves()
  reporter._drawing.exception()  # pylint: disable=protected-access
  with pytest.raises(WorkdirError, match='write curves.png'):
    reporter.write_curves()
  reporter.close()
