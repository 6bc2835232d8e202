"""The fake cluster the fake commands share: its settings, its one job's
state, and how each command reports an error.

Settings (environment; the defaults are slurm.conf's where Slurm has one):
  FAKE_SLURM_NODES (16), FAKE_SLURM_NODE_GPUS (8), FAKE_SLURM_NODE_CPUS
    (64), FAKE_SLURM_GPU_TYPE (a100): identical nodes, GPUs as gres/gpu.
  FAKE_SLURM_EXCLUSIVE_GRES (0): whether --exclusive also allocates every
    GPU of the node. sbatch(1) says an exclusive job "is allocated all CPUs
    and GRES on all nodes" (since Slurm 20.02), but the partition's
    OverSubscribe takes precedence over the job's --exclusive, and GPUs are
    only GRES where the site configures them (GresTypes, gres.conf): sites
    differ, so the default is the site where --exclusive gives no GPUs.
  FAKE_SLURM_KILL_WAIT (30): KillWait, seconds between SIGTERM and SIGKILL.
  FAKE_SLURM_KILL_ON_BAD_EXIT (0): KillOnBadExit, srun's default for -K.
  FAKE_SLURM_JOB_REQUEUE (1): JobRequeue, sbatch's default for --requeue.
  FAKE_SLURM_GRACE_TIME (0): the partition's GraceTime (preemption).
  FAKE_SLURM_JOB_ID (4242): the id the next job gets.
  FAKE_SLURM_DIR: the cluster's state (job.json, steps/, the controller's
    request FIFO) and the tasks' output (task_I.out, task_I.err); required
    by every command that touches a job.
  FAKE_SLURM_LOG: each command appends its command line, and sbatch the
    allocation and what happened to the job.
"""

import json
import os
import signal
import sys
import time

SETTINGS = {'NODES': 16, 'NODE_GPUS': 8, 'NODE_CPUS': 64, 'GPU_TYPE': 'a100',
            'EXCLUSIVE_GRES': 0, 'KILL_WAIT': 30, 'KILL_ON_BAD_EXIT': 0,
            'JOB_REQUEUE': 1, 'GRACE_TIME': 0, 'JOB_ID': 4242}
HOST = 'localhost'
STEP_ABORT_TIME = 2  # src/api/step_launch.c: srun's extra wait after abort.


def setting(name):
  default = SETTINGS[name]
  value = os.environ.get(f'FAKE_SLURM_{name}', str(default))
  return int(value) if isinstance(default, int) else value


def log(line):
  path = os.environ.get('FAKE_SLURM_LOG')
  if path:
    with open(path, 'a') as f:
      f.write(line + '\n')


def error(prog, message, status):
  """Slurm's error(): 'PROG: error: MESSAGE' on stderr, then exit."""
  print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def state_dir():
  path = os.environ.get('FAKE_SLURM_DIR')
  if not path:
    sys.exit('fake slurm: set FAKE_SLURM_DIR (the fake cluster\'s state)')
  os.makedirs(os.path.join(path, 'steps'), exist_ok=True)
  return path


def write_json(path, data):
  """Atomically, so a reader never sees half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f)
  os.replace(path + '.tmp', path)


def read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, ValueError):  # Gone, or created but not filled.
    return None


def job_record():
  """The running job ({job_id, ctld_pid, batch_pid, ...}) or None."""
  return read_json(os.path.join(state_dir(), 'job.json'))


def running_job(job_id):
  """The job with this id if it is running here, else None."""
  job = job_record()
  if job and str(job['job_id']) == str(job_id) and job['state'] == 'RUNNING':
    return job
  return None


def steps():
  """{step_id: {srun_pid, tasks: [pid...]}} of the job's running steps."""
  root = os.path.join(state_dir(), 'steps')
  found = {}
  for name in os.listdir(root):
    if name.endswith('.json'):
      data = read_json(os.path.join(root, name))
      if data:
        found[int(name[:-5])] = data
  return found


def signal_groups(pgids, sig):
  """Signals each process group that still exists (a step's task is the
  leader of its own group, as a cgroup holds a task and its children)."""
  for pgid in pgids:
    try:
      os.killpg(pgid, sig)
    except ProcessLookupError:
      pass


def ctld_request(line):
  """Hands the fake controller (the job's sbatch) a request, as scancel and
  scontrol hand slurmctld theirs; it acts on it asynchronously."""
  fifo = os.path.join(state_dir(), 'ctld.fifo')
  fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
  try:
    os.write(fd, (line + '\n').encode())
  finally:
    os.close(fd)


def timestamp():
  """slurm_make_time_str's default format."""
  return time.strftime('%Y-%m-%dT%H:%M:%S')


def gres_count(value):
  """A --gpus-per-node value, [type:]count, as the controller reads it:
  (type or None, count), or None when the controller refuses it ("Invalid
  generic resource (gres) specification": a type this site has not, a
  count that is no number)."""
  kind, _, count = value.rpartition(':')
  if not count.isdigit():
    if kind or not count:
      return None
    kind, count = count, '1'  # `--gpus-per-node=a100` is one a100.
  if kind and kind != setting('GPU_TYPE'):
    return None
  return kind or None, int(count)


SIGNAL_NAMES = {s.value: s.name for s in signal.Signals}
