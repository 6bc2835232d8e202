"""The fake controller and batch step of one job: what slurmctld and
slurmstepd do for a batch job, run in the fake sbatch's process.

It starts the batch script in a session of its own (the batch step), and
until the job is over:
- SIGALRM to this process stands for the clock reaching the job's
  --signal time (SIG_TIME seconds before the time limit); the job's signal
  then goes where --signal says: with B: to the batch shell alone (not its
  children: KILL_JOB_BATCH, kill(2) of the shell's pid), without to every
  task of every step, not the shell. Without --signal, nothing happens.
- A `cancel` request (scancel JOBID) or a `requeue` one (scontrol requeue)
  ends the job as slurmd ends one (src/slurmd/slurmd/req.c
  _rpc_terminate_job): SIGCONT and SIGTERM to every step's tasks and to the
  batch step (the shell and its children, srun included), KillWait seconds
  for all of them to exit, then SIGKILL. A requeued job then runs again
  under the same id with SLURM_RESTART_COUNT one higher.
- When the batch shell exits, the tasks still running are ended the same
  way, and the job is over: its status is the shell's.
SIGTERM or SIGINT to this process cancels the job, so that a test that
gives up leaves nothing behind.
"""

import os
import selectors
import signal
import subprocess
import sys
import time

import cluster


class Job:
  """One batch job: its id, allocation environment and --signal."""

  def __init__(self, job_id, command, env, warn, requeue):
    self.job_id, self.command, self.env = job_id, command, env
    self.warn = warn  # (batch_only, signal number, seconds) or None.
    self.requeue_allowed = requeue
    self.dir = cluster.state_dir()
    self.path = os.path.join(self.dir, 'job.json')
    self.fifo = os.path.join(self.dir, 'ctld.fifo')
    self.batch = None
    self.restart = 0

  def record(self, state):
    cluster.write_json(self.path, {
        'job_id': self.job_id, 'ctld_pid': os.getpid(),
        'batch_pid': self.batch.pid if self.batch else None,
        'requeue': self.requeue_allowed, 'restart': self.restart,
        'state': state})


def _task_pids():
  """Every task of every running step (srun records them)."""
  return [pid for step in cluster.steps().values() for pid in step['tasks']]


def _wait_gone(pids, seconds):
  """Waits (on pidfds, no polling) until every pid has exited, at most
  `seconds`; True when all are gone."""
  sel = selectors.DefaultSelector()
  for pid in pids:
    try:
      sel.register(os.pidfd_open(pid), selectors.EVENT_READ)
    except ProcessLookupError:
      continue
  deadline = time.monotonic() + seconds
  try:
    while sel.get_map():
      left = deadline - time.monotonic()
      if left <= 0:
        return False
      for key, _ in sel.select(left):
        sel.unregister(key.fileobj)
        os.close(key.fileobj)
    return True
  finally:
    for key in list(sel.get_map().values()):
      os.close(key.fileobj)
    sel.close()


def terminate(job, why):
  """slurmd's end of a job: SIGCONT, SIGTERM to steps and batch step,
  KillWait, SIGKILL."""
  stamp = cluster.timestamp()
  reason = f' DUE TO {why}' if why else ''
  print(f'slurmstepd: error: *** JOB {job.job_id} ON {cluster.HOST} '
        f'CANCELLED AT {stamp}{reason} ***', file=sys.stderr, flush=True)
  tasks = _task_pids()
  groups = tasks + ([job.batch.pid] if job.batch.poll() is None else [])
  for sig in (signal.SIGCONT, signal.SIGTERM):
    cluster.signal_groups(groups, sig)
  alive = tasks + ([job.batch.pid] if job.batch.returncode is None else [])
  if not _wait_gone(alive, cluster.setting('KILL_WAIT')):
    cluster.signal_groups(groups, signal.SIGKILL)
    _wait_gone(alive, 5)
  return job.batch.wait()


def _requests(fd):
  """The lines scancel and scontrol have written to the FIFO."""
  data = b''
  while True:
    try:
      chunk = os.read(fd, 4096)
    except BlockingIOError:
      break
    if not chunk:
      break
    data += chunk
  return data.decode().split()


def deliver_warning(job):
  """The clock reached the job's --signal time."""
  if job.warn is None:
    cluster.log(f'job {job.job_id}: --signal time, but no --signal given')
    return
  batch_only, sig, _ = job.warn
  name = cluster.SIGNAL_NAMES.get(sig, str(sig))
  if batch_only:
    cluster.log(f'job {job.job_id}: {name} to the batch shell (--signal)')
    if job.batch.poll() is None:
      os.kill(job.batch.pid, sig)
  else:
    cluster.log(f'job {job.job_id}: {name} to the steps\' tasks (--signal)')
    cluster.signal_groups(_task_pids(), sig)


def run_once(job, sel, wakeup, fifo_fd):
  """Runs the batch script once: 'done' (its status) or 'requeue'."""
  env = dict(job.env)
  env.pop('SLURM_RESTART_COUNT', None)
  if job.restart:
    env['SLURM_RESTART_COUNT'] = str(job.restart)
  for name in os.listdir(os.path.join(job.dir, 'steps')):
    os.unlink(os.path.join(job.dir, 'steps', name))
  job.batch = subprocess.Popen(job.command, env=env, start_new_session=True)
  job.record('RUNNING')
  batch_fd = os.pidfd_open(job.batch.pid)
  sel.register(batch_fd, selectors.EVENT_READ, 'batch')
  try:
    while True:
      for key, _ in sel.select():
        if key.data == 'signals':
          for sig in os.read(wakeup, 64):
            if sig == signal.SIGALRM:
              deliver_warning(job)
            elif sig in (signal.SIGTERM, signal.SIGINT):
              return 'done', terminate(job, None)
        requests = _requests(fifo_fd)
        if 'requeue' in requests:
          terminate(job, 'JOB REQUEUE')
          return 'requeue', None
        if 'cancel' in requests:
          return 'done', terminate(job, None)
        if key.data == 'batch':
          status = job.batch.wait()
          if _task_pids():
            terminate(job, None)
          return 'done', status
  finally:
    sel.unregister(batch_fd)
    os.close(batch_fd)


def run(job):
  """Runs the job until it is over (requeues included); its exit status."""
  if os.path.exists(job.fifo):
    os.unlink(job.fifo)
  os.mkfifo(job.fifo)
  fifo_fd = os.open(job.fifo, os.O_RDWR | os.O_NONBLOCK)
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
  for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
  sel = selectors.DefaultSelector()
  sel.register(read_end, selectors.EVENT_READ, 'signals')
  sel.register(fifo_fd, selectors.EVENT_READ, 'requests')
  while True:
    outcome, status = run_once(job, sel, read_end, fifo_fd)
    if outcome != 'requeue':
      break
    job.restart += 1
    cluster.log(f'job {job.job_id}: requeued, restart {job.restart}')
  job.batch = None
  job.record('COMPLETED')
  status = status if status >= 0 else 128 - status
  cluster.log(f'job {job.job_id}: ended, exit status {status}')
  return status
