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
  """The accelerator comparison (eager, channels_last, torch.compile, and
  PyTorch at its best: max-autotune with the normalization compiled in and
  the fused SGD; all with AMP) runs on the CPU too: inductor builds with the
  C compiler. The ratio against the best mode is the fastest mode's."""
  pytest.importorskip('torch')
  modes = ('eager', 'channels_last', 'compile', 'max_autotune')
  result = run('--vs_pytorch', '--half_precision',
               f'--pytorch_modes={",".join(modes)}', timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  r = json.loads(result.stdout.strip().splitlines()[-1])
  assert r['dtype'] == 'bfloat16'
  rows = r['vs_pytorch']
  assert [row['mode'] for row in rows] == [m + '+amp' for m in modes]
  for row in rows:
    assert row['step_ms'] > 0 and row['warmup_s'] > 0
    assert row['speedup'] == pytest.approx(row['step_ms'] / r['step_ms'])
  assert r['pytorch_mode'] == 'eager+amp'
  assert r['speedup_vs_pytorch'] == rows[0]['speedup']
  best = min(rows, key=lambda row: row['step_ms'])
  assert (r['best_pytorch_mode'], r['speedup_vs_best_pytorch']) == (
      best['mode'], best['speedup'])
  for mode in modes:
    assert f'PyTorch {r["pytorch"]} {mode}+amp: ' in result.stdout
  assert (f"against PyTorch at its best here ({best['mode']}): "
          f"{best['speedup']:.2f}x") in result.stdout


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
     'train_step, step_profile, cifar_main, stacked_runs, store_training, '
     'input_pipeline'),
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
  assert [t['status'] for t in report['targets']] == ['not measured'] * 6
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
          'step_profile': {
              'status': 'ok', 'model': 'alexnet_tiny', 'batch_size': 8,
              'dtype': 'float32', 'steps_traced': 2, 'xla_ms': 2.5,
              'op_ms': 2., 'by_kind_ms': {'convolution': 1.5, 'reduce': .5},
              'top': [{'op': 'ynn_fusion.8', 'ms': 1.5, 'share': .75,
                       'what': 'f32[16,3,3,32] <convolution>'}]},
          'cifar_main': {'status': 'error', 'error': 'the main job exited 1',
                         'wall_s': 20., 'data': 'fake', 'pace':
                         '1 step per call', 'full_cifar_epoch_s': 300.},
          'stacked_runs': {
              'status': 'ok', 'runs': 2, 'wall_ratio': 1.25,
              'one': {'wall_s': 20., 'train_images_per_sec': 1000.,
                      'test_top1': .5},
              'stack': {'wall_s': 25., 'train_images_per_sec': 1600.,
                        'test_top1': .52}},
          'store_training': {
              'status': 'ok', 'model': 'alexnet_tiny', 'batch_size': 8,
              'image_size': 32, 'dtype': 'float32',
              'step_alone': {'images_per_sec': 2000., 'step_ms': 4.},
              'runs': {'jpeg': {'images_per_sec': 1500., 'vs_step': .75},
                       'raw': {'images_per_sec': 1900., 'vs_step': .95}}},
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
  assert ('| `configs/cifar10.py`, 0.0 epochs | fake | 1 step per call | '
          '20.0 s | — | — | 300.00 s | — |') in lines
  assert ('| ynn_fusion.8 | 1.500 | 75.0% | `f32[16,3,3,32] <convolution>` |'
          ) in lines
  assert any(l.endswith('by kind, convolution 1.50, reduce 0.50.')
             for l in lines)
  assert lines[lines.index('| the step alone | 2,000 | 100% |') + 1:][:2] == [
      '| store (jpeg), the whole run | 1,500 | 75.0% |',
      '| store (raw), the whole run | 1,900 | 95.0% |']
  assert lines[lines.index('| `--config.runs=2` | 25.0 s (1.25×) | 1,600 | '
                           '52.0% |') - 1] == '| one run | 20.0 s | 1,000 | 50.0% |'
  targets = lines[lines.index('| GPU target | value | status |') + 2:]
  assert '| 1.25× |' in targets[5]
  assert len(targets) == 6 and all(
      '**not measured** (--smoke (tiny shapes))' in l for l in targets)
  assert '| 300.00 s |' in targets[3]
  assert '| 75.0% |' in targets[4]  # The worse encoding's.
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


def test_gpu_targets_read_met_or_not_off_a_gpu_report():
  """Issue 24's five targets and issue 25's, each from its own part's
  figure; the store's is the worse encoding's; a part that did not run
  leaves its target 'not measured'."""
  from benchmarks.gpu import targets  # pylint: disable=g-import-not-at-top
  row = {'model': 'alexnet_torchvision', 'batch_size': 256,
         'dtype': 'bfloat16', 'step_ms': 4., 'mfu': 0.35,
         'speedup_vs_best_pytorch': 1.1, 'device': 'gpu:NVIDIA H100'}
  report = {'smoke': False, 'sections': {
      'device': {'platform': 'gpu'},
      'train_step': {'configs': [{'model': 'alexnet_cifar'}, row]},
      'cifar_main': {'warm_wall_s': 12., 'full_cifar_epoch_s': 0.6},
      'store_training': {'runs': {'jpeg': {'vs_step': 0.9},
                                  'raw': {'vs_step': 0.7}}},
      'stacked_runs': {'wall_ratio': 1.4}}}
  got = {t['key']: (t['status'], t['value']) for t in targets.evaluate(report)}
  assert got == {'mfu': ('met', 0.35), 'vs_best_pytorch': ('not met', 1.1),
                 'main_warm': ('met', 12.), 'cifar_epoch': ('not met', 0.6),
                 'store_vs_step': ('not met', 0.7),
                 'stack_vs_one': ('met', 1.4)}
  del report['sections']['store_training']['runs']['raw']
  report['sections']['cifar_main'] = {}
  got = {t['key']: t['status'] for t in targets.evaluate(report)}
  assert got['store_vs_step'] == got['main_warm'] == 'not measured'
  assert got['mfu'] == 'met'


@pytest.mark.parametrize('what, kind', [
    ('bf16[256,55,55,64]{3,2,1,0} custom-call __cudnn$convForward',
     'convolution'),
    ('f32[16,3,3,32]{3,2,1,0} <convolution>', 'convolution'),
    ('bf16[256,4096]{1,0} custom-call __cublas$lt$matmul', 'matmul'),
    ('f32[8,10]{1,0} <add,dot>', 'matmul'),
    ('u32[256,4096]{1,0} <rng-bit-generator,shift-right-logical>',
     'random bits'),
    ('f32[8,32,32,16]{3,2,1,0} <select-and-scatter>', 'reduce'),
    ('f32[8,34,34,16]{3,2,1,0} <add,maximum,pad>', 'elementwise / other'),
])
def test_profile_kinds_name_each_op_family(what, kind):
  from benchmarks.gpu import step_profile  # pylint: disable=g-import-not-at-top
  assert step_profile.kind(what) == kind
