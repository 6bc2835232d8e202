"""Many runs in one (`task/runs.py`, `steps.make_runs_step`, train's
`_Stack`): the plan and its refusals, the spread's arithmetic, run i of a
stack against the single run with its seed and values, a diverging run
frozen while the others finish, and a stacked workdir read back."""

import json
import os
import re
import signal
import subprocess

import jax
import numpy as np
import pytest
from scipy import stats

from alexnet_jax import evaluate
from alexnet_jax import train
from alexnet_jax import visualize
from alexnet_jax.errors import ConfigError
from alexnet_jax.runtime import curves
from alexnet_jax.runtime import memory
from alexnet_jax.task import runs
from alexnet_jax.task import saved_run
from alexnet_jax.task import validation
from tests import cli
from tests.helpers import LineReader

BASE = dict(learning_rate=0.01, weight_decay=5e-4, momentum=0.9,
            dropout_rate=0.5)


def test_the_plan_crosses_or_zips_the_sweep_with_the_seeds():
  crossed = runs.plan(2, 'learning_rate=0.1,0.2 momentum=0.8,0.95', 'cross',
                      BASE, 7)
  assert [r.index for r in crossed] == list(range(8))
  assert [r.seed for r in crossed] == [7, 8] * 4
  assert [(r.values['learning_rate'], r.values['momentum'])
          for r in crossed[::2]] == [(0.1, 0.8), (0.1, 0.95), (0.2, 0.8),
                                     (0.2, 0.95)]
  assert all(r.values['weight_decay'] == 5e-4 for r in crossed)
  zipped = runs.plan(1, 'learning_rate=0.1,0.2;momentum=0.8,0.95', 'zip',
                     BASE, 0)
  assert [(r.seed, r.values['learning_rate'], r.values['momentum'])
          for r in zipped] == [(0, 0.1, 0.8), (0, 0.2, 0.95)]
  seeds = runs.plan(3, '', 'cross', BASE, 5)
  assert [(r.seed, r.values) for r in seeds] == [(s, BASE) for s in (5, 6, 7)]
  assert runs.points(crossed)[1] == (
      dict(learning_rate=0.1, weight_decay=5e-4, momentum=0.95,
           dropout_rate=0.5), [2, 3])


@pytest.mark.parametrize('sweep,mode,says', [
    ('batch_size=32,64', 'cross', "'batch_size' cannot vary inside one "
     'compiled step; the fields that can: learning_rate, weight_decay, '
     'momentum, dropout_rate'),
    ('dropout_rate=0.3,1', 'cross', 'dropout_rate 1 must be in [0, 1)'),
    ('learning_rate=0.1,-0.1', 'cross', 'learning_rate -0.1 must be a '
     'positive finite number'),
    ('learning_rate', 'cross', "'learning_rate' is not FIELD=V1,V2"),
    ('learning_rate=a,b', 'cross', "learning_rate values 'a,b' are not "
     'numbers'),
    ('momentum=0.9 momentum=0.8', 'cross', 'momentum is given twice'),
    ('learning_rate=0.1,0.2 momentum=0.9', 'zip', 'lists of one length; got '
     'learning_rate: 2, momentum: 1'),
    ('learning_rate=0.1', 'grid', "sweep_mode: 'grid' is not one of cross, "
     'zip'),
])
def test_a_bad_sweep_is_one_error_naming_the_choices(sweep, mode, says):
  config = cli.tiny_config('/nonexistent', sweep=sweep, sweep_mode=mode,
                           runs=2)
  with pytest.raises(ConfigError) as e:
    validation.validate_config(config)
  assert says in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('field,value,says', [
    ('dataset', 'image_folder', "data held on the device (cifar10, fake), "
     "not 'image_folder'"),
    ('model_parallelism', 2, 'model_parallelism 2 cannot split a stack'),
    ('init_from', 'torchvision', 'init_from'),
    ('runs', 0, 'runs 0 must be a positive integer'),
    ('runs_parallelism', 4, "runs_parallelism 4 must divide the stack's 2 "
     'runs'),
    ('runs_parallelism', 2, 'runs_parallelism 2 must be a positive divisor '
     'of the device count 1'),
])
def test_what_a_stack_cannot_do_is_refused_by_name(field, value, says):
  config = cli.tiny_config('/nonexistent', **{'runs': 2, field: value})
  if field == 'dataset':
    config.update(crop_padding=0, batch_size=64)
  with pytest.raises(ConfigError) as e:
    validation.validate_config(config)
  assert says in str(e.value)


def test_one_run_is_not_spread_over_devices():
  config = cli.tiny_config('/nonexistent', runs_parallelism=2)
  with pytest.raises(ConfigError, match='runs_parallelism 2 spreads a stack'):
    validation.validate_config(config)


@pytest.mark.parametrize('n', [2, 5, 40])
def test_the_spread_is_students_t_over_the_runs(n):
  xs = list(np.random.default_rng(n).normal(0.68, 0.01, n))
  s = runs.summary(xs + [float('nan'), None])  # A frozen run has no value.
  assert s['n'] == n
  np.testing.assert_allclose(s['mean'], np.mean(xs), rtol=1e-12)
  np.testing.assert_allclose(s['std'], np.std(xs, ddof=1), rtol=1e-12)
  np.testing.assert_allclose(s['ci95'], stats.t.interval(
      0.95, n - 1, loc=np.mean(xs), scale=stats.sem(xs)), rtol=1e-12)
  assert runs.summary([0.5]) == {'mean': 0.5, 'std': None, 'ci95': None,
                                 'n': 1}


def _refusal(config, workdir) -> str:
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)  # Refused before the workdir is made.
  return str(e.value)


def test_a_stack_too_big_for_memory_is_refused_with_the_largest_that_fits(
    cifar_dir, tmp_path):
  """The stack's train program is compiled from its abstract state and
  sized before anything is allocated: 3 runs in a little less memory than
  they need are refused naming 2, and 2 runs then train in that memory."""
  small = dict(num_epochs=0, num_steps=1, eval_every_epochs=0, **{
      'memory_limit_gib': 1e-4})
  said = _refusal(cli.tiny_config(cifar_dir, runs=3, **small),
                  str(tmp_path / 'w'))
  assert 'not even one run fits' in said
  need = float(re.search(r'needs about ([0-9.]+) MiB', said).group(1))
  small['memory_limit_gib'] = (need - 1) / 1024
  said = _refusal(cli.tiny_config(cifar_dir, runs=3, **small),
                  str(tmp_path / 'w'))
  assert 'the largest that fits: 2 runs, --config.runs=2 ' in said
  final = train.train_and_evaluate(cli.tiny_config(cifar_dir, runs=2, **small),
                                   str(tmp_path / 'w'))
  assert len(final['runs']) == 2


class _Device:
  """What `memory.budget` reads of a GPU: its allocator's figures."""
  device_kind = 'NVIDIA H200'

  def memory_stats(self):
    return {'bytes_limit': 100 * 2 ** 30, 'bytes_in_use': 30 * 2 ** 30}


def test_free_memory_counts_the_stacks_own_data_back_in():
  """The feed's arrays are on the device when the stack is sized: free
  memory no longer counts them, and the stack's size does."""
  room = memory.budget(_Device(), held=2 * 2 ** 30)
  assert room == memory.Budget(72 * 2 ** 30, 'free on NVIDIA H200')
  assert memory.budget(_Device(), 1.5, held=7).bytes == 1.5 * 2 ** 30
  small = memory.StackSize(2, 10 * 2 ** 30, 2 * 2 ** 30)
  many = memory.StackSize(8, 34 * 2 ** 30, 2 * 2 ** 30)  # 4 GiB a run.
  assert memory.largest(small, many, room.bytes) == 17  # (72-2-2) / 4.
  assert memory.largest(small, many, room.bytes, multiple=4) == 16
  said = memory.refusal(memory.StackSize(24, 98 * 2 ** 30, 2 * 2 ** 30),
                        room, lambda: 17, points=3)
  assert said.startswith('a stack of 24 runs (8 for each of 3 sweep points) '
                         'needs about 100.00 GiB per device')
  assert ('the largest that fits: 15 runs, --config.runs=5 for each of the 3 '
          'sweep points') in said


def _train_records(workdir, run=None):
  return [r for r in cli.read_jsonl(str(workdir))
          if r['split'] == 'train' and r.get('run') == run]


RUN = dict(num_epochs=0, num_steps=12, log_every_steps=4,
           eval_every_epochs=0.2, checkpoint_every_steps=0,
           schedule='cosine', warmup_epochs=0.1)


def test_run_i_of_a_stack_is_the_single_run_with_its_seed_and_values(
    cifar_dir, tmp_path):
  """Two seeds at learning rate 0.03 and dropout 0.3 (the config's are 0.02
  and 0.5): run 1 (seed 1) trains as the single run with seed 1 and those
  values does, to float tolerance (the stacked program rounds differently),
  record for record; `evaluate --run` reads each run back."""
  stack = cli.tiny_config(cifar_dir, runs=2,
                          sweep='learning_rate=0.03 dropout_rate=0.3', **RUN)
  final = train.train_and_evaluate(stack, str(tmp_path / 'stack'))
  assert [(r['seed'], r['learning_rate'], r['dropout_rate'])
          for r in final['runs']] == [(0, 0.03, 0.3), (1, 0.03, 0.3)]
  single = train.train_and_evaluate(
      cli.tiny_config(cifar_dir, seed=1, learning_rate=0.03, dropout_rate=0.3,
                      **RUN), str(tmp_path / 'single'))
  got = _train_records(tmp_path / 'stack', 1)
  want = _train_records(tmp_path / 'single')
  assert [r['step'] for r in got] == [r['step'] for r in want] == [4, 8, 12]
  np.testing.assert_allclose([r['loss'] for r in got],
                             [r['loss'] for r in want], rtol=2e-4)
  np.testing.assert_allclose([r['lr'] for r in got],
                             [r['lr'] for r in want], rtol=1e-6)
  for split in ('val', 'test'):
    np.testing.assert_allclose(final['runs'][1][split]['loss'],
                               single[split]['loss'], rtol=2e-4)
    # Top-1 may differ by an example whose two best logits nearly tie.
    assert abs(final['runs'][1][split]['top1'] -
               single[split]['top1']) <= 2 / 508
  for i in (0, 1):
    back = evaluate.evaluate(saved_run.load_config(str(tmp_path / 'stack')),
                             str(tmp_path / 'stack'), run=i)
    assert back['top1'] == final['runs'][i]['test']['top1']
  with pytest.raises(ConfigError, match=r'holds 2 runs trained together.*'
                     r'--run=0\.\.1'):
    evaluate.evaluate(saved_run.load_config(str(tmp_path / 'stack')),
                      str(tmp_path / 'stack'))
  # visualize --run: run i's own conv1, its picture titled with the run.
  saved = cli.load_state_on_host(str(tmp_path / 'stack'), 12)
  for i in (0, 1):
    path, [tower] = visualize.filters(str(tmp_path / 'stack'), run=i)
    assert str(path).endswith(f'filters_run{i}.png')
    np.testing.assert_array_equal(
        tower.kernels, saved['params']['conv1']['kernel'][i])
  with pytest.raises(ConfigError, match='holds 2 runs'):
    visualize.filters(str(tmp_path / 'stack'), out=str(tmp_path / 'f.png'))


def test_a_diverging_run_is_frozen_and_the_others_finish(cifar_dir, tmp_path,
                                                          capsys):
  """learning rate 1e6 turns run 1's loss non-finite within a few steps: it
  is reported with its step and values, keeps its last good parameters,
  and run 0 trains on exactly as the same stack without it would."""
  config = cli.tiny_config(cifar_dir, sweep='learning_rate=0.02,1e6',
                           **RUN)
  final = train.train_and_evaluate(config, str(tmp_path / 'w'))
  out = capsys.readouterr().out
  frozen_at = final['runs'][1]['frozen_at_step']
  assert final['frozen_runs'] == [1] and 1 <= frozen_at <= 12
  assert (f'run 1 (seed 0, learning_rate=1e+06, weight_decay=0.0005, '
          f'momentum=0.9, dropout_rate=0.5) became non-finite at step '
          f'{frozen_at}: frozen') in out
  assert final['runs'][0]['frozen_at_step'] is None
  saved = cli.load_state_on_host(str(tmp_path / 'w'), 12)
  for leaf in jax.tree.leaves(saved['params']):  # Its last good parameters.
    assert leaf.shape[0] == 2 and np.isfinite(leaf[1]).all()
  assert final['summary'][1]['test']['top1'] is None  # Not averaged in.
  assert final['test']['top1'] == final['runs'][0]['test']['top1']
  assert '1 of 2 runs finished | frozen: runs [1]' in out
  alone = train.train_and_evaluate(
      cli.tiny_config(cifar_dir, sweep='learning_rate=0.02,0.03', **RUN),
      str(tmp_path / 'alone'))
  assert final['runs'][0]['test'] == alone['runs'][0]['test']
  assert cli.without_speed(_train_records(tmp_path / 'w', 0)) == \
      cli.without_speed(_train_records(tmp_path / 'alone', 0))


def test_every_run_diverging_stops_as_one_run_does(cifar_dir, tmp_path):
  config = cli.tiny_config(cifar_dir, sweep='learning_rate=1e6,1e7', **RUN)
  with pytest.raises(Exception, match='the training loss of every run became '
                     'non-finite at step'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))


@pytest.mark.slow
def test_a_stack_killed_and_rerun_ends_as_one_never_stopped(
    cifar_dir, tmp_path, subprocess_env):
  """SIGTERM after step 5's line: the stack saves the step it stopped at
  and exits as one run does; rerun, kill -9 after step 15's line (saves at
  10 and after each evaluation), rerun: the same states bit for bit, the
  same records and final metrics as the stack run straight through."""
  run = dict(num_epochs=0, num_steps=20, eval_every_epochs=0.2, runs=2,
             sweep='learning_rate=0.01,0.02')
  ref = str(tmp_path / 'ref')
  done = cli.run_cli(cli.cli_args(cifar_dir, ref, **run), subprocess_env)
  assert done.returncode == 0, done.stderr[-2000:]
  workdir = str(tmp_path / 'w')
  args = cli.cli_args(cifar_dir, workdir, **run)
  proc = cli.start_cli(args, subprocess_env, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
  out = LineReader(proc.stdout)
  out.wait_for(' 5/20 | epoch')
  proc.send_signal(signal.SIGTERM)
  out = out.rest()
  assert proc.wait(timeout=300) == 128 + signal.SIGTERM, out[-2000:]
  last = out.strip().splitlines()[-1]
  assert last.startswith('stopped by SIGTERM at step '), out[-1000:]
  step = int(last.split('at step ')[1].split('/')[0])
  assert 5 <= step < 15, last  # The step under way, not the run's end.
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  proc = cli.start_cli(args, subprocess_env, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
  out = LineReader(proc.stdout)
  out.wait_for('step 15/20 | ')
  proc.kill()
  proc.wait()
  out.rest()
  resumed = cli.run_cli(args, subprocess_env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming from' in resumed.stdout
  cli.assert_states_bitwise_equal(workdir, ref, 20)
  for name in ('final_metrics.json',):
    with open(os.path.join(workdir, name)) as a, open(
        os.path.join(ref, name)) as b:
      assert a.read() == b.read()
  assert (cli.without_speed(cli.read_jsonl(workdir)) ==
          cli.without_speed(cli.read_jsonl(ref)))


def test_a_stacks_curves_are_its_mean_with_a_band_and_each_run(tmp_path):
  records = [{'step': s, 'split': 'train', 'run': i, 'loss': loss,
              'top1': 0.1 * i, 'lr': 0.01}
             for i, losses in enumerate(((2.0, 1.5), (2.2, 1.1), (1.8, 1.3)))
             for s, loss in zip((10, 20), losses)]
  records.append({'step': 20, 'split': 'test', 'run': 1, 'loss': 1.4,
                  'top1': 0.5})
  entries = curves._stack_series('w', records)  # pylint: disable=protected-access
  label, mean, spread = entries[0]
  assert label == 'w: mean of 3 runs'
  steps_, values = mean['train', 'loss']
  assert steps_ == (10, 20)
  np.testing.assert_allclose(values, (2.0, 1.3))
  np.testing.assert_allclose(spread['train', 'loss'], (0.2, 0.2))
  assert mean['test', 'top1'] == ((20,), (50.,)) and spread['test', 'top1'] == (
      0.,)
  assert [(e[0], e[2]) for e in entries[1:]] == [
      ('run 0', 'thin'), ('run 1', 'thin'), ('run 2', 'thin')]
  np.testing.assert_allclose(entries[2][1]['train', 'loss'][1], (2.2, 1.1))
  assert curves._stack_series('w', records[:1])[0][2] is not None  # pylint: disable=protected-access
  single = [{k: v for k, v in r.items() if k != 'run'} for r in records[:2]]
  assert curves._stack_series('w', single) == [  # pylint: disable=protected-access
      ('w', curves._series(single), None)]  # pylint: disable=protected-access
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in records))
  out = tmp_path / 'curves.png'
  curves.plot_runs([str(workdir)], str(out))
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
