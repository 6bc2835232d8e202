"""Helpers for the tests that run several `python -m alexnet_jax.main`
processes as one job (test_distributed.py, test_multiprocess_faults.py)."""

import ast
import json
import math
import os
import socket
import subprocess
import sys

import pytest

from tests import cli
from tests.conftest import REPO
from tests.helpers import assert_trees_close  # pylint: disable=unused-import
from tests.helpers import assert_trees_equal
from tests.helpers import child_pids  # pylint: disable=unused-import
from tests.helpers import free_port
from tests.helpers import simulated_devices_env
from tests.helpers import wait_for


def run_main(workdir, cifar_dir, env, devices=1, extra=(), timeout=600):
  """One `python -m alexnet_jax.main` process on `devices` simulated CPU
  devices (`simulated_devices_env`), to completion; the CompletedProcess.
  The mesh its header line logs must hold that many devices."""
  env = dict(simulated_devices_env(env, devices))
  env['JAX_LOG_COMPILES'] = '1'  # Counted by test_train_step_compiles_once.
  args = [sys.executable, '-m', 'alexnet_jax.main',
          *main_args(workdir, cifar_dir, extra)]
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  mesh = logged_mesh(result.stdout)
  assert math.prod(mesh.values()) == devices, (mesh, devices)
  return result


def logged_mesh(stdout):
  """The mesh a run's header line names: {'runs': r, 'data': d, 'model': m,
  'tower': t}."""
  [line] = [l for l in stdout.splitlines() if ' parameters | ' in l]
  return ast.literal_eval(line.split(', mesh ', 1)[1].split(')', 1)[0])


def main_args(workdir, cifar_dir, extra=()):
  """alexnet_jax.main's arguments: six steps of the tiny net, two shards."""
  return ['--config=configs/cifar10.py', f'--workdir={workdir}',
          '--config.model=alexnet_tiny', f'--config.data_dir={cifar_dir}',
          '--config.num_steps=6', '--config.log_every_steps=2',
          '--config.data_shards=2', '--config.eval_batch_size=256',
          '--config.dropout_rate=0.5', '--config.learning_rate=0.05',
          *extra]


def params_of(workdir, step=None):
  return cli.load_state_on_host(workdir, step)['params']


def train_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']


# Long enough to signal mid-run: 150 steps, a checkpoint every 10.
LONG = ['--config.num_steps=150', '--config.batch_size=64',
        '--config.checkpoint_every_steps=10', '--config.log_every_steps=10']


def assert_same_final_params(workdir, reference):
  """Bit for bit: a resumed run is the uninterrupted run (the same leaves,
  shapes and dtypes first)."""
  assert_trees_equal(params_of(workdir), params_of(reference))


def wait_for_checkpoint(workdir, step, proc, timeout=300):
  path = os.path.join(workdir, 'checkpoints', str(step))
  wait_for(lambda: os.path.isdir(path), timeout, f'checkpoint {step}', proc)


def stopped_step(text, prefix='stopped by SIGTERM at step '):
  """The step in the 'stopped by SIGTERM at step S/150' line of `text`."""
  [line] = [l for l in text.splitlines() if prefix in l]
  return int(line.split(prefix)[1].split('/')[0])


def free_slurm_job_id():
  """A job id whose SLURM coordinator port (JAX's rule) is free here."""
  for _ in range(100):
    port = free_port()
    if port >= 65536 - 2 ** 12:
      return port - (65536 - 2 ** 12) + 2 ** 12
  with socket.socket() as s:  # The kernel keeps choosing low ports: try one.
    for port in range(65535, 65536 - 2 ** 12, -1):
      try:
        s.bind(('127.0.0.1', port))
        return port - (65536 - 2 ** 12) + 2 ** 12
      except OSError:
        continue
  pytest.skip('no free port in the SLURM coordinator range')


def start_job(n, args, env, logdir, port=None, env_of=None):
  """`n` processes of `python -m alexnet_jax.main ARGS`, each started by the
  JAX_* variables alone, as a cluster's hosts would start them; process i
  writes to LOGDIR/p{i}.out and .err. `env_of(i, env)` may change process
  i's environment (the default sets the three JAX_* variables)."""
  os.makedirs(logdir, exist_ok=True)
  port = port or free_port()
  procs = []
  for i in range(n):
    if env_of is None:
      proc_env = dict(env, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                      JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    else:
      proc_env = env_of(i, dict(env))
    with open(os.path.join(logdir, f'p{i}.out'), 'w') as out, \
        open(os.path.join(logdir, f'p{i}.err'), 'w') as err:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'alexnet_jax.main', *args], cwd=REPO,
          env=proc_env, stdout=out, stderr=err, text=True))
  return procs


def read_logs(logdir, i):
  """(stdout, stderr) of process i of a `start_job`."""
  with open(os.path.join(logdir, f'p{i}.out')) as out, \
      open(os.path.join(logdir, f'p{i}.err')) as err:
    return out.read(), err.read()


def stop_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
