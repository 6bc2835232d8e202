"""The SLURM and local launch scripts (and every script's syntax): the exact
commands their dry runs print, and one-line errors on bad input (tpu_vm.sh:
test_launch_tpu.py). Dry runs only: nothing here needs gcloud, SLURM,
a network or a second process of alexnet_jax.main."""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
TPU = LAUNCH / 'tpu_vm.sh'
SLURM = LAUNCH / 'slurm_gpu.sbatch'
LOCAL = LAUNCH / 'local_multiprocess.sh'
BASH = shutil.which('bash')


def run(script, *args, env=None):
  return subprocess.run([BASH, str(script), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=30)


def commands(stdout):
  """Dry-run output as argv lists; every line must be one `+ ` command."""
  lines = stdout.splitlines()
  assert lines and all(line.startswith('+ ') for line in lines), stdout
  return [shlex.split(line[2:]) for line in lines]


def option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def assert_one_error_line(result, expected):
  """Exit 2, nothing on stdout, one `error:` line that says `expected`."""
  assert result.returncode == 2, result
  assert result.stdout == ''
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  assert expected in lines[0], (expected, lines[0])


@pytest.mark.parametrize('script', [TPU, SLURM, LOCAL], ids=lambda p: p.name)
def test_syntax_and_executable(script):
  subprocess.run([BASH, '-n', str(script)], check=True, timeout=30)
  assert os.access(script, os.X_OK)


# --- slurm_gpu.sbatch --------------------------------------------------------


@pytest.fixture
def slurm_env(bare_path):
  """DRY_RUN outside any job: no SLURM_* variables, no srun on PATH."""
  return {'PATH': bare_path, 'DRY_RUN': '1', 'VENV': ''}


def test_slurm_dry_run_defaults(slurm_env):
  result = run(SLURM, env=slurm_env)
  assert result.returncode == 0, result.stderr
  [argv] = commands(result.stdout)
  assert argv[:3] == ['srun', '--kill-on-bad-exit=1', '--gpu-bind=none']
  main = argv.index('alexnet_jax.main')
  assert argv[main - 2:main] == ['python', '-m']
  assert argv[main + 1:] == [
      '--config=configs/cifar10.py',
      f'--workdir={REPO}/workdirs/alexnet_jax-local']


def test_slurm_dry_run_in_job_with_overrides(slurm_env):
  env = dict(slurm_env, SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NAME='aj',
             SLURM_JOB_ID='1234', SLURM_CPUS_PER_TASK='8',
             CONFIG='configs/cifar10_227.py', DATA_DIR='/shared/cifar 10')
  result = run(SLURM, '--', '--config.num_epochs=90', 'two words', env=env)
  assert result.returncode == 0, result.stderr
  [argv] = commands(result.stdout)
  assert '--cpus-per-task=8' in argv[:argv.index('-m')]
  assert argv[argv.index('alexnet_jax.main') + 1:] == [
      '--config=configs/cifar10_227.py', f'--workdir={REPO}/workdirs/aj-1234',
      '--config.data_dir=/shared/cifar 10', '--config.num_epochs=90',
      'two words']

  env['WORKDIR'] = '/shared/runs/x'
  [argv] = commands(run(SLURM, '--config.seed=3', env=env).stdout)
  assert '--workdir=/shared/runs/x' in argv and argv[-1] == '--config.seed=3'


def test_slurm_sbatch_headers():
  headers = [line.split(None, 1)[1] for line in SLURM.read_text().splitlines()
             if line.startswith('#SBATCH')]
  for header in ('--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8',
                 '--cpus-per-task=8', '--time=24:00:00',
                 '--job-name=alexnet_jax', '--signal=B:USR1@300',
                 '--requeue', '--open-mode=append'):
    assert header in headers
  # Each task must see every GPU of its node (NCCL's peer-to-peer paths).
  assert not any(h.startswith('--gpus-per-task') for h in headers)


@pytest.mark.parametrize('overrides, expected', [
    ({'CONFIG': 'configs/missing.py'}, 'CONFIG configs/missing.py not found'),
    ({'VENV': '/nonexistent/venv'}, 'VENV=/nonexistent/venv has no bin/activate'),
], ids=['missing-config', 'missing-venv'])
def test_slurm_bad_input(slurm_env, overrides, expected):
  assert_one_error_line(run(SLURM, env=dict(slurm_env, **overrides)), expected)


# --- local_multiprocess.sh ---------------------------------------------------


@pytest.mark.parametrize('n', [1, 3])
def test_local_dry_run_commands(n):
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop('PORT', None)
  result = run(LOCAL, '--dry-run', str(n), '--config=configs/cifar10.py',
               '--workdir=/tmp/a b', env=env)
  assert result.returncode == 0, result.stderr
  argvs = commands(result.stdout)
  assert len(argvs) == n
  ports = set()
  for i, argv in enumerate(argvs):
    # Started through JAX's environment variables alone, no flags.
    assert argv[:5] == ['env', 'JAX_PLATFORMS=cpu',
                        argv[2], f'JAX_NUM_PROCESSES={n}',
                        f'JAX_PROCESS_ID={i}']
    name, address = argv[2].split('=')
    assert name == 'JAX_COORDINATOR_ADDRESS'
    host, port = address.rsplit(':', 1)
    assert host == '127.0.0.1' and 0 < int(port) < 65536
    ports.add(port)
    assert argv[5:8] == [sys.executable, '-m', 'alexnet_jax.main']
    assert argv[8:] == ['--config=configs/cifar10.py', '--workdir=/tmp/a b']
  assert len(ports) == 1


def test_local_dry_run_honours_port_and_python():
  env = dict(os.environ, PORT='23456', PYTHON='/opt/py/bin/python3')
  argvs = commands(run(LOCAL, '--dry-run', '2', env=env).stdout)
  assert [a[5] for a in argvs] == ['/opt/py/bin/python3'] * 2
  assert all(a[2] == 'JAX_COORDINATOR_ADDRESS=127.0.0.1:23456' for a in argvs)


@pytest.mark.parametrize('args, expected', [
    (('0',), 'N must be a positive integer, got: 0'),
    (('abc',), 'N must be a positive integer, got: abc'),
    (('-1',), 'N must be a positive integer, got: -1'),
    ((), 'missing N, the number of processes'),
    (('--dry-run', '0'), 'N must be a positive integer, got: 0'),
    (('--dry-run', 'abc'), 'N must be a positive integer, got: abc'),
], ids=['zero', 'abc', 'negative', 'missing', 'dry-zero', 'dry-abc'])
def test_local_bad_n(args, expected):
  assert_one_error_line(run(LOCAL, *args, env=dict(os.environ)), expected)


def test_local_bad_port():
  env = dict(os.environ, PORT='70000')
  assert_one_error_line(run(LOCAL, '--dry-run', '2', env=env),
                        'PORT must be a TCP port number (1-65535), got: 70000')


def test_local_python_without_jax_is_one_line(tmp_path):
  """No venv active and none in the checkout: the interpreter is checked
  before any process starts, with a line that says what to do."""
  env = dict(os.environ, PYTHON='/usr/bin/python3')
  env.pop('VIRTUAL_ENV', None)
  if subprocess.run(['/usr/bin/python3', '-c', 'import jax'],
                    capture_output=True).returncode == 0:
    pytest.skip('/usr/bin/python3 has jax: nothing to refuse')
  assert_one_error_line(run(LOCAL, '2', '--config=configs/cifar10.py',
                            f'--workdir={tmp_path}', env=env),
                        'cannot import jax and absl: set PYTHON')
