"""The benchmark commands (`python -m benchmarks.X`) in their short modes:
the JSON lines have every field with sane values (never a timing
assertion), bad input is one usage line, and the GPU check's report keeps
its structure (`.ci/run` greps it)."""

import importlib.util
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.gpu import report as gpu_report
from tests import cli
from tests.conftest import REPO

FIELDS = ('model', 'batch_size', 'image_size', 'dtype', 'images_per_sec',
          'step_ms', 'compile_s', 'flops_per_step', 'mfu', 'device')


def run(*args, timeout=300):
  return subprocess.run(
      [sys.executable, '-m', 'benchmarks.train_step', '--model=alexnet_tiny',
       '--batch_size=8', '--steps=2', '--warmup=1', '--json', *args],
      cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_json_has_the_fields_and_sane_values():
  with_torch = importlib.util.find_spec('torch') is not None
  result = run('--eval_images=24', *(['--vs_pytorch'] if with_torch else []))
  assert result.returncode == 0, result.stderr[-2000:]
  r = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(FIELDS) <= set(r)
  assert r['eval_images'] == 24 and r['eval_views'] == 2
  assert r['eval_ms'] > 0 and r['eval_compile_s'] > 0
  assert r['eval_images_per_sec'] == pytest.approx(24 / r['eval_ms'] * 1e3)
  assert (r['model'], r['batch_size'], r['image_size'], r['dtype']) == (
      'alexnet_tiny', 8, 32, 'float32')
  assert r['step_ms'] > 0 and r['compile_s'] > 0
  assert r['images_per_sec'] == pytest.approx(8 / r['step_ms'] * 1e3)
  # XLA's count for a step of the tiny net at batch 8: forward and backward
  # of ~0.6 GFLOP per 32 images, so tens of MFLOP to a GFLOP.
  assert 1e7 < r['flops_per_step'] < 1e9
  assert r['device'].startswith('cpu') and r['mfu'] is None  # No CPU peak.
  if with_torch:
    assert r['pytorch_step_ms'] > 0
    assert r['speedup_vs_pytorch'] == pytest.approx(
        r['pytorch_step_ms'] / r['step_ms'])


@pytest.mark.slow
def test_every_pytorch_mode_under_amp_against_our_bf16_step():
  """The accelerator comparison (eager, channels_last, torch.compile, all
  with AMP) runs on the CPU too: torch.compile builds with the C compiler."""
  pytest.importorskip('torch')
  result = run('--vs_pytorch', '--half_precision',
               '--pytorch_modes=eager,channels_last,compile', timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  r = json.loads(result.stdout.strip().splitlines()[-1])
  assert r['dtype'] == 'bfloat16'
  rows = r['vs_pytorch']
  assert [row['mode'] for row in rows] == [
      'eager+amp', 'channels_last+amp', 'compile+amp']
  for row in rows:
    assert row['step_ms'] > 0 and row['warmup_s'] > 0
    assert row['speedup'] == pytest.approx(row['step_ms'] / r['step_ms'])
  assert r['pytorch_mode'] == 'eager+amp'
  assert r['speedup_vs_pytorch'] == rows[0]['speedup']
  for mode in ('eager+amp', 'channels_last+amp', 'compile+amp'):
    assert f'PyTorch {r["pytorch"]} {mode}: ' in result.stdout


@pytest.mark.parametrize('args, message', [
    (('--steps=0',), '--steps must be >= 1, got 0'),
    (('--eval_images=-2',), '--eval_images must be >= 0, got -2'),
    (('--pytorch_modes=eager',), '--pytorch_modes needs --vs_pytorch'),
    (('--vs_pytorch', '--pytorch_modes=eager,jit'),
     "--pytorch_modes 'eager,jit': jit is not one of eager, channels_last, "
     'compile'),
])
def test_bad_arguments_are_one_error_line(args, message):
  cli.assert_one_error_line(run(*args), message)


def run_module(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('module', ['benchmarks.train_step',
                                    'benchmarks.gpu_check'])
def test_help_prints_usage_and_exits_zero(module):
  result = run_module(module, '--help')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith('usage: '), result.stdout[:500]
  assert result.stderr == ''


@pytest.mark.parametrize('args, message', [
    (('--parts=device,gpus',), '--parts: gpus is not one of device, '
     'train_step, cifar_main, input_pipeline'),
    (('--main_epochs=-1',), '--main_epochs must be >= 0, got -1'),
])
def test_gpu_check_refuses_bad_arguments_in_one_line(args, message, tmp_path):
  # A check that lets the value through then runs one small part, not all.
  result = run_module('benchmarks.gpu_check', '--smoke', '--parts=device',
                      *args, f'--out={tmp_path}/o')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'gpu_check.py: error: {message}')
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'o').exists()


def test_gpu_check_part_that_cannot_import_fails_alone(tmp_path, monkeypatch,
                                                       capsys):
  """A part whose module does not import (a GPU machine without Grain, say)
  is recorded as an error; the parts after it still run, and the report
  is written. Imported here, its environment defaults undone afterwards."""
  monkeypatch.setenv('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  from benchmarks import gpu_check  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, 'benchmarks.gpu.input_pipeline', None)
  gpu_check.main(['--smoke', '--parts=input_pipeline,device',
                  f'--out={tmp_path}'])
  report = json.loads((tmp_path / 'gpu_check.json').read_text())
  sections = report['sections']
  assert list(sections) == ['device', 'input_pipeline']  # In run order.
  assert sections['device']['status'] == 'ok'
  assert sections['device']['platform'] == 'cpu'
  assert sections['input_pipeline']['status'] == 'error'
  assert 'benchmarks.gpu.input_pipeline' in sections['input_pipeline'][
      'error']
  assert [t['status'] for t in report['targets']] == ['not measured'] * 4
  text = (tmp_path / 'gpu_check.md').read_text()
  assert '**input_pipeline: error**: ModuleNotFoundError' in text
  assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path)


def smoke_report():
  """A report as `gpu_check --smoke` leaves it, its figures made up."""
  config = {'model': 'alexnet_cifar', 'batch_size': 8, 'dtype': 'float32',
            'step_ms': 60., 'images_per_sec': 133.3, 'mfu': None,
            'vs_pytorch': [{'mode': 'eager', 'step_ms': 120., 'speedup': 2.,
                            'mfu': None},
                           {'mode': 'channels_last', 'step_ms': 90.,
                            'speedup': 1.5, 'mfu': None}]}
  return {
      'command': 'python -m benchmarks.gpu_check --smoke', 'smoke': True,
      'started': '2026-12-06T10:00:00+00:00', '_start': time.monotonic(),
      'sections': {
          'device': {'status': 'ok', 'platform': 'cpu', 'device_kind': 'cpu'},
          'train_step': {'status': 'ok', 'configs': [
              config,
              {'model': 'alexnet_tiny', 'batch_size': 8, 'dtype': 'bfloat16',
               'skipped': 'over the time budget'},
              {'model': 'alexnet_tiny', 'batch_size': 8, 'dtype': 'float32',
               'error': 'Traceback ...\nRuntimeError: out of memory\n'}]},
          'cifar_main': {'status': 'error', 'error': 'the main job exited 1',
                         'wall_s': 20., 'data': 'fake',
                         'full_cifar_epoch_s': 300.},
          'input_pipeline': {'status': 'ok', 'notes': ['no GPU'],
                             'images_per_sec': {'folder, 1 core': 583.2,
                                                'store (raw), 1 core': 22835.}},
      }}


def test_gpu_check_report_has_every_table(tmp_path):
  report = smoke_report()
  gpu_report.write(report, tmp_path)
  lines = (tmp_path / 'gpu_check.md').read_text().splitlines()
  # What .ci/run greps for, and the rows under it.
  at = lines.index('| input path | images/s |')
  assert lines[at + 1:at + 4] == ['| --- | --- |', '| folder, 1 core | 583 |',
                                  '| store (raw), 1 core | 22,835 |']
  assert lines[0] == ('### GPU check, 2026-12-06 (--smoke, CPU: shapes too '
                      'small to mean anything)')
  assert '**cifar_main: error**: the main job exited 1' in lines
  header = [l for l in lines if l.startswith('| model, batch, dtype')]
  assert header == ['| model, batch, dtype | alexnet_jax | MFU | PyTorch '
                    'eager | PyTorch channels_last |']
  assert ('| `alexnet_cifar` 8, float32 | 60.00 ms (133 img/s) | — | '
          '120.00 ms (**2.00×**, MFU —) | 90.00 ms (**1.50×**, MFU —) |'
          ) in lines
  assert ('| `alexnet_tiny` 8, bfloat16 | over the time budget | | | |'
          ) in lines
  assert ('| `alexnet_tiny` 8, float32 | RuntimeError: out of memory | | | |'
          ) in lines
  assert any(l.startswith('| `configs/cifar10.py`, 0.0 epochs | fake | 20 s')
             for l in lines)
  targets = lines[lines.index('| GPU target | value | status |') + 2:]
  assert len(targets) == 4 and all(
      '**not measured** (--smoke (tiny shapes))' in l for l in targets)
  assert '| 300.00 s |' in targets[3]
  saved = json.loads((tmp_path / 'gpu_check.json').read_text())
  assert '_start' not in saved and saved['wall_s'] >= 0
  assert saved['sections'] == json.loads(json.dumps(report['sections']))


@pytest.mark.slow
def test_profile_names_the_step_s_convolutions_and_pool_gradients():
  result = run_module('benchmarks.profile_step', '--model=alexnet_tiny',
                      '--batch_size=4', '--steps=2', '--top=200')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert 'ms per step in XLA' in lines[0]
  rows = [l.split() for l in lines[1:]]
  assert rows and all(float(r[0]) >= 0 for r in rows)
  text = result.stdout
  # conv1's weight gradient (3x3, 3 -> 16) and the pool1 gradient's shape.
  assert 'f32[3,3,3,16]' in text or 'f32[16,3,3,3]' in text, text
  assert 'f32[4,32,32,16]' in text, text


@pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                    reason='PyTorch not installed: pip install -r requirements-parity.txt')
@pytest.mark.slow
def test_conv_layers_times_every_pass_of_every_conv():
  result = run_module('benchmarks.conv_layers', '--model=alexnet_tiny',
                      '--batch=2')
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [l for l in result.stdout.splitlines() if l.strip().startswith('conv')]
  assert [r.split(':')[0].strip() for r in rows] == [
      f'conv{i}' for i in range(1, 6)]
  for row in rows:
    times = [float(t) for t in re.findall(r'(\d+\.\d+)', row)]
    assert len(times) == 6 and all(t > 0 for t in times), row


def test_cifar_feed_reports_both_rates_on_real_images(cifar_dir):
  result = run_module('benchmarks.cifar_feed', f'--data_dir={cifar_dir}',
                      '--batch_size=16', '--steps=5', '--repeats=1')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '(4577 train images)' in result.stdout, result.stdout
  rates = re.findall(r'^  (.+): ([\d,]+) images/s$', result.stdout, re.M)
  assert [name for name, _ in rates] == [
      'gather', 'gather + crop, flip, normalize'], result.stdout
  assert all(int(rate.replace(',', '')) > 0 for _, rate in rates)


@pytest.mark.slow
def test_image_pipeline_times_folder_store_and_tfdata_alike():
  result = run_module('benchmarks.image_pipeline', '--images=48',
                      '--batch=16', '--epochs=1', '--repeats=1',
                      '--workers=2', '--vs_tfdata', '--json')
  assert result.returncode == 0, result.stderr[-2000:]
  r = json.loads(result.stdout.strip().splitlines()[-1])
  assert list(r['images_per_sec']) == [
      f'{path}, {cores}' for cores in ('1 core', '2 workers')
      for path in ('folder', 'store (jpeg)', 'store (raw)', 'tf.data')], r
  assert all(rate > 0 for rate in r['images_per_sec'].values())


@pytest.mark.parametrize('size', [(500, 375), (1200, 900), (700, 513),
                                  (700, 514), (1100, 1027), (3000, 2100)])
def test_tfdata_twin_does_the_streaming_pipeline_s_work(tmp_path, size):
  """The same decode (DCT scale included: PIL's draft halves from a shorter
  side of 514, not 512) pixel for pixel; with a crop as large as the square,
  the same central 256x256 up to the resizers' rounding."""
  skimage_data = pytest.importorskip('skimage.data')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import images as image_ops  # pylint: disable=g-import-not-at-top
  from benchmarks import tfdata_pipeline  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'chelsea.jpg')
  Image.fromarray(skimage_data.chelsea()).resize(size).save(path, quality=90)
  with open(path, 'rb') as f:
    raw = f.read()
  decoded = np.asarray(image_ops.decode(raw, 256))
  np.testing.assert_array_equal(
      tfdata_pipeline._decode_reduced(raw, 256).numpy(), decoded)
  ours = image_ops.center_square(
      image_ops.resize_shorter(image_ops.decode(raw, 256), 256), 256)
  ds = tfdata_pipeline.train_batches([path], [3], seed=0, batch=1, threads=1,
                                     crop_size=256)
  images, labels = next(ds.as_numpy_iterator())
  assert images.shape == (1, 256, 256, 3) and images.dtype == np.uint8
  assert labels.tolist() == [3]
  diff = np.abs(images[0].astype(int) - ours.astype(int))
  assert diff.mean() < 0.5 and diff.max() <= 2, (diff.mean(), diff.max())
  # A window one pixel off differs by far more.
  shifted = np.abs(images[0, 1:].astype(int) - ours[:-1].astype(int))
  assert shifted.mean() > 5 * diff.mean()
