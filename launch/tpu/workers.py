"""What runs on the TPU VM's workers, as gcloud commands: this checkout packed
and copied there, leftover trainers stopped, the venv set up, and the trainer
started, followed, shown and stopped through launch/tpu_worker.sh (detached
from ssh, one per worker, a log per run). Shell text only; what to do with
the answers is supervise.py's."""

import os
import shlex
import tarfile

SCRIPT = '~/alexnet_jax/launch/tpu_worker.sh'
HAS_SCRIPT = f'[ -f {SCRIPT} ] || exit 4'
VENV_PYTHON = '~/alexnet_jax_venv/bin/python'  # Outside the code: kept.
# One tarball instead of scp --recurse: one file per worker, no .git/venvs.
LEFT_OUT = {'.git', '.venv', 'venv', 'workdirs', '__pycache__',
            '.pytest_cache'}


def pack(repo, path):
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(repo, arcname='.', filter=lambda info: None if os.path.basename(
        info.name) in LEFT_OUT else info)


def stop_command(grace):
  """SIGTERM to the trainers here (they save and exit), SIGKILL after
  `grace` seconds. Only the venv's python running alexnet_jax.main, at the
  start of its command line: not tpu_worker.sh's wrapper, whose arguments
  name it (it outlives the trainer to record its exit status and copy the
  last of its log), nor the shell that runs this."""
  alive = 'pgrep -u "$me" -f "$pat"'
  return (f'pat="^$HOME/{VENV_PYTHON[2:]} -m alexnet_jax[.]main"; '
          f'me=$(id -u); pids=$({alive}) || exit 0; '
          'echo "$(hostname): stopping training processes" $pids >&2; '
          f'kill -TERM $pids 2>/dev/null; i=0; while [ $i -lt {grace} ] && '
          f'{alive} >/dev/null; do sleep 1; i=$((i + 1)); done; '
          f'pkill -KILL -u "$me" -f "$pat"; while {alive} >/dev/null; do '
          'sleep 1; done; exit 0')


def setup_command(python):
  """The interpreter (apt, when missing), this checkout unpacked, and the
  training requirements plus TPU JAX in the venv."""
  py, apt = shlex.quote(python), 'apt-get -o DPkg::Lock::Timeout=600'
  return (f'set -e; if ! command -v {py} >/dev/null; then sudo {apt} update '
          f'-qq && sudo DEBIAN_FRONTEND=noninteractive {apt} install -y -qq '
          f'{py}-venv; fi; rm -rf ~/alexnet_jax && mkdir ~/alexnet_jax && tar '
          '-xzf ~/alexnet_jax.tar.gz -C ~/alexnet_jax && rm '
          f'~/alexnet_jax.tar.gz; [ -x {VENV_PYTHON} ] || {py} -m venv '
          f'~/alexnet_jax_venv; {VENV_PYTHON} -m pip install -q --upgrade '
          f'pip; {VENV_PYTHON} -m pip install -q -r '
          "~/alexnet_jax/requirements-train.txt 'jax[tpu]==0.10.2'")


def train_command(o):
  """The trainer on a worker (~ expands there). --config.platform=tpu goes
  before the user's arguments: a worker whose TPU did not start fails with
  the trainer's own one-line error, and a --config.platform after -- wins."""
  args = [f'--config={o.config}', f'--workdir={o.workdir}']
  args += [f'--config.tfds_data_dir={o.tfds_data_dir}'] * bool(o.tfds_data_dir)
  args += [f'--config.data_dir={o.data_dir}'] * bool(o.data_dir)
  return ' '.join([f'{VENV_PYTHON} -m alexnet_jax.main', *map(
      shlex.quote, args + ['--config.platform=tpu'] + o.main_args)])


class Workers:
  """The remote steps, each one `tpu-vm ssh` (or scp) and its status."""

  def __init__(self, o, gcloud):
    self.o, self.gcloud = o, gcloud

  def ssh(self, worker, command):
    return self.gcloud('compute', 'tpus', 'tpu-vm', 'ssh', self.o.name,
                       *self.o.gcloud_flags, f'--worker={worker}',
                       f'--command={command}').status

  def status(self):
    """Worker 0's training: 0 this command runs, 3 another one, 4 none."""
    status = self.ssh(0, f'{HAS_SCRIPT}; cd ~/alexnet_jax && bash '
                      f'launch/tpu_worker.sh status -- {train_command(self.o)}')
    return 4 if self.o.dry_run else status

  def start(self, tarball):
    """Copy, stop leftovers, install, start (leftovers stop before the
    install replaces the code and venv they run from): the first failing
    step's status, or 0."""
    o = self.o
    copy = lambda: self.gcloud(
        'compute', 'tpus', 'tpu-vm', 'scp', tarball,
        f'{o.name}:alexnet_jax.tar.gz', *o.gcloud_flags, '--worker=all').status
    start = (f'cd ~/alexnet_jax && bash launch/tpu_worker.sh start '
             f'--copy-log-to={shlex.quote(o.workdir + "/logs/")} '
             f'--copy-every={o.log_copy_seconds} -- {train_command(o)}')
    return copy() or self.ssh('all', stop_command(o.stop_grace)) or self.ssh(
        'all', setup_command(o.worker_python)) or self.ssh('all', start)

  def follow(self, lines):
    return self.ssh(0, f'{HAS_SCRIPT}; bash {SCRIPT} follow --lines={lines}')

  def logs(self):
    return self.ssh(0, f'{HAS_SCRIPT}; bash {SCRIPT} logs')

  def stop(self):
    return self.ssh('all', f'[ -f {SCRIPT} ] && bash {SCRIPT} stopped; '
                    f'{stop_command(self.o.stop_grace)}')
