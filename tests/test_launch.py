"""The SLURM and local launch scripts (and every shell script's syntax): the
exact commands their dry runs print, and one-line errors on bad input (the
TPU launcher, launch/tpu_vm.py: test_launch_tpu*.py). Dry runs only: nothing
here needs SLURM, a network or a second process of alexnet_jax.main."""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
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


@pytest.mark.parametrize('script', [SLURM, LOCAL, LAUNCH / 'tpu_worker.sh'],
                         ids=lambda p: p.name)
def test_syntax_and_executable(script):
  subprocess.run([BASH, '-n', str(script)], check=True, timeout=30)
  assert os.access(script, os.X_OK)


# --- slurm_gpu.sbatch --------------------------------------------------------

FAKE_SLURM = REPO / 'tests' / 'fake_slurm'


@pytest.fixture
def slurm_env(bare_path):
  """DRY_RUN outside any job: no SLURM_* variables, no srun on PATH."""
  return {'PATH': bare_path, 'DRY_RUN': '1', 'VENV': '', 'GPUS_PER_NODE': '8'}


def test_slurm_dry_run_defaults(slurm_env):
  result = run(SLURM, env=slurm_env)
  assert result.returncode == 0, result.stderr
  [argv] = commands(result.stdout)
  assert argv[:7] == ['srun', '--kill-on-bad-exit=1', '--gpu-bind=none',
                      '--nodes=1', '--ntasks=8', '--ntasks-per-node=8',
                      '--gpus-per-node=8']
  main = argv.index('alexnet_jax.main')
  assert argv[main - 2:main] == ['python', '-m']
  assert argv[main + 1:] == [
      '--config=configs/cifar10.py',
      f'--workdir={REPO}/workdirs/alexnet_jax-local']


def test_slurm_dry_run_in_job_with_overrides(slurm_env):
  env = dict(slurm_env, SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NAME='aj',
             SLURM_JOB_ID='1234', SLURM_CPUS_ON_NODE='64',
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
  """Whole nodes of any shape: nothing in the headers fixes GPUs, tasks or
  CPUs per node (the script reads them from the allocation)."""
  headers = [line.split(None, 1)[1] for line in SLURM.read_text().splitlines()
             if line.startswith('#SBATCH')]
  for header in ('--nodes=2', '--exclusive', '--mem=0', '--time=24:00:00',
                 '--job-name=alexnet_jax', '--signal=B:USR1@300',
                 '--requeue', '--open-mode=append'):
    assert header in headers
  for fixed in ('--gpus', '--ntasks', '--cpus', '--gres', '--account',
                '--partition', '--qos'):
    assert not any(h.startswith(fixed) for h in headers), fixed


def sbatch(tmp_path, *args, gpus, cpus, script=SLURM, **env):
  """The fake sbatch on a cluster of GPUS-GPU, CPUS-CPU nodes, srun only
  recorded: (result, srun's argv, the allocation's variables)."""
  log = tmp_path / 'slurm.log'
  log.write_text('')
  env = dict(os.environ, PATH=f'{FAKE_SLURM}{os.pathsep}{os.environ["PATH"]}',
             FAKE_SLURM_LOG=str(log), FAKE_SRUN_RECORD_ONLY='1', VENV='',
             FAKE_SLURM_NODE_GPUS=str(gpus), FAKE_SLURM_NODE_CPUS=str(cpus),
             **env)
  for name in ('GPUS_PER_NODE', 'TASKS_PER_NODE', 'CPUS_PER_TASK'):
    env.setdefault(name, '')
  result = subprocess.run([sys.executable, str(FAKE_SLURM / 'sbatch'), *args,
                           str(script), '--', '--config.batch_size=1024'],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)
  lines = log.read_text().splitlines()
  [srun] = [shlex.split(l)[1:] for l in lines if l.startswith('srun ')] or [None]
  [alloc] = [dict(kv.split('=', 1) for kv in l.split()[1:])
             for l in lines if l.startswith('allocation ')] or [None]
  return result, srun, alloc


@pytest.mark.parametrize('gpus, cpus', [(4, 32), (8, 64), (8, 48), (4, 128)])
def test_readme_one_liner_fits_any_node_shape(tmp_path, gpus, cpus):
  """`sbatch --nodes=2 launch/slurm_gpu.sbatch -- --config.batch_size=1024`
  unchanged on 4- and 8-GPU nodes: one task per GPU, the node's CPUs shared
  among them, all GPUs of the node asked for by the step."""
  result, srun, alloc = sbatch(tmp_path, '--nodes=2', gpus=gpus, cpus=cpus)
  assert result.returncode == 0, result.stderr
  assert alloc['SLURM_GPUS_ON_NODE'] == str(gpus)
  assert srun[:srun.index('python')] == [
      '--kill-on-bad-exit=1', '--gpu-bind=none', '--nodes=2',
      f'--ntasks={2 * gpus}', f'--ntasks-per-node={gpus}',
      f'--gpus-per-node={gpus}', f'--cpus-per-task={cpus // gpus}']
  assert srun[srun.index('alexnet_jax.main') + 1:] == [
      '--config=configs/cifar10.py',
      f'--workdir={REPO}/workdirs/alexnet_jax-4242',
      '--config.batch_size=1024']
  assert f'2 nodes x {gpus} tasks, {gpus} GPUs per node' in result.stderr


def test_the_old_fixed_shape_is_refused_on_4_gpu_nodes(tmp_path):
  """What the fake sbatch models: the script's former headers (8 tasks, 8
  GPUs, 8 CPUs per task per node) are refused at submit time on 4-GPU or
  32-CPU nodes, as SLURM refuses them."""
  old = tmp_path / 'old.sbatch'
  old.write_text('#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=8\n'
                 '#SBATCH --gpus-per-node=8\n#SBATCH --cpus-per-task=8\n'
                 'echo ran\n')
  for gpus, cpus in ((4, 64), (8, 32)):
    result, _, _ = sbatch(tmp_path, gpus=gpus, cpus=cpus, script=old)
    assert result.returncode == 1 and 'ran' not in result.stdout
    assert 'Requested node configuration is not available' in result.stderr
  result, _, _ = sbatch(tmp_path, gpus=8, cpus=64, script=old)
  assert result.returncode == 0 and 'ran' in result.stdout


def test_account_partition_qos_and_gpus_per_node_pass_through(tmp_path):
  """sbatch's own options go on its command line; --gpus-per-node=4 on an
  8-GPU node gives 4 tasks of 4 GPUs; the job's account/partition/qos reach
  the job (srun inherits them from it)."""
  result, srun, alloc = sbatch(
      tmp_path, '--nodes=2', '--account=proj1', '--partition=a100',
      '--qos=high', '--gpus-per-node=a100:4', gpus=8, cpus=64)
  assert result.returncode == 0, result.stderr
  assert (alloc['SLURM_JOB_ACCOUNT'], alloc['SLURM_JOB_PARTITION'],
          alloc['SLURM_JOB_QOS']) == ('proj1', 'a100', 'high')
  assert '--ntasks-per-node=4' in srun and '--gpus-per-node=4' in srun
  assert '--cpus-per-task=16' in srun
  assert not any(a.startswith(('--account', '--partition', '--qos'))
                 for a in srun)


def test_script_parameters_override_the_allocation(tmp_path):
  result, srun, _ = sbatch(tmp_path, '--nodes=3', gpus=8, cpus=64,
                           GPUS_PER_NODE='2', TASKS_PER_NODE='1',
                           CPUS_PER_TASK='12')
  assert result.returncode == 0, result.stderr
  assert srun[:srun.index('python')] == [
      '--kill-on-bad-exit=1', '--gpu-bind=none', '--nodes=3', '--ntasks=3',
      '--ntasks-per-node=1', '--gpus-per-node=2', '--cpus-per-task=12']


@pytest.mark.parametrize('overrides, expected', [
    ({'CONFIG': 'configs/missing.py'}, 'CONFIG configs/missing.py not found'),
    ({'VENV': '/nonexistent/venv'}, 'VENV=/nonexistent/venv has no bin/activate'),
    ({'GPUS_PER_NODE': ''}, 'cannot tell how many GPUs a node has'),
    ({'GPUS_PER_NODE': '0'}, 'GPUS_PER_NODE must be a positive integer, got: 0'),
    ({'TASKS_PER_NODE': 'x'}, 'TASKS_PER_NODE must be a positive integer, got: x'),
    ({'CPUS_PER_TASK': '-2'}, 'CPUS_PER_TASK must be a positive integer, got: -2'),
], ids=['missing-config', 'missing-venv', 'no-gpu-count', 'zero-gpus',
        'bad-tasks', 'bad-cpus'])
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
