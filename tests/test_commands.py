"""Every command line as a user meets it: --help prints help and exits 0,
the package imports from any directory, a workdir that is a file is named as
such, and the profiler hook writes a trace."""

import glob
import os
import subprocess
import sys

import pytest

from alexnet_jax import train
from tests import cli
from tests.cli import tiny_config

COMMANDS = ('main', 'evaluate', 'predict', 'convert', 'prepare', 'plot',
            'visualize')


@pytest.mark.parametrize('command', COMMANDS)
def test_help_prints_usage_and_exits_zero(command, tmp_path):
  """From a directory outside the checkout: the package is installed."""
  result = subprocess.run(
      [sys.executable, '-m', f'alexnet_jax.{command}', '--help'],
      cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'alexnet_jax.{command}' in result.stdout or 'usage' in \
      result.stdout.lower(), result.stdout[:500]
  assert 'error' not in result.stderr.lower(), result.stderr[-1000:]


def test_workdir_that_is_a_file_says_so(cifar_dir, tmp_path, subprocess_env):
  path = tmp_path / 'notes.txt'
  path.write_text('a file, not a run')
  result = cli.run_cli(cli.cli_args(cifar_dir, str(path), num_epochs=0,
                                    num_steps=2), subprocess_env)
  cli.assert_one_error_line(result, f'workdir {path} is a file, not a '
                            'directory')
  assert path.read_text() == 'a file, not a run'


@pytest.mark.slow
def test_profile_steps_writes_a_trace_into_the_workdir(cifar_dir, tmp_path):
  """--config.profile_steps=2: an XLA trace that TensorBoard's profile
  plugin reads (WORKDIR/plugins/profile/<run>/<host>.xplane.pb)."""
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(
      tiny_config(cifar_dir, num_epochs=0, num_steps=10, profile_steps=2,
                  eval_every_epochs=0), workdir)
  traces = glob.glob(os.path.join(workdir, 'plugins', 'profile', '*',
                                  '*.xplane.pb'))
  assert traces and os.path.getsize(traces[0]) > 1000, traces
