"""Helpers for the tests that use the fake SLURM (tests/fake_slurm): a
cluster's environment, the event FIFO the dummy task writes to, the
commands' log."""

import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref

import pytest

from tests.conftest import REPO

FAKE_SLURM = REPO / 'tests' / 'fake_slurm'
DUMMY_TASK = REPO / 'tests' / 'slurm_dummy_task.py'


def cluster_env(tmp_path, **settings):
  """The environment of a shell on the fake cluster: its commands first on
  PATH, its state in TMP_PATH/cluster, SETTINGS as FAKE_SLURM_<NAME>."""
  state = tmp_path / 'cluster'
  state.mkdir(exist_ok=True)
  env = dict(os.environ, PATH=f'{FAKE_SLURM}{os.pathsep}{os.environ["PATH"]}',
             FAKE_SLURM_DIR=str(state), FAKE_SLURM_LOG=str(tmp_path / 'log'),
             DUMMY_EVENTS=str(tmp_path / 'events'))
  for name in list(env):
    if name.startswith(('SLURM_', 'FAKE_SLURM_', 'SRUN_', 'SBATCH_')) and \
        name not in ('FAKE_SLURM_DIR', 'FAKE_SLURM_LOG'):
      del env[name]
  env.update({f'FAKE_SLURM_{k.upper()}': str(v) for k, v in settings.items()})
  return env


def calls(tmp_path, *commands):
  """The logged command lines (of COMMANDS, if given)."""
  path = tmp_path / 'log'
  lines = path.read_text().splitlines() if path.exists() else []
  return [l for l in lines if not commands or l.split()[0] in commands]


class Events:
  """The FIFO the dummy tasks report to; read line by line, blocking."""

  def __init__(self, tmp_path):
    path = tmp_path / 'events'
    os.mkfifo(path)
    self.fd = os.open(path, os.O_RDWR)  # Never EOF, never blocks an open.
    self.buffer = b''
    weakref.finalize(self, os.close, self.fd)

  def next(self, proc=None, limit=60):
    """The next line. Fails if PROC exits first, or if nothing comes in
    LIMIT seconds (a hung test's bound, not a synchronisation)."""
    deadline = time.monotonic() + limit
    while b'\n' not in self.buffer:
      ready, _, _ = select.select([self.fd], [], [], 0.2)
      if ready:
        self.buffer += os.read(self.fd, 4096)
        continue
      if proc is not None and proc.poll() is not None:
        raise AssertionError(f'exited ({proc.returncode}) before an event')
      assert time.monotonic() < deadline, 'no event'
    line, self.buffer = self.buffer.split(b'\n', 1)
    return line.decode()

  def take(self, count, proc=None):
    """The next COUNT lines, sorted (tasks report in any order)."""
    return sorted(self.next(proc) for _ in range(count))

  def until(self, wanted, proc=None):
    """Lines up to the one where every line of WANTED has come (sorted).
    For a signal sent twice in quick succession, which the kernel may
    merge into one delivery, as on a real cluster."""
    seen, missing = [], set(wanted)
    while missing:
      seen.append(self.next(proc))
      missing.discard(seen[-1])
    return sorted(seen)

  def drain(self):
    """Every line written so far and not yet read (without waiting)."""
    while select.select([self.fd], [], [], 0)[0]:
      self.buffer += os.read(self.fd, 4096)
    lines, self.buffer = self.buffer.decode().splitlines(), b''
    return lines


def batch_script(path, body):
  """A batch script: #!/bin/bash, then BODY's lines."""
  path.write_text('#!/bin/bash\n' + body)
  return str(path)


STARTED = []  # (fake sbatch, its FAKE_SLURM_DIR), for stop_jobs.


def sbatch(env, *args, **popen):
  """The fake sbatch, started (it runs the job in the foreground)."""
  popen = {'stdout': subprocess.PIPE, 'stderr': subprocess.PIPE, **popen}
  proc = subprocess.Popen([sys.executable, str(FAKE_SLURM / 'sbatch'), *args],
                          cwd=REPO, env=env, text=True, **popen)
  STARTED.append((proc, env['FAKE_SLURM_DIR']))
  return proc


def _kill_groups(state):
  """SIGKILL to the job's batch step and every step's tasks."""
  records = [os.path.join(state, 'job.json')] + [
      os.path.join(state, 'steps', n) for n in
      os.listdir(os.path.join(state, 'steps'))]
  for path in records:
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError):
      continue
    for pid in [record.get('batch_pid')] + record.get('tasks', []):
      if pid:
        try:
          os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
          pass


@pytest.fixture(autouse=True)
def stop_jobs():
  """After each test, kills what a failed one left running: the fake
  sbatch, its batch shell and srun, the tasks."""
  yield
  while STARTED:
    proc, state = STARTED.pop()
    if proc.poll() is None:
      _kill_groups(state)
      proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
      if stream:
        stream.close()


def wait_until(ready, proc, limit=120):
  """Until READY() is true (it reads a file a command writes to)."""
  deadline = time.monotonic() + limit
  while not ready():
    assert proc.poll() is None, f'exited ({proc.returncode}) first'
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.02)


def wait_for_text(path, text, proc, count=1):
  """Until PATH holds TEXT COUNT times (a line a command printed)."""
  wait_until(lambda: path.read_text().count(text) >= count, proc)


def proc_state(pid):
  """'gone', 'zombie' or 'alive'."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      state = f.read().rsplit(')', 1)[1].split()[0]
  except FileNotFoundError:
    return 'gone'
  return 'zombie' if state == 'Z' else 'alive'
