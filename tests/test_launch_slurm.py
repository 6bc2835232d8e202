"""launch/slurm_gpu.sbatch run as a job of the fake SLURM (tests/fake_slurm):
its tasks are real processes, the dummy task (tests/slurm_dummy_task.py,
which reports through a FIFO what happens to it) or, once, the trainer
itself. The same flows with the trainer's two processes, saving and
resuming: test_multiprocess_faults.py (slow tier).
"""

import os
import signal
import sys

import jax
import pytest

from tests.conftest import REPO
from tests.slurm_cluster import DUMMY_TASK, Events, calls, cluster_env, sbatch
from tests.slurm_cluster import stop_jobs  # pylint: disable=unused-import
from tests.slurm_cluster import wait_for_text

SCRIPT = 'launch/slurm_gpu.sbatch'


def job_env(tmp_path, task=DUMMY_TASK, **settings):
  """One node of two GPUs and two CPUs; the tasks run TASK as `$PYTHON -m
  alexnet_jax.main ...`."""
  env = cluster_env(tmp_path, node_gpus=2, node_cpus=2, **settings)
  env.update(PYTHON=str(task), VENV='', WORKDIR=str(tmp_path / 'w'))
  return env


def submit(tmp_path, env, *extra):
  events = Events(tmp_path)
  err = open(tmp_path / 'err', 'w')
  proc = sbatch(env, '--nodes=1', '--gpus-per-node=2', SCRIPT, '--', *extra,
                stderr=err)
  ready = events.take(2, proc)
  assert [r.split()[:2] for r in ready] == [['ready', '0'], ['ready', '1']]
  return proc, events, {int(r.split()[1]): int(r.split()[2]) for r in ready}


def events_until_done(events, proc):
  """Events up to both tasks' `done` (the requeued run finished)."""
  seen = []
  while sum(e.startswith('done') for e in seen) < 2:
    seen.append(events.next(proc))
  return seen


def test_time_limit_saves_requeues_and_runs_again(tmp_path):
  """The job's --signal=B:USR1@300 (SIGALRM to the fake sbatch: its clock
  reached that time) makes the script SIGTERM every task once, through
  scancel; they exit 143; the script requeues the job, which runs again
  (SLURM_RESTART_COUNT=1) and ends."""
  env = job_env(tmp_path)
  proc, events, _ = submit(tmp_path, env)
  proc.send_signal(signal.SIGALRM)
  assert events.take(2, proc) == ['SIGTERM 0', 'SIGTERM 1']
  readies = sorted(e.split() for e in events_until_done(events, proc)
                   if e.startswith('ready'))
  assert [(r[1], r[3]) for r in readies] == [('0', '1'), ('1', '1')]
  assert proc.wait(timeout=60) == 0
  assert calls(tmp_path, 'scancel', 'scontrol') == [
      'scancel --signal=TERM 4242', 'scontrol requeue 4242']
  assert len(calls(tmp_path, 'srun')) == 2
  assert 'job 4242: requeued, restart 1' in calls(tmp_path, 'job')
  assert 'restart 1' in (tmp_path / 'err').read_text()


def test_a_second_usr1_sends_no_second_sigterm(tmp_path):
  """SIGUSR1 twice (the time limit's, then a preemption's where the site
  sends the job's --signal): the tasks get SIGTERM once; a second would
  make the trainer exit without saving."""
  env = job_env(tmp_path, kill_wait=1)
  env['DUMMY_IGNORE_TERM'] = '1'  # Still saving when the second comes.
  proc, events, pids = submit(tmp_path, env)
  proc.send_signal(signal.SIGALRM)
  assert events.take(2, proc) == ['SIGTERM 0', 'SIGTERM 1']
  proc.send_signal(signal.SIGALRM)
  wait_for_text(tmp_path / 'err', 'time limit near', proc, count=2)
  os.kill(pids[0], signal.SIGUSR2)  # Task 0 ends; srun ends task 1.
  later = events_until_done(events, proc)
  assert proc.wait(timeout=60) == 0
  assert calls(tmp_path, 'scancel') == ['scancel --signal=TERM 4242']
  assert later[:2] == ['SIGUSR2 0', 'SIGTERM 1']  # From --kill-on-bad-exit.


def test_a_failed_task_ends_the_job_without_a_requeue(tmp_path):
  """A task that fails (exit 3) makes srun end the other (SIGTERM), and
  the job ends with srun's status, the highest exit code: no requeue."""
  env = job_env(tmp_path)
  proc, events, pids = submit(tmp_path, env)
  os.kill(pids[1], signal.SIGUSR2)
  assert events.take(2, proc) == ['SIGTERM 0', 'SIGUSR2 1']
  assert proc.wait(timeout=60) == 143
  assert calls(tmp_path, 'scancel', 'scontrol') == []


def test_tasks_that_see_no_gpu_stop_with_the_trainers_line(tmp_path,
                                                           cifar_dir):
  """The trainer itself, as the job's one task, on this machine whose JAX
  finds no GPU: --config.platform=gpu from the script makes it stop with
  its one `error:` line, exit 2, before writing anything; the job ends
  with that status. (Without it, it would train on the CPU.)"""
  if jax.default_backend() != 'cpu':
    pytest.skip('JAX finds an accelerator here')
  env = cluster_env(tmp_path, node_gpus=1, node_cpus=2)
  env.update(PYTHON=sys.executable, VENV='', WORKDIR=str(tmp_path / 'w'),
             DATA_DIR=cifar_dir, PYTHONPATH=str(REPO))
  env.pop('JAX_PLATFORMS', None)
  proc = sbatch(env, '--nodes=1', '--gpus-per-node=1', SCRIPT, '--',
                '--config.model=alexnet_tiny', '--config.num_steps=2',
                '--config.log_every_steps=1')
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2, err
  task_err = (tmp_path / 'cluster' / 'task_0.err').read_text().splitlines()
  assert len(task_err) == 1 and task_err[0].startswith(
      "error: asked for platform 'gpu' (--config.platform) but JAX found "
      "only 'cpu'"), task_err
  assert 'srun: error: localhost: task 0: Exited with exit code 2' in err
  assert not (tmp_path / 'w').exists()
