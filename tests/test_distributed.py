"""Scale-out on CPU: 8 simulated devices against 1, FC model parallelism
against data parallelism, checkpoints across device counts, a real 2-process
jax.distributed run against a single process, no retracing, and the
multi-process failure messages.

Device counts are fixed when a process starts JAX, so each configuration runs
as its own `python -m alexnet_jax.main` process.
"""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax.runtime import distributed
from tests import cli
from tests.conftest import REPO
from tests.conftest import require_cifar_subset
from tests.helpers import simulated_devices_env
from tests.multiproc import free_port, main_args, params_of, train_losses
from tests.multiproc import assert_trees_close, run_main


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Six steps of the tiny net on 1 device, 8 devices, 8 devices with FC
  model parallelism over 2, and 2 real processes."""
  cifar = require_cifar_subset()
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2')
  root = tmp_path_factory.mktemp('scale')
  out = {'cifar': cifar, 'env': env, 'root': root}
  for name, devices, extra in (
      ('one', 1, []), ('eight', 8, []),
      ('fc_mp', 8, ['--config.model_parallelism=2'])):
    out[name] = str(root / name)
    result = run_main(out[name], cifar, env, devices=devices, extra=extra)
    out[name + '_log'], out[name + '_stderr'] = result.stdout, result.stderr
  return out


@pytest.mark.slow
def test_eight_devices_match_one_device(runs):
  assert "'data': 8" in runs['eight_log']
  assert_trees_close(params_of(runs['eight']), params_of(runs['one']))
  np.testing.assert_allclose(train_losses(runs['eight']),
                             train_losses(runs['one']), rtol=1e-5)


@pytest.mark.slow
def test_fc_model_parallel_matches_data_parallel(runs):
  log = runs['fc_mp_log']
  assert "'data': 4, 'model': 2" in log
  assert "fc6 kernel sharded (None, 'model')" in log
  assert_trees_close(params_of(runs['fc_mp']), params_of(runs['eight']))
  np.testing.assert_allclose(train_losses(runs['fc_mp']),
                             train_losses(runs['one']), rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_moves_between_device_counts(runs, tmp_path):
  """8 -> 1 and 1 -> 8 (with FC split over 'model'): resume and go on, and
  end where an uninterrupted 8-step run on one device ends."""
  cifar, env = runs['cifar'], runs['env']
  more = ['--config.num_steps=8']
  straight = str(tmp_path / 'straight')
  run_main(straight, cifar, env, devices=1, extra=more)
  from_eight = str(tmp_path / 'from_eight')
  shutil.copytree(runs['eight'], from_eight)
  from_one = str(tmp_path / 'from_one')
  shutil.copytree(runs['one'], from_one)
  log = run_main(from_eight, cifar, env, devices=1, extra=more).stdout
  assert 'resuming from' in log and 'at step 6' in log
  log = run_main(from_one, cifar, env, devices=8,
                 extra=more + ['--config.model_parallelism=2']).stdout
  assert 'resuming from' in log and 'at step 6' in log
  assert_trees_close(params_of(from_eight, 8), params_of(straight, 8))
  assert_trees_close(params_of(from_one, 8), params_of(straight, 8))
  np.testing.assert_allclose(train_losses(from_eight), train_losses(straight),
                             rtol=1e-5)


@pytest.mark.slow
def test_train_step_compiles_once(runs):
  """Evaluation, the plateau value, logging and checkpoints cause no
  recompilation, on any mesh (JAX_LOG_COMPILES=1 logs each compilation)."""
  for name in ('one', 'eight', 'fc_mp'):
    compiles = [l for l in runs[name + '_stderr'].splitlines()
                if 'Compiling jit(step_fn)' in l]
    assert len(compiles) == 1, (name, compiles)


@pytest.mark.slow
def test_two_processes_match_one_process(runs, tmp_path):
  """A real 2-process job through jax.distributed on localhost, started by
  the environment alone (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID: local_multiprocess.sh passes no flags)."""
  workdir = str(tmp_path / 'two')
  env = dict(runs['env'], PYTHON=sys.executable)
  args = ['bash', 'launch/local_multiprocess.sh', '2',
          *main_args(workdir, runs['cifar'])]
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert '2 devices (2 processes' in result.stdout
  assert '(explicit start)' in result.stderr  # Not JAX's detection.
  np.testing.assert_allclose(train_losses(workdir), train_losses(runs['one']),
                             rtol=1e-5)
  assert_trees_close(params_of(workdir), params_of(runs['one']))


def _run_losses(workdir, run):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f)
            if r['split'] == 'train' and r.get('run') == run]


@pytest.mark.slow
def test_a_stack_spread_over_devices_and_processes(runs, tmp_path):
  """A stack of 2 runs over the mesh's 'runs' axis: on 2 devices of one
  process each device holds one run (its state split over 'runs'), and on 2
  real processes each process holds one run and the whole training set;
  run 0 trains as the single run with its seed, and the two layouts agree."""
  stack = ['--config.runs=2', '--config.runs_parallelism=2']
  devices = str(tmp_path / 'devices')
  log = run_main(devices, runs['cifar'], runs['env'], devices=2,
                 extra=stack).stdout
  assert "'runs': 2, 'data': 1" in log and 'in each of 2 run groups' in log
  assert "conv1 kernel sharded ('runs',)" in log
  # Too big for its memory: one line, sized by a stack that fills each group.
  refused = cli.run_cli(
      main_args(str(tmp_path / 'big'), runs['cifar'], [
          '--config.runs=4', '--config.runs_parallelism=2',
          '--config.memory_limit_gib=0.0001']),
      simulated_devices_env(runs['env'], 2))
  cli.assert_one_error_line(refused, 'a stack of 4 runs needs about')
  assert not os.path.exists(tmp_path / 'big')
  processes = str(tmp_path / 'processes')
  result = subprocess.run(
      ['bash', 'launch/local_multiprocess.sh', '2',
       *main_args(processes, runs['cifar'], stack)], cwd=REPO,
      env=dict(runs['env'], PYTHON=sys.executable), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  np.testing.assert_allclose(_run_losses(devices, 0),
                             train_losses(runs['one']), rtol=2e-4)
  for run in (0, 1):
    np.testing.assert_allclose(_run_losses(processes, run),
                               _run_losses(devices, run), rtol=1e-5)


@pytest.mark.slow
def test_unreachable_coordinator_is_one_line_naming_it(runs, tmp_path):
  port = free_port()
  env = dict(runs['env'], JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/cifar10.py',
       f'--workdir={tmp_path / "w"}', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', '--process_id=1', '--coordinator_timeout=5'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert f'127.0.0.1:{port}' in errors[0] and 'process 1' in errors[0]
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.slow
def test_processes_that_disagree_about_the_workdir_stop(runs, tmp_path):
  port = free_port()
  env = dict(runs['env'], JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/cifar10.py',
       f'--workdir={tmp_path / f"w{i}"}', '--config.model=alexnet_tiny',
       f'--config.data_dir={runs["cifar"]}', '--config.num_steps=2',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}', '--coordinator_timeout=60'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2, err[-2000:]
    assert 'is not shared by all processes' in err
  assert not os.path.exists(tmp_path / 'w0' / 'checkpoints')


# --- How a process starts --------------------------------------------------------

SLURM_STEP = dict(SLURM_JOB_ID='1234', SLURM_STEP_NODELIST='gpu[017-020]',
                  SLURM_NTASKS='32', SLURM_PROCID='13', SLURM_LOCALID='5',
                  SLURM_STEP_NUM_NODES='4')


@pytest.mark.parametrize('environ, flags, want', [
    ({}, {}, distributed.Start('auto')),
    ({'JAX_COORDINATOR_ADDRESS': 'h:7', 'JAX_NUM_PROCESSES': '4',
      'JAX_PROCESS_ID': '3'}, {}, distributed.Start('explicit', 'h:7', 4, 3)),
    ({'JAX_COORDINATOR_ADDRESS': 'h:7', 'JAX_NUM_PROCESSES': '4',
      'JAX_PROCESS_ID': '3'}, {'process_id': 1},
     distributed.Start('explicit', 'h:7', 4, 1)),  # Flags win.
    ({}, {'num_processes': 1}, distributed.Start('single')),
    # Flags or JAX_* variables win over SLURM's, and inside srun they get
    # the GPUs a SLURM start would give (never JAX's detection: one GPU).
    (dict(SLURM_STEP, JAX_COORDINATOR_ADDRESS='h:7', JAX_NUM_PROCESSES='2',
          JAX_PROCESS_ID='0'), {},
     distributed.Start('explicit', 'h:7', 2, 0, [5])),
    (dict(SLURM_STEP, SLURM_NTASKS='4', SLURM_LOCALID='0',
          CUDA_VISIBLE_DEVICES='0,1,2,3'),
     {'coordinator_address': 'h:7', 'num_processes': 4, 'process_id': 2},
     distributed.Start('explicit', 'h:7', 4, 2, [0, 1, 2, 3])),
    (dict(SLURM_STEP, CUDA_VISIBLE_DEVICES='5'),
     {'coordinator_address': 'h:7', 'num_processes': 32, 'process_id': 13},
     distributed.Start('explicit', 'h:7', 32, 13, [0])),
    (dict(SLURM_STEP, JAX_LOCAL_DEVICE_IDS='0,1'),
     {'coordinator_address': 'h:7', 'num_processes': 32, 'process_id': 13},
     distributed.Start('explicit', 'h:7', 32, 13, None)),
    # srun: 8 tasks on each of 4 nodes, every GPU visible: task i -> GPU i.
    (SLURM_STEP, {}, distributed.Start('slurm', 'gpu017:62674', 32, 13, [5])),
    (dict(SLURM_STEP, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7'), {},
     distributed.Start('slurm', 'gpu017:62674', 32, 13, [5])),
    # SLURM bound one GPU to the task (--gpus-per-task=1): that one.
    (dict(SLURM_STEP, CUDA_VISIBLE_DEVICES='5'), {},
     distributed.Start('slurm', 'gpu017:62674', 32, 13, [0])),
    # One task per node: all of the node's GPUs (JAX alone: GPU 0 only).
    (dict(SLURM_STEP, SLURM_NTASKS='4', SLURM_PROCID='2', SLURM_LOCALID='0'),
     {}, distributed.Start('slurm', 'gpu017:62674', 4, 2, [])),
    (dict(SLURM_STEP, SLURM_NTASKS='4', SLURM_PROCID='2', SLURM_LOCALID='0',
          CUDA_VISIBLE_DEVICES='0,1,2,3'), {},
     distributed.Start('slurm', 'gpu017:62674', 4, 2, [0, 1, 2, 3])),
    # `srun --pty python ...` in an allocation: one process, every GPU.
    (dict(SLURM_STEP, SLURM_NTASKS='1', SLURM_PROCID='0', SLURM_LOCALID='0'),
     {}, distributed.Start('single')),
    # The user's JAX_LOCAL_DEVICE_IDS is left for JAX to read.
    (dict(SLURM_STEP, JAX_LOCAL_DEVICE_IDS='0,1'), {},
     distributed.Start('slurm', 'gpu017:62674', 32, 13, None)),
    (dict(SLURM_STEP, JAX_COORDINATOR_PORT='5555'), {},
     distributed.Start('slurm', 'gpu017:5555', 32, 13, [5])),
], ids=['nothing', 'jax-env', 'flag-wins', 'one-process', 'jax-env-in-slurm',
        'flags-in-srun-task-per-node', 'flags-in-srun-bound',
        'flags-in-srun-user-device-ids', 'slurm', 'slurm-all-visible', 'slurm-bound', 'task-per-node',
        'task-per-node-visible', 'srun-pty', 'user-device-ids', 'slurm-port'])
def test_plan_start(environ, flags, want):
  assert distributed.plan_start(environ=environ, **flags) == want


def test_start_by_hand_gives_jax_everything_and_no_detection(monkeypatch):
  """An explicit start passes every argument and turns JAX's cluster
  detection off (else its SLURM detector pins one GPU per task, and its
  Kubernetes one wants a package not installed); the timeouts are the ones
  asked for, under JAX 0.10's argument names."""
  calls = []
  def initialize(**kwargs):
    calls.append(kwargs)
  initialize.__signature__ = inspect.signature(jax.distributed.initialize)
  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  distributed._join(distributed.Start('explicit', 'h:7', 2, 0, [5]),
                    distributed.Timeouts(start=30, heartbeat=20, shutdown=40))
  assert calls == [dict(
      coordinator_address='h:7', num_processes=2, process_id=0,
      local_device_ids=[5], cluster_detection_method='deactivate',
      initialization_timeout=30, heartbeat_timeout_seconds=20,
      shutdown_timeout_seconds=40)]


def test_timeouts_follow_the_installed_jax():
  """JAX 0.10.2 (installed) takes all three; a JAX without one gets the
  others only rather than a TypeError at start."""
  timeouts = distributed.Timeouts(start=30, heartbeat=20, shutdown=40)
  assert distributed.timeout_kwargs(timeouts) == {
      'initialization_timeout': 30, 'heartbeat_timeout_seconds': 20,
      'shutdown_timeout_seconds': 40}
  def older(coordinator_address=None, initialization_timeout=300):
    del coordinator_address, initialization_timeout
  assert distributed.timeout_kwargs(timeouts, older) == {
      'initialization_timeout': 30}
  assert timeouts.lost_after() == 10


@pytest.mark.parametrize('environ, flags, message', [
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'}, {},
     'missing: --coordinator_address (JAX_COORDINATOR_ADDRESS)'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:7'}, {},
     'missing: --num_processes (JAX_NUM_PROCESSES), --process_id'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:7', 'JAX_NUM_PROCESSES': 'two',
      'JAX_PROCESS_ID': '0'}, {}, "JAX_NUM_PROCESSES='two' is not an integer"),
    ({'JAX_COORDINATOR_ADDRESS': 'h:7', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '-1'}, {}, "JAX_PROCESS_ID='-1' is not an integer >= 0"),
    ({}, {'coordinator_address': 'h:7', 'num_processes': 2, 'process_id': 2},
     'process id 2 is not in 0..1'),
    ({}, {'coordinator_address': 'h', 'num_processes': 2, 'process_id': 0},
     "coordinator address 'h' is not HOST:PORT"),
    ({'JAX_COORDINATOR_ADDRESS': ':8476', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '1'}, {}, "coordinator address ':8476' is not HOST:PORT"),
], ids=['no-address', 'no-count', 'bad-count', 'negative-id', 'id-too-big',
        'no-port', 'no-host'])
def test_plan_start_errors_name_the_value(environ, flags, message):
  with pytest.raises(distributed.DistributedError, match=re.escape(message)):
    distributed.plan_start(environ=environ, **flags)


@pytest.mark.parametrize('nodes', ['node001', 'node001,host2',
                                   'node[001-0015],host2',
                                   'node[001,007-015],host2', 'a-b[10-20]'])
@pytest.mark.parametrize('job_id', ['1234', '99999'])
def test_slurm_coordinator_is_the_one_jax_computes(nodes, job_id, monkeypatch):
  """Same address as JAX's own SLURM detection, so either start meets."""
  from jax._src.clusters import slurm_cluster  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('SLURM_JOB_ID', job_id)
  monkeypatch.setenv('SLURM_STEP_NODELIST', nodes)
  monkeypatch.delenv('JAX_COORDINATOR_PORT', raising=False)
  assert distributed.slurm_coordinator(
      {'SLURM_JOB_ID': job_id, 'SLURM_STEP_NODELIST': nodes}) == \
      slurm_cluster.SlurmCluster.get_coordinator_address(None, None)


@pytest.mark.parametrize('env, flags, text', [
    # Open MPI's variable present but unreadable: JAX's detection raises.
    ({'OMPI_MCA_orte_hnp_uri': '1531576320.0;garbled'}, [],
     'could not start from it (RuntimeError: Could not parse coordinator'),
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0'}, [],
     'missing: --coordinator_address (JAX_COORDINATOR_ADDRESS)'),
    ({}, ['--coordinator_address=127.0.0.1:1', '--num_processes=2',
          '--process_id=7'], 'process id 7 is not in 0..1'),
], ids=['ompi-detection-fails', 'env-without-address', 'wrong-process-id'])
@pytest.mark.slow
def test_failed_start_is_one_line(runs, tmp_path, env, flags, text):
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/cifar10.py',
       f'--workdir={tmp_path / "w"}', *flags],
      cwd=REPO, env=dict(runs['env'], JAX_PLATFORMS='cpu', **env),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and text in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'w')
