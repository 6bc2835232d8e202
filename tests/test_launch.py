"""The SLURM and local launch scripts (and every shell script's syntax): the
exact commands their dry runs print, and one-line errors on bad input (the
TPU launcher, launch/tpu_vm.py: test_launch_tpu*.py). Dry runs only: nothing
here needs SLURM, a network or a second process of alexnet_jax.main."""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.launch_scripts import BASH, LAUNCH, REPO, assert_one_error_line
from tests.launch_scripts import commands, option, run
from tests.slurm_cluster import FAKE_SLURM, calls, cluster_env

SLURM = LAUNCH / 'slurm_gpu.sbatch'
LOCAL = LAUNCH / 'local_multiprocess.sh'


@pytest.mark.parametrize('script', [SLURM, LOCAL, LAUNCH / 'tpu_worker.sh'],
                         ids=lambda p: p.name)
def test_syntax_and_executable(script):
  subprocess.run([BASH, '-n', str(script)], check=True, timeout=30)
  assert os.access(script, os.X_OK)


# --- slurm_gpu.sbatch --------------------------------------------------------
# Dry runs, and sbatch runs under the strict fake SLURM (tests/fake_slurm)
# with srun only recording its step. The script's runs with tasks:
# test_launch_slurm.py.

CLUSTERS_MD = REPO / 'docs' / 'clusters.md'


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
      f'--workdir={REPO}/workdirs/alexnet_jax-local', '--config.platform=gpu']


def test_slurm_dry_run_in_job_with_overrides(slurm_env):
  env = dict(slurm_env, SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NAME='aj',
             SLURM_JOB_ID='1234', SLURM_CPUS_ON_NODE='64',
             SLURM_GPUS_ON_NODE='8', CONFIG='configs/cifar10_227.py',
             DATA_DIR='/shared/cifar 10')
  result = run(SLURM, '--', '--config.num_epochs=90', 'two words', env=env)
  assert result.returncode == 0, result.stderr
  [argv] = commands(result.stdout)
  assert '--cpus-per-task=8' in argv[:argv.index('-m')]
  assert argv[argv.index('alexnet_jax.main') + 1:] == [
      '--config=configs/cifar10_227.py', f'--workdir={REPO}/workdirs/aj-1234',
      '--config.platform=gpu', '--config.data_dir=/shared/cifar 10',
      '--config.num_epochs=90', 'two words']

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


def sbatch(tmp_path, *args, gpus, cpus, script=SLURM, site_gres=0,
           script_args=('--', '--config.batch_size=1024'), **env):
  """The fake sbatch on a cluster of GPUS-GPU, CPUS-CPU nodes whose
  --exclusive brings GPUs if SITE_GRES, srun only recorded: (result, srun's
  argv, the allocation's variables)."""
  env = dict(cluster_env(tmp_path, node_gpus=gpus, node_cpus=cpus,
                         exclusive_gres=site_gres),
             FAKE_SRUN_RECORD_ONLY='1', VENV='', **env)
  for name in ('GPUS_PER_NODE', 'TASKS_PER_NODE', 'CPUS_PER_TASK'):
    env.setdefault(name, '')
  result = subprocess.run([sys.executable, str(FAKE_SLURM / 'sbatch'), *args,
                           str(script), *script_args],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)
  [srun] = [shlex.split(l)[1:] for l in calls(tmp_path, 'srun')] or [None]
  [alloc] = [dict(kv.split('=', 1) for kv in l.split()[1:])
             for l in calls(tmp_path, 'allocation')] or [None]
  return result, srun, alloc


@pytest.mark.parametrize('gpus, cpus', [(4, 32), (8, 64), (8, 48), (4, 128)])
def test_documented_usage_fits_any_node_shape(tmp_path, gpus, cpus):
  """`sbatch --nodes=2 --gpus-per-node=G launch/slurm_gpu.sbatch -- ...` on
  G-GPU nodes, at a site whose --exclusive brings no GPUs: one task per GPU,
  the node's CPUs shared among them, the GPUs asked for by the step, and
  tasks that stop if they see no GPU."""
  result, srun, alloc = sbatch(tmp_path, '--nodes=2', f'--gpus-per-node={gpus}',
                               gpus=gpus, cpus=cpus)
  assert result.returncode == 0, result.stderr
  assert alloc['SLURM_GPUS_ON_NODE'] == str(gpus)
  assert srun[:srun.index('python')] == [
      '--kill-on-bad-exit=1', '--gpu-bind=none', '--nodes=2',
      f'--ntasks={2 * gpus}', f'--ntasks-per-node={gpus}',
      f'--gpus-per-node={gpus}', f'--cpus-per-task={cpus // gpus}']
  assert srun[srun.index('alexnet_jax.main') + 1:] == [
      '--config=configs/cifar10.py',
      f'--workdir={REPO}/workdirs/alexnet_jax-4242', '--config.platform=gpu',
      '--config.batch_size=1024']
  assert f'2 nodes x {gpus} tasks, {gpus} GPUs per node' in result.stderr


def test_exclusive_alone_works_where_it_brings_the_gpus(tmp_path):
  """Where the site's --exclusive allocates every GPU, the job needs no
  --gpus-per-node: the script asks the step for all of them."""
  result, srun, _ = sbatch(tmp_path, '--nodes=2', gpus=4, cpus=32,
                           site_gres=1)
  assert result.returncode == 0, result.stderr
  assert '--gpus-per-node=4' in srun and '--ntasks=8' in srun


@pytest.mark.parametrize('args, env, expected', [
    ([], {}, 'holds no GPUs'),
    ([], {'GPUS_PER_NODE': '8'}, 'holds no GPUs'),
    (['--gpus-per-node=4'], {'GPUS_PER_NODE': '8'},
     'GPUS_PER_NODE=8, but job 4242 holds 4 GPUs per node'),
], ids=['no-gpus', 'no-gpus-but-GPUS_PER_NODE', 'fewer-than-GPUS_PER_NODE'])
def test_a_job_without_its_gpus_stops_with_one_line(tmp_path, args, env,
                                                    expected):
  """At a site whose --exclusive brings no GPUs, a job submitted without
  --gpus-per-node holds none: one `error:` line naming --gpus-per-node,
  exit status 2, no step started (not srun's refusal of the step)."""
  result, srun, _ = sbatch(tmp_path, '--nodes=2', *args, gpus=8, cpus=64,
                           **env)
  assert result.stdout == 'Submitted batch job 4242\n'
  assert_one_error_line(
      subprocess.CompletedProcess([], result.returncode, '', result.stderr),
      expected)
  assert '--gpus-per-node' in result.stderr and srun is None


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
    assert result.stderr == ('sbatch: error: Batch job submission failed: '
                             'Requested node configuration is not available\n')
  result, _, _ = sbatch(tmp_path, gpus=8, cpus=64, script=old)
  assert result.returncode == 0 and 'ran' in result.stdout


def test_account_partition_qos_and_gpus_per_node_pass_through(tmp_path):
  """sbatch's own options go on its command line; --gpus-per-node=a100:4 on
  an 8-GPU node gives 4 tasks of 4 GPUs; the job's account/partition/qos
  reach the job (srun inherits them from it)."""
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
  result, srun, _ = sbatch(tmp_path, '--nodes=3', '--gpus-per-node=8', gpus=8,
                           cpus=64, GPUS_PER_NODE='2', TASKS_PER_NODE='1',
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


# The documentation's SLURM commands, as written.

def slurm_section(text):
  return text.split('### SLURM', 1)[1].split('\n### ', 1)[0]


def documented_commands(word):
  """The `WORD ...` commands of docs/clusters.md's SLURM section and
  launchers table, README.md and the script's header (inline code may wrap
  a line; the header's continue with a backslash)."""
  docs = [slurm_section(CLUSTERS_MD.read_text()),
          '\n'.join(l for l in CLUSTERS_MD.read_text().splitlines()
                    if l.startswith('| SLURM')),
          (REPO / 'README.md').read_text()]
  header = '\n'.join(l[1:].strip() for l in
                     SLURM.read_text().split('\n#SBATCH', 1)[0].splitlines())
  docs.append(header)
  found = [' '.join(span.split()) for text in docs
           for span in re.findall(r'`([^`]+)`', text)
           if span.split()[:1] == [word]]
  found += [' '.join(l.split()) for l in
            header.replace('\\\n', ' ').splitlines()
            if l.startswith(word + ' ')]
  return list(dict.fromkeys(found))


def test_every_documented_submission_asks_for_the_gpus(tmp_path):
  """Each `sbatch ... launch/slurm_gpu.sbatch` the docs show runs, as
  written, on nodes with the GPUs it names, at a site whose --exclusive
  brings none: none relies on --exclusive to allocate GPUs."""
  submissions = [c for c in documented_commands('sbatch')
                 if 'launch/slurm_gpu.sbatch' in c]
  assert len(submissions) >= 2, submissions
  for i, command in enumerate(submissions):
    args = shlex.split(command)[1:]
    gpus = [a.split('=')[1].split(':')[-1] for a in args
            if a.startswith('--gpus-per-node=')]
    assert gpus, f'relies on --exclusive for GPUs: {command}'
    cut = args.index('launch/slurm_gpu.sbatch')
    where = tmp_path / str(i)
    where.mkdir()
    result, srun, _ = sbatch(where, *args[:cut], gpus=int(gpus[0]), cpus=64,
                             script_args=args[cut + 1:])
    assert result.returncode == 0, (command, result.stderr)
    assert f'--gpus-per-node={gpus[0]}' in srun, command
    assert '--config.platform=gpu' in srun, command


def test_docs_say_how_long_a_stopped_job_has_to_save(tmp_path):
  """A scancel'ed, timed-out or preempted job saves only within KillWait
  (and a partition's GraceTime): the SLURM section and the script's header
  say so and show where to read both, and the commands they show work."""
  for text in (slurm_section(CLUSTERS_MD.read_text()), SLURM.read_text()):
    text = ' '.join(text.replace('\n#', ' ').split())  # Wrapped lines joined.
    for needed in ('KillWait', 'GraceTime', 'scontrol show config',
                   'scontrol show partition', '--signal=B:USR1@300',
                   'SIGKILL'):
      assert needed in text, needed
  env = cluster_env(tmp_path, kill_wait=45, grace_time=120)
  shown = [c for c in documented_commands('scontrol')
           if c.startswith('scontrol show')]
  assert any('KillWait' in c for c in shown), shown
  for command in shown:
    result = subprocess.run([BASH, '-c', command], env=env, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, (command, result.stderr)
    assert ('KillWait                = 45 sec' in result.stdout or
            'GraceTime=120' in result.stdout), (command, result.stdout)


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
