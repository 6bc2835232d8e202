"""Execute mode of the fake gcloud: the VM's workers are real folders
(FAKE_TPU_WORKERS/worker_i), each a home where `tpu-vm ssh` runs the remote
command with bash in a session of its own, as sshd does (HOME, TPU_WORKER_ID
=i, PATH=FAKE_WORKER_PATH), and into which `scp` copies. The install step is
not run (no apt, pip or network here): the tarball is unpacked and the venv
is a real one whose packages are this interpreter's (a .pth file), with
FAKE_TRAINER, when set, standing in for alexnet_jax/main.py. A VM deleted or
preempted has its processes killed (SIGTERM, then SIGKILL); a deleted one
its disks wiped.

FAKE_TPU_JAX=1 gives the workers of one ssh call JAX_COORDINATOR_ADDRESS (a
free port here), JAX_NUM_PROCESSES and JAX_PROCESS_ID: what JAX reads from
the metadata server on a Cloud TPU, which is not here.

Outcomes of a `follow` (world.py's `train`) that end the connection, each
when worker 0's log shows a line (an event, not a time):
  drop_after_line: the remote command gets SIGHUP, the call exits 255;
  preempt_after_line: a Spot preemption: the trainers get SIGTERM and are
      waited for (they save), then the VM is PREEMPTED and every process on
      it killed; the call exits 255.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time

from world import kind_of

SAVE_LIMIT = 120  # s a preempted VM waits for its trainers to exit.


class ExecutedWorkers:

  def __init__(self, root):
    self.root = root

  def homes(self, state):
    return [os.path.join(self.root, f'worker_{i}')
            for i in range(state['workers'])]

  def boot(self, state):
    for home in self.homes(state):
      os.makedirs(home, exist_ok=True)

  def wipe(self, state):
    kill(self.homes(state))
    for home in self.homes(state):
      shutil.rmtree(home, ignore_errors=True)

  def scp(self, state, sources, path, chosen):
    for i in chosen:
      for source in sources:
        shutil.copyfile(source, os.path.join(self.homes(state)[i], path))
    return 0

  def ssh(self, state, command, chosen, outcome):
    homes = [self.homes(state)[i] for i in chosen]
    what = kind_of(command)
    if what == 'install':
      return install(homes), '', ''
    status = execute(command, chosen, homes, outcome,
                     lambda: preempt(self.homes(state), state))
    if what == 'start' and 'rc' in outcome:
      status = outcome['rc']  # A connection that dropped after it ran.
    return status, '', ''


def install(homes):
  """What the setup command leaves on a worker, without apt or pip."""
  for home in homes:
    code = os.path.join(home, 'alexnet_jax')
    shutil.rmtree(code, ignore_errors=True)
    with tarfile.open(os.path.join(home, 'alexnet_jax.tar.gz')) as tar:
      tar.extractall(code, filter='data')
    os.remove(os.path.join(home, 'alexnet_jax.tar.gz'))
    if os.environ.get('FAKE_TRAINER'):
      shutil.copyfile(os.environ['FAKE_TRAINER'],
                      os.path.join(code, 'alexnet_jax', 'main.py'))
    make_venv(os.path.join(home, 'alexnet_jax_venv'))
  return 0


def make_venv(venv):
  """A venv (pyvenv.cfg, bin/python) whose site-packages point at this
  interpreter's: what `python -m venv` and `pip install -r
  requirements-train.txt` leave, without the network."""
  if os.path.exists(os.path.join(venv, 'pyvenv.cfg')):
    return
  base = os.path.realpath(sys._base_executable)  # pylint: disable=protected-access
  version = sysconfig.get_python_version()
  site = os.path.join(venv, 'lib', f'python{version}', 'site-packages')
  os.makedirs(site)
  os.makedirs(os.path.join(venv, 'bin'))
  os.symlink(base, os.path.join(venv, 'bin', 'python'))
  with open(os.path.join(venv, 'pyvenv.cfg'), 'w') as f:
    f.write(f'home = {os.path.dirname(base)}\n'
            'include-system-site-packages = false\n'
            f'version = {sys.version.split()[0]}\n')
  # This interpreter's (venv's) packages, whether or not it ran site.py.
  ours = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
  with open(os.path.join(site, 'installed.pth'), 'w') as f:
    f.write(sysconfig.get_paths(vars={'base': ours, 'platbase': ours})[
        'purelib'] + '\n')


def worker_env(i, home, start, workers, port):
  """What sshd gives the command on worker i; `start` names this call on
  `workers` workers (the dummy trainers of one start wait for each other)."""
  env = dict(os.environ, HOME=home, TPU_WORKER_ID=str(i),
             FAKE_TPU_START=start, FAKE_TPU_START_WORKERS=str(workers),
             PATH=os.environ.get('FAKE_WORKER_PATH', os.environ['PATH']),
             FAKE_GCLOUD_WORKER='1')
  if port:
    env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES=str(workers), JAX_PROCESS_ID=str(i))
  return env


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def shows(home, line):
  """Whether the worker's current run log holds `line`."""
  try:
    with open(os.path.join(home, 'alexnet_jax_runs', 'current', 'log')) as f:
      return line in f.read()
  except OSError:
    return False


def execute(command, chosen, homes, outcome, preempted):
  """The command on each chosen worker, as sshd would run it."""
  start, port = str(time.time_ns()), os.environ.get('FAKE_TPU_JAX') and \
      free_port()
  procs = [subprocess.Popen(['bash', '-c', command], cwd=home,
                            env=worker_env(i, home, start, len(homes), port),
                            start_new_session=True)
           for i, home in zip(chosen, homes)]
  hang_up = lambda *_: [os.killpg(p.pid, signal.SIGHUP) for p in procs
                        if p.poll() is None]
  def interrupted(*_):  # Ctrl-C here: the connections close.
    hang_up()
    sys.exit(255)
  signal.signal(signal.SIGINT, interrupted)
  signal.signal(signal.SIGTERM, interrupted)
  lost = False  # The connection dropped, or the VM went away.
  while any(p.poll() is None for p in procs):
    if not lost and shows(homes[0], outcome.get('drop_after_line', '\0')):
      hang_up()
      lost = True
    if not lost and shows(homes[0], outcome.get('preempt_after_line', '\0')):
      preempted()
      hang_up()
      lost = True
    time.sleep(0.05)
  statuses = [p.wait() for p in procs]
  return 255 if lost else next((s for s in statuses if s), 0)


def worker_pids(home):
  """Every process on that worker: those whose HOME is its home."""
  pids = []
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/environ', 'rb') as f:
        if f'HOME={home}'.encode() in f.read().split(b'\0'):
          pids.append(int(entry))
    except OSError:
      continue
  return pids


def alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def wait_until(done, limit):
  deadline = time.monotonic() + limit
  while not done() and time.monotonic() < deadline:
    time.sleep(0.05)


def kill(homes, grace=5.0):
  """SIGTERM to every process of the workers (a VM shutting down), SIGKILL
  to those still there `grace` seconds later."""
  pids = [p for home in homes for p in worker_pids(home)]
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in pids:
      try:
        os.kill(pid, sig)
      except OSError:
        pass
    wait_until(lambda: not any(alive(p) for p in pids), grace)


def preempt(homes, state):
  """A Spot preemption: SIGTERM to the trainers, which save and exit (the
  wrapper then writes the run's exit_status), then the VM is PREEMPTED and
  nothing on it runs."""
  runs = [os.path.join(home, 'alexnet_jax_runs', 'current') for home in homes]
  runs = [r for r in runs if os.path.exists(os.path.join(r, 'pid'))]
  for run in runs:
    try:
      with open(os.path.join(run, 'pid')) as f:
        os.kill(int(f.read()), signal.SIGTERM)
    except (OSError, ValueError):
      pass
  wait_until(lambda: all(os.path.exists(os.path.join(r, 'exit_status'))
                         for r in runs), SAVE_LIMIT)
  kill(homes)
  state['node']['state'] = 'PREEMPTED'
