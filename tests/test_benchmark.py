"""`python -m alexnet_jax.benchmark` in its short mode: the JSON line has
every field with sane values (never a timing assertion)."""

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests import cli
from tests.conftest import REPO

FIELDS = ('model', 'batch_size', 'image_size', 'dtype', 'images_per_sec',
          'step_ms', 'compile_s', 'flops_per_step', 'mfu', 'device')


def run(*args, timeout=300):
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.benchmark', '--model=alexnet_tiny',
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
