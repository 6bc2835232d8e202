"""Part 3 of the GPU check: the CIFAR main job to the end, as its own
process, the real command (`python -m alexnet_jax.main
--config=configs/cifar10.py`): wall time, the train epoch at the run's rate,
test top-1, read back from the run's own log and files."""

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.gpu import part

REPO = pathlib.Path(__file__).resolve().parents[2]
FULL_CIFAR_TRAIN = 45_000  # CIFAR-10's 50,000 less the 10% held out (val).
HEADER = re.compile(r'(\d+) train / (\d+) val / (\d+) test \| global batch '
                    r'(\d+) .*\| (\d+) steps \((\d+)/epoch(?:, ([^)]*))?\)')


def main_command(workdir, cifar_dir, mode, epochs) -> list:
  cmd = [sys.executable, '-m', 'alexnet_jax.main',
         '--config=configs/cifar10.py', f'--workdir={workdir}']
  if cifar_dir:
    cmd.append(f'--config.data_dir={cifar_dir}')
  else:
    small = mode == 'smoke'
    cmd += ['--config.dataset=fake', '--config.fake_image_size=32',
            '--config.num_classes=10',
            f'--config.fake_num_train={256 if small else 50_000}',
            f'--config.fake_num_test={64 if small else 10_000}']
  if mode == 'smoke':
    cmd += ['--config.num_steps=4', '--config.log_every_steps=2']
  elif epochs:
    cmd.append(f'--config.num_epochs={epochs}')
  return cmd


def _rates(out: dict, records: list, header):
  """The train rate the run logged, and the epoch times it makes."""
  rates = [r['images_per_sec'] for r in records
           if r.get('split') == 'train' and r.get('images_per_sec')]
  if rates:
    out['train_images_per_sec'] = statistics.median(rates)
    out['train_rate_windows'] = len(rates)
  if rates and header:
    epoch_images = out['steps_per_epoch'] * out['batch_size']
    out['train_epoch_s'] = epoch_images / out['train_images_per_sec']
    out['full_cifar_epoch_s'] = (
        FULL_CIFAR_TRAIN // out['batch_size'] * out['batch_size'] /
        out['train_images_per_sec'])


def _final(out: dict, final: pathlib.Path):
  """Test top-1 (and the best-val checkpoint's) from final_metrics.json."""
  f = json.loads(final.read_text())
  out['test_top1'] = f['test']['top1']
  out['final_step'] = f['step']
  if f.get('best_val_test'):
    out['best_val_step'] = f['best_val_step']
    out['best_val_test_top1'] = f['best_val_test']['top1']


def read_run(workdir: pathlib.Path, log: str, wall_s: float) -> dict:
  """What the run's own files and log say: sizes, rates, epoch times,
  top-1."""
  out = {}
  header = HEADER.search(log)
  if header:
    (out['train_images'], out['val_images'], out['test_images'],
     out['batch_size'], out['total_steps'], out['steps_per_epoch']) = map(
         int, header.groups()[:6])
    out['pace'] = header.group(7)
  records = []
  if (workdir / 'metrics.jsonl').is_file():
    records = [json.loads(l) for l in
               (workdir / 'metrics.jsonl').read_text().splitlines() if l]
  _rates(out, records, header)
  steps_done = max((r.get('step', 0) for r in records), default=0)
  if header and steps_done:
    out['epochs_done'] = steps_done / out['steps_per_epoch']
    out['wall_per_epoch_s'] = wall_s / out['epochs_done']
  if (workdir / 'final_metrics.json').is_file():
    _final(out, workdir / 'final_metrics.json')
  return out


def launch(cmd, log_path: pathlib.Path, timeout: float) -> dict:
  """The job run to its end (or the timeout), its output in log_path."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
  env.pop('XLA_PYTHON_CLIENT_PREALLOCATE', None)  # Its own default, as run.
  result, begun = {}, time.monotonic()
  with open(log_path, 'w') as log_file:
    try:
      proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, timeout=timeout,
                            check=False)
      result['returncode'] = proc.returncode
    except subprocess.TimeoutExpired:
      result['returncode'] = None
      result['timed_out'] = True
  result['wall_s'] = time.monotonic() - begun
  return result


def _note(result: dict, cifar_dir: str):
  """What the figures mean for this data: a subset, or fake images."""
  if result.get('train_images', FULL_CIFAR_TRAIN) < FULL_CIFAR_TRAIN:
    result['note'] = (f"{result['train_images']:,} train images, not "
                      f'{FULL_CIFAR_TRAIN:,}: a subset, so the top-1 is not '
                      "the full dataset's; the epoch time at 45,000 images "
                      '(full_cifar_epoch_s) is the measured rate applied to '
                      'the full split')
  if not cifar_dir:
    result.pop('test_top1', None)
    result.pop('best_val_test_top1', None)
    result['note'] = ('no --cifar_dir: fake data of CIFAR\'s shape, so no '
                      'accuracy; the step is the same, so the epoch time is')


def _one_run(name, cifar_dir, mode, epochs, root, timeout, out_dir, clock):
  """The main job once, with the compilation cache in `root`: what its log
  and files say."""
  workdir = root / name
  log_path = out_dir / f'cifar_main_{name}.log'
  cmd = main_command(workdir, cifar_dir and os.path.abspath(cifar_dir),
                     mode, epochs) + [
                         f'--config.compilation_cache={root / "jax_cache"}']
  result = {'command': ' '.join(cmd[1:]).replace(str(root), 'TMP'),
            'timeout_s': timeout}
  clock.say(f'  {name}: {result["command"]} (timeout {timeout:.0f} s)')
  result.update(launch(cmd, log_path, timeout))
  log = log_path.read_text(errors='replace')
  result['log_tail'] = log[-2500:]
  result.update(read_run(workdir, log, result['wall_s']))
  if result.get('timed_out') or result['returncode'] != 0:
    why = ('timed out' if result.get('timed_out') else
           f"exited {result['returncode']}")
    raise part.PartFailed(f'the main job ({name}) {why}; its log: {log_path}',
                          result)
  clock.say(f"  {name}: {result['wall_s']:.1f} s, "
            f"{result.get('pace', '?')}")
  return result


def measure(mode: str, clock: part.Clock, budget_s: float, cifar_dir: str,
            epochs: int, out_dir: pathlib.Path) -> dict:
  """The main job twice, each in a fresh workdir: first with an empty
  compilation cache (cold), then with the cache the first one filled
  (warm: a repeated or resumed run). The figures are the cold run's, with
  both wall times."""
  if not cifar_dir and mode != 'smoke':
    epochs = epochs or 3
  elif cifar_dir and not os.path.exists(cifar_dir):
    raise ValueError(f'--cifar_dir {cifar_dir} does not exist (the '
                     'cifar-10-batches-py folder, or cifar-10-python.tar.gz)')
  begun = time.monotonic()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    args = (cifar_dir, mode, epochs, root)
    result = _one_run('cold', *args, max(min(budget_s, clock.left()), 10.),
                      out_dir, clock)
    result['cold_wall_s'] = result['wall_s']
    left = min(budget_s - (time.monotonic() - begun), clock.left())
    try:
      warm = _one_run('warm', *args, max(left, 10.), out_dir, clock)
      result['warm_wall_s'] = warm['wall_s']
      result['warm_same_test_top1'] = (warm.get('test_top1') ==
                                       result.get('test_top1'))
    except part.PartFailed as e:
      result['warm_error'] = str(e)
  result['data'] = (f'CIFAR-10 pickles at {cifar_dir}' if cifar_dir else
                    'fake, CIFAR-shaped (random images and labels: epoch '
                    'time only, the accuracy means nothing)')
  _note(result, cifar_dir)
  return result
