"""`python -m alexnet_jax.benchmark` in its short mode: the JSON line has
every field with sane values (never a timing assertion)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

FIELDS = ('model', 'batch_size', 'image_size', 'dtype', 'images_per_sec',
          'step_ms', 'compile_s', 'flops_per_step', 'mfu', 'device')


def run(*args):
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.benchmark', '--model=alexnet_tiny',
       '--batch_size=8', '--steps=2', '--warmup=1', '--json', *args],
      cwd=REPO, capture_output=True, text=True, timeout=300)


def test_json_has_the_fields_and_sane_values():
  with_torch = importlib.util.find_spec('torch') is not None
  result = run(*(['--vs_pytorch'] if with_torch else []))
  assert result.returncode == 0, result.stderr[-2000:]
  r = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(FIELDS) <= set(r)
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


def test_bad_arguments_are_one_usage_line():
  result = run('--steps=0')
  assert result.returncode == 2
  assert '--steps must be >= 1, got 0' in result.stderr
