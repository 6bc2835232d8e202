"""The fake gcloud's workers (execute mode, see gcloud.py): home folders
where `tpu-vm ssh` runs the remote commands for real, in sessions of their
own as sshd runs them, and what becomes of their processes when the
connection drops, the VM is preempted or deleted."""

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time


def flag(argv, name):
  for arg in argv:
    if arg.startswith(name + '='):
      return arg.split('=', 1)[1]
  return None


def homes(world):
  root = os.environ.get('FAKE_TPU_WORKERS')
  if not root:
    return []
  return [os.path.join(root, f'worker_{i}')
          for i in range(world.get('workers', 2))]


def selected(rest, world):
  which = flag(rest, '--worker') or '0'
  every = homes(world)
  if which == 'all':
    return list(enumerate(every))
  return [(int(i), every[int(i)]) for i in which.split(',')]


def scp(rest, world):
  src, dst = [a for a in rest if not a.startswith('-')][:2]
  for _, home in selected(rest, world):
    shutil.copyfile(src, os.path.join(home, dst.split(':', 1)[1]))
  return 0


def install(rest, world):
  """What the setup command leaves on a worker, without apt or pip."""
  for _, home in selected(rest, world):
    code = os.path.join(home, 'alexnet_jax')
    shutil.rmtree(code, ignore_errors=True)
    with tarfile.open(os.path.join(home, 'alexnet_jax.tar.gz')) as tar:
      tar.extractall(code, filter='data')
    os.remove(os.path.join(home, 'alexnet_jax.tar.gz'))
    shutil.copyfile(os.environ['FAKE_TRAINER'],
                    os.path.join(code, 'alexnet_jax', 'main.py'))
    venv = os.path.join(home, 'alexnet_jax_venv', 'bin')
    os.makedirs(venv, exist_ok=True)
    if not os.path.exists(os.path.join(venv, 'python')):
      os.symlink(os.path.realpath(sys.executable),
                 os.path.join(venv, 'python'))
  return 0


def worker_env(i, home, start, workers):
  """What sshd gives the command on worker i; `start` names this call, run
  on `workers` workers (the dummy trainers of one start wait for each
  other)."""
  return dict(os.environ, HOME=home, TPU_WORKER_ID=str(i),
              FAKE_TPU_START=start, FAKE_TPU_START_WORKERS=str(workers),
              PATH=os.environ.get('FAKE_WORKER_PATH', os.environ['PATH']),
              FAKE_GCLOUD_WORKER='1')


def execute(command, rest, world, outcome):
  """The command on each selected worker, as sshd would run it."""
  chosen, start = selected(rest, world), str(time.time_ns())
  procs = [subprocess.Popen(['bash', '-c', command], cwd=home,
                            env=worker_env(i, home, start, len(chosen)),
                            start_new_session=True)
           for i, home in chosen]
  hang_up = lambda *_: [os.killpg(p.pid, signal.SIGHUP) for p in procs
                        if p.poll() is None]
  def interrupted(signum, frame):  # Ctrl-C here: the connections close.
    hang_up()
    sys.exit(255)
  signal.signal(signal.SIGINT, interrupted)
  signal.signal(signal.SIGTERM, interrupted)
  start = time.monotonic()
  lost = False  # The connection dropped, or the VM went away.
  while any(p.poll() is None for p in procs):
    elapsed = time.monotonic() - start
    if not lost and elapsed >= outcome.get('drop_after', float('inf')):
      hang_up()
      lost = True
    if not lost and elapsed >= outcome.get('preempt_after', float('inf')):
      preempt(world)
      hang_up()
      lost = True
    time.sleep(0.05)
  statuses = [p.wait() for p in procs]
  if lost:
    return 255
  return next((s for s in statuses if s != 0), 0)


def worker_pids(home):
  """Every process on that worker: those whose HOME is its home."""
  pids = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/environ', 'rb') as f:
          if f'HOME={home}'.encode() in f.read().split(b'\0'):
            pids.append(int(entry))
      except OSError:
        continue
  return pids


def kill_workers(world, grace=5.0):
  """SIGTERM to every worker process (a VM shutting down), SIGKILL later."""
  pids = [p for home in homes(world) for p in worker_pids(home)]
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in pids:
      try:
        os.kill(pid, sig)
      except OSError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
      time.sleep(0.05)


def alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def preempt(world):
  """A Spot preemption: the trainers get SIGTERM (they save and exit), then
  the VM is PREEMPTED and nothing on it runs."""
  for home in homes(world):
    try:
      with open(os.path.join(home, 'alexnet_jax_runs', 'current', 'pid')) as f:
        os.kill(int(f.read()), signal.SIGTERM)
    except (OSError, ValueError):
      pass
  time.sleep(1.0)
  kill_workers(world)
  world['node']['state'] = 'PREEMPTED'
