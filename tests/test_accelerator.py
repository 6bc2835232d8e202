"""--config.platform: a run that asked for an accelerator never trains on the
CPU by accident. On this CPU-only machine: asking for a GPU or a TPU is one
line and exit 2 with nothing written; on `auto` a backend that failed to
start (a real PJRT backend factory, registered the way JAX's plugins
register, that raises) is said in one line; the GPU causes are found by
loading a real driver library (one compiled here that reports an old CUDA)."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import pytest

from alexnet_jax.runtime import accelerator
from tests.cli import MAIN, assert_one_error_line, error_lines
from tests.conftest import REPO

needs_cpu_only = pytest.mark.skipif(
    jax.default_backend() != 'cpu', reason='this machine has an accelerator')


@needs_cpu_only
@pytest.mark.parametrize('asked, cause', [
    ('gpu', 'no CUDA build of JAX is installed (pip install "jax[cuda13]=='),
    ('tpu', 'no TPU build of JAX is installed (pip install "jax[tpu]=='),
])
def test_an_accelerator_that_is_not_there_is_one_line_and_nothing_written(
    tmp_path, subprocess_env, asked, cause):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      MAIN + ['--config=configs/cifar10.py', f'--workdir={workdir}',
              f'--config.platform={asked}'],
      cwd=REPO, env=subprocess_env, capture_output=True, text=True,
      timeout=120)
  assert_one_error_line(
      result, f"asked for platform '{asked}' (--config.platform) but JAX "
      f"found only 'cpu': {cause}{jax.__version__}")
  assert result.stderr.splitlines() == error_lines(result.stderr)
  assert not workdir.exists()


def test_an_unknown_platform_names_the_valid_ones(tmp_path, subprocess_env):
  result = subprocess.run(
      MAIN + ['--config=configs/cifar10.py', f'--workdir={tmp_path / "w"}',
              '--config.platform=cuda'],
      cwd=REPO, env=subprocess_env, capture_output=True, text=True,
      timeout=120)
  assert_one_error_line(result,
                        "unknown platform 'cuda'; valid: auto, gpu, tpu, cpu")
  assert not (tmp_path / 'w').exists()


FAILING_PLUGIN = '''
def initialize():
  """A PJRT plugin as JAX discovers it (the jax_plugins namespace) whose
  backend fails when started, quietly, as a CUDA plugin without a driver."""
  from jax._src import xla_bridge
  def factory():
    raise RuntimeError('cuInit failed: CUDA_ERROR_NO_DEVICE')
  xla_bridge.register_backend_factory('fakeaccel', factory, priority=500,
                                      fail_quietly=True)
'''


def check_in_child(tmp_path, subprocess_env, platform):
  plugins = tmp_path / 'plugins' / 'jax_plugins' / 'fakeaccel'
  plugins.mkdir(parents=True)
  (plugins / '__init__.py').write_text(FAILING_PLUGIN)
  env = dict(subprocess_env, JAX_PLATFORMS='',
             PYTHONPATH=f'{tmp_path / "plugins"}{os.pathsep}'
             f'{subprocess_env["PYTHONPATH"]}')
  code = textwrap.dedent(f'''
      from alexnet_jax.runtime import accelerator
      accelerator.select({platform!r})
      print(accelerator.check({platform!r}))
  ''')
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


@needs_cpu_only
def test_on_auto_a_backend_that_failed_to_start_is_one_line(
    tmp_path, subprocess_env):
  result = check_in_child(tmp_path, subprocess_env, 'auto')
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'cpu\n'
  warnings = [l for l in result.stderr.splitlines() if 'fakeaccel' in l]
  assert warnings == [
      'warning: the fakeaccel backend failed to start (cuInit failed: '
      'CUDA_ERROR_NO_DEVICE); running on cpu']


@needs_cpu_only
def test_cpu_asked_skips_the_accelerators(tmp_path, subprocess_env):
  """platform=cpu never starts an accelerator backend, so nothing failed."""
  result = check_in_child(tmp_path, subprocess_env, 'cpu')
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'cpu\n' and 'fakeaccel' not in result.stderr


@needs_cpu_only
def test_libtpu_missing_is_not_a_failure_on_auto():
  """JAX always tries libtpu; where it is not installed that is no news."""
  jax.devices()
  assert 'tpu' not in accelerator.failed_accelerators()


LIBCUDA = r'''
int cuDriverGetVersion(int *version) { *version = VERSION; return 0; }
'''


@pytest.fixture
def libcuda(tmp_path):
  """A driver library that answers cuDriverGetVersion, as libcuda.so.1 does."""
  gcc = shutil.which('gcc') or shutil.which('cc')
  if gcc is None:
    pytest.skip('no C compiler to build a stand-in driver library')
  def build(version):
    src = tmp_path / f'libcuda_{version}.c'
    src.write_text(LIBCUDA.replace('VERSION', str(version)))
    lib = tmp_path / f'libcuda_{version}.so'
    subprocess.run([gcc, '-shared', '-fPIC', '-o', str(lib), str(src)],
                   check=True, timeout=60)
    return str(lib)
  return build


def test_a_driver_older_than_the_jax_build_needs_is_named(libcuda):
  lib = libcuda(12080)
  assert accelerator.driver_version(lib) == 12080
  why = accelerator.gpu_cause(None, plugin='jax-cuda13-plugin', libcuda=lib)
  assert why == ('the NVIDIA driver supports CUDA 12.8, older than the CUDA '
                 '13.0 that jax-cuda13-plugin needs (a driver R580 or newer)')


def test_a_driver_library_off_the_library_path_is_named(tmp_path,
                                                        monkeypatch):
  monkeypatch.setenv('LD_LIBRARY_PATH', '/opt/somewhere')
  why = accelerator.gpu_cause(None, plugin='jax-cuda13-plugin',
                              libcuda=str(tmp_path / 'libcuda.so.1'))
  assert why.startswith('the NVIDIA driver library ')
  assert "LD_LIBRARY_PATH='/opt/somewhere'" in why
  assert '/usr/local/nvidia/lib64' in why


def test_a_new_enough_driver_passes_on_the_backend_error(libcuda):
  lib = libcuda(13010)
  why = accelerator.gpu_cause('CUDA_ERROR_OUT_OF_MEMORY', libcuda=lib,
                              plugin='jax-cuda13-plugin')
  assert why == ('the CUDA backend failed to start '
                 '(CUDA_ERROR_OUT_OF_MEMORY)')
  why = accelerator.gpu_cause(None, libcuda=lib, plugin='jax-cuda13-plugin')
  assert why.startswith('no NVIDIA GPU is visible to this process')
