"""Two-process jobs stopped for real, then resumed: SIGTERM to one process,
SLURM's time limit, a second SIGTERM, and `kill -9` of one process (the
others must stop on their own, say which one was lost, and the same command
must resume). Each resumed run ends bit for bit where an uninterrupted
two-process run ends. Every test starts real `python -m alexnet_jax.main`
processes on this machine (the slow tier).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import cli
from tests.conftest import REPO
from tests.conftest import require_cifar_subset
from tests.multiproc import LONG, assert_same_final_params, child_pids
from tests.multiproc import free_slurm_job_id, main_args, read_logs
from tests.multiproc import start_job, stop_all, stopped_step
from tests.multiproc import wait_for_checkpoint
from tests.slurm_cluster import FAKE_SLURM, calls, cluster_env

pytestmark = pytest.mark.slow  # The whole module: see conftest.py.


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  return {'cifar': require_cifar_subset(),
          'env': dict(os.environ, PYTHONPATH=str(REPO),
                      TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu'),
          'root': tmp_path_factory.mktemp('faults')}


@pytest.fixture(scope='module')
def long_reference(setup):
  """The LONG run, uninterrupted, as two processes. (Against one process
  the sums' order differs, and 150 steps amplify that far past 1e-5.)"""
  workdir = str(setup['root'] / 'long_two')
  result = subprocess.run(
      ['bash', 'launch/local_multiprocess.sh', '2',
       *main_args(workdir, setup['cifar'], LONG)], cwd=REPO,
      env=dict(setup['env'], PYTHON=sys.executable), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_sigterm_to_one_process_saves_one_step_then_rerun_resumes(
    setup, long_reference, tmp_path):
  """SIGTERM to one process of a two-process job (the SLURM test below
  signals both): the notice reaches the other, they agree on one step
  through JAX's preemption sync point, both save it and exit 143; the same
  command resumes there and ends bit for bit where an uninterrupted run
  ends."""
  workdir = str(tmp_path / 'w')
  env = dict(setup['env'], PYTHON=sys.executable,
             LOGDIR=str(tmp_path / 'logs'))
  args = ['bash', 'launch/local_multiprocess.sh', '2',
          *main_args(workdir, setup['cifar'], LONG)]
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  wait_for_checkpoint(workdir, 20, proc)
  processes = child_pids(proc.pid)
  assert len(processes) == 2
  def environ(pid):
    with open(f'/proc/{pid}/environ') as f:
      return f.read().split('\0')
  [second] = [p for p in processes if 'JAX_PROCESS_ID=1' in environ(p)]
  os.kill(second, signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, out[-2000:] + err[-2000:]
  step = stopped_step(out)
  assert 20 < step < 150
  other = (tmp_path / 'logs' / 'process_1.log').read_text()
  assert stopped_step(other, 'process 1: stopped by SIGTERM at step ') == step
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  for i in (0, 1):
    assert f'launch: process {i} stopped by a signal (exit 143)' in err

  env['LOGDIR'] = str(tmp_path / 'logs2')
  rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  assert 'resuming from' in rerun.stdout and f'at step {step}' in rerun.stdout
  assert_same_final_params(workdir, long_reference)


def test_slurm_job_at_time_limit_saves_requeues_and_resumes(
    setup, long_reference, tmp_path):
  """launch/slurm_gpu.sbatch submitted through the fake sbatch (one node of
  2 "GPUs" and 2 CPUs, `--gpus-per-node=2` as documented) and run by the
  fake srun, which starts its two tasks on this machine with srun's
  variables: the tasks meet through SLURM detection. The job's
  --signal=B:USR1@300 (SIGALRM to the fake sbatch: its clock reached that
  time) makes the script SIGTERM the tasks through scancel; they save one
  step and exit 143 (srun's --kill-on-bad-exit then signals whichever is
  still exiting); the script requeues the job (scontrol), and the fake
  controller runs it again under the same id with SLURM_RESTART_COUNT=1:
  it resumes and ends bit for bit where an uninterrupted run ends.
  `--config.platform=cpu` overrides the script's gpu (this machine has
  none)."""
  job_id = free_slurm_job_id()
  workdir = tmp_path / 'w'
  env = dict(cluster_env(tmp_path, node_gpus=2, node_cpus=2, job_id=job_id),
             PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             JAX_PLATFORMS='cpu', PYTHON=sys.executable, VENV='',
             WORKDIR=str(workdir), DATA_DIR=setup['cifar'])
  extra = main_args(workdir, setup['cifar'], LONG)[2:]  # Script adds the rest.
  args = [sys.executable, str(FAKE_SLURM / 'sbatch'), '--nodes=1',
          '--gpus-per-node=2', '--job-name=aj', 'launch/slurm_gpu.sbatch',
          '--', *extra, '--config.platform=cpu']
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  wait_for_checkpoint(str(workdir), 20, proc)
  proc.send_signal(signal.SIGALRM)
  out, err = proc.communicate(timeout=900)
  task0 = (tmp_path / 'cluster' / 'task_0.out').read_text()
  task1 = (tmp_path / 'cluster' / 'task_1.err').read_text()
  assert proc.returncode == 0, err[-2000:] + task0[-2000:]
  assert out.startswith(f'Submitted batch job {job_id}\n')
  step = stopped_step(task0)
  assert 20 < step < 150
  assert stopped_step(task1, 'process 1: stopped by SIGTERM at step ') == step
  coordinator = f'localhost:{job_id % 2 ** 12 + 65536 - 2 ** 12}'
  assert f'coordinator at {coordinator} (slurm start)' in (
      tmp_path / 'cluster' / 'task_0.err').read_text()
  [first, again] = calls(tmp_path, 'srun')
  assert first == again and first.startswith(
      'srun --kill-on-bad-exit=1 --gpu-bind=none --nodes=1 --ntasks=2 '
      '--ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 ')
  assert calls(tmp_path, 'scancel', 'scontrol') == [
      f'scancel --signal=TERM {job_id}', f'scontrol requeue {job_id}']
  assert 'restart 1' in err
  assert 'resuming from' in task0 and f'at step {step}' in task0
  assert_same_final_params(str(workdir), long_reference)


# --- A lost process ----------------------------------------------------------

HEARTBEAT = 20  # --heartbeat_timeout: a silent process is lost after 10 s.


def committed_steps(workdir):
  """{step: {file: bytes}} of every checkpoint orbax has committed."""
  root = os.path.join(workdir, 'checkpoints')
  steps = {}
  for name in os.listdir(root):
    step_dir = os.path.join(root, name)
    if name.isdigit() and os.path.exists(
        os.path.join(step_dir, '_CHECKPOINT_METADATA')):
      steps[int(name)] = cli.snapshot(step_dir)
  return steps


@pytest.mark.parametrize('victim', [1, 0], ids=['process-1', 'coordinator'])
def test_kill_9_of_one_process_stops_the_other_then_rerun_resumes(
    setup, long_reference, tmp_path, victim):
  """`kill -9` of one process of a running two-process job (started as a
  cluster's hosts start them: the JAX_* variables, no launcher watching):
  the other stops by itself with exit status 75 and one `error:` line
  naming the lost process, within --heartbeat_timeout/2 plus a poll when
  process 1 is lost, at once when the coordinator is; every checkpoint
  committed before is untouched; the same command on both resumes from the
  newest and ends bit for bit where an uninterrupted run ends."""
  workdir = str(tmp_path / 'w')
  args = main_args(workdir, setup['cifar'],
                   LONG + [f'--heartbeat_timeout={HEARTBEAT}'])
  procs = start_job(2, args, setup['env'], tmp_path / 'first')
  try:
    wait_for_checkpoint(workdir, 30, procs[0])
    procs[victim].kill()
    before = committed_steps(workdir)
    survivor = 1 - victim
    procs[survivor].wait(timeout=120)
  finally:
    stop_all(procs)
  _, err = read_logs(tmp_path / 'first', survivor)
  assert procs[survivor].returncode == 75, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, err[-3000:]
  assert f'error: process {victim} of 2' in errors[0]
  assert f'process {survivor} stops too (exit status 75)' in errors[0]
  # How soon, from what the survivor says rather than a wall clock. The
  # coordinator lost: the SIGABRT hook's line, which JAX's error polling
  # triggers at once (the watchdog's own path, after heartbeat/2 of
  # silence, says 'lost contact with the coordinator ... for N s').
  # Process 1 lost: the watchdog's line, naming the silence it waited:
  # at least heartbeat/2 (a live process is never flagged sooner) and less
  # than the heartbeat, after which JAX's own check would have aborted
  # this process instead (exit -6, not 75, and no such line).
  if victim == 0:
    assert 'it accepts no connections' in errors[0], errors[0]
  else:
    silent = int(errors[0].split('no sign of life for ')[1].split(' s')[0])
    assert HEARTBEAT / 2 <= silent < HEARTBEAT, errors[0]
  after = committed_steps(workdir)
  for step, files in before.items():
    assert after[step] == files, f'checkpoint {step} changed'
  last = max(after)

  finish_from(start_job(2, args, setup['env'], tmp_path / 'again'),
              tmp_path / 'again', workdir, last, long_reference)



def finish_from(procs, logs, workdir, step, reference):
  """The restarted job runs to the end from checkpoint `step`, and ends
  where the uninterrupted reference ends."""
  try:
    for p in procs:
      p.wait(timeout=600)
  finally:
    stop_all(procs)
  out, err = read_logs(logs, 0)
  assert [p.returncode for p in procs] == [0, 0], err[-3000:]
  assert f'resuming from {workdir}/checkpoints at step {step}' in out
  assert_same_final_params(workdir, reference)

# --- A second SIGTERM --------------------------------------------------------


def wait_for_text(path, text, procs, timeout=120):
  deadline = time.monotonic() + timeout
  while text not in path.read_text():
    assert all(p.poll() is None for p in procs), path.read_text()[-2000:]
    assert time.monotonic() < deadline, f'no {text!r} in {path}'
    time.sleep(0.02)


@pytest.mark.parametrize('how', ['processes', 'launcher'])
def test_second_sigterm_exits_at_once_with_several_processes(
    setup, tmp_path, how):
  """SIGTERM to a two-process job (to both processes, as a scheduler sends
  it, or to launch/local_multiprocess.sh, which passes it on): each says it
  will save; a second SIGTERM before they have saved makes both exit at once
  (143) without saving, as one process does. XLA's notifier, which owns
  SIGTERM in multi-process runs, used to swallow the second one. Large
  batches make a step long enough for the second signal to arrive first."""
  workdir = str(tmp_path / 'w')
  args = main_args(workdir, setup['cifar'],
                   ['--config.num_steps=200', '--config.batch_size=1024',
                    '--config.checkpoint_every_steps=2'])
  logs = tmp_path / 'logs'
  if how == 'processes':
    procs = start_job(2, args, setup['env'], logs)
    errs, signalled = [logs / 'p0.err', logs / 'p1.err'], procs
    outs = [logs / 'p0.out', logs / 'p1.out']
  else:
    logs.mkdir()
    with open(logs / 'launcher.out', 'w') as out, \
        open(logs / 'launcher.err', 'w') as err:
      procs = [subprocess.Popen(
          ['bash', 'launch/local_multiprocess.sh', '2', *args], cwd=REPO,
          env=dict(setup['env'], PYTHON=sys.executable, LOGDIR=str(logs)),
          stdout=out, stderr=err)]
    errs, signalled = [logs / 'launcher.err', logs / 'process_1.log'], procs
    outs = [logs / 'launcher.out']
  try:
    wait_for_checkpoint(workdir, 2, procs[0])
    for p in signalled:
      p.send_signal(signal.SIGTERM)
    for path in errs:
      wait_for_text(path, 'SIGTERM received', procs)
    for p in signalled:
      p.send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=60)
  finally:
    stop_all(procs)
  assert [p.returncode for p in procs] == [143] * len(procs)
  for path in errs:
    text = path.read_text()
    assert 'SIGTERM again: exiting at once, without saving' in text, text[-2000:]
  # At once, as events show it: each process says so and exits 143 without
  # the first signal's save (no 'stopped by' line), where one whose second
  # SIGTERM was swallowed would finish its step and save first.
  for path in errs + outs:
    assert 'stopped by SIGTERM at step' not in path.read_text()
  step = cli.load_state_on_host(workdir)['step']  # The last one is intact.
  assert int(step) % 2 == 0 and int(step) >= 2


# --- Kubernetes ----------------------------------------------------------------


def test_kubernetes_pods_train_together_and_resume(setup, long_reference,
                                                   tmp_path):
  """The two pods of launch/k8s/gpu-jobset.yaml, run here as processes with
  exactly the environment Kubernetes gives pod 0 and pod 1 (rendered by
  tests/k8s_render.py: the controllers' labels and annotations through the
  downward API, $(VAR) expansion, the image's ENV with its /app and HOME
  mapped here) and nothing else, except JAX_COORDINATOR_ADDRESS: it names
  pod 0 through the cluster's DNS, which this machine has not, and becomes
  127.0.0.1:PORT. The command is the manifest's; the arguments are the
  test's (the tiny net on the subset on a CPU instead of the volume's paths
  and --config.platform=gpu). They train as one job; SIGTERM to pod 1
  (its node is preempted) makes both save one step and exit 143; started
  again, as JobSet restarts every pod, they resume and end bit for bit where
  an uninterrupted run ends."""
  from tests.multiproc import free_port  # pylint: disable=g-import-not-at-top
  from tests.k8s_render import K8S, command_of, pod_environment  # pylint: disable=g-import-not-at-top
  manifest = K8S / 'gpu-jobset.yaml'
  assert command_of(manifest) == ['python', '-m', 'alexnet_jax.main']
  port = free_port()
  home = tmp_path / 'home'  # The image's user's home, writable.
  home.mkdir()
  dirs = {'/app': str(REPO), '/home/alexnet': str(home)}
  base = {'PATH': os.environ['PATH']}
  def pod_env(i, _):
    return {**base, **pod_environment(manifest, i, f'127.0.0.1:{port}',
                                      dirs=dirs)}
  workdir = str(tmp_path / 'w')
  args = main_args(workdir, setup['cifar'], LONG)
  pods = start_job(2, args, {}, tmp_path / 'first', port, env_of=pod_env)
  try:
    wait_for_checkpoint(workdir, 20, pods[0])
    pods[1].send_signal(signal.SIGTERM)
    for p in pods:
      p.wait(timeout=300)
  finally:
    stop_all(pods)
  out0, err0 = read_logs(tmp_path / 'first', 0)
  _, err1 = read_logs(tmp_path / 'first', 1)
  assert [p.returncode for p in pods] == [143, 143], err0[-2000:] + err1[-2000:]
  assert '(explicit start)' in err0  # The manifest's start, not detection.
  step = stopped_step(out0)
  assert stopped_step(err1, 'process 1: stopped by SIGTERM at step ') == step

  finish_from(start_job(2, args, {}, tmp_path / 'again', port,
                        env_of=pod_env),
              tmp_path / 'again', workdir, step, long_reference)
