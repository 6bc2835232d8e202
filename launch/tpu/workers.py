"""What runs on the VM's workers, as gcloud commands: this checkout copied
there, leftover trainers stopped, the venv set up, and the trainer started,
followed, shown and stopped through launch/tpu_worker.sh (detached from ssh,
one per worker, a log per run)."""

import os
import shlex
import tarfile

SCRIPT = '~/alexnet_jax/launch/tpu_worker.sh'
VENV_PYTHON = '~/alexnet_jax_venv/bin/python'  # Outside the code: kept.
# One tarball, not scp --recurse: one file per worker, no .git or venvs.
LEFT_OUT = {'.git', '.venv', 'venv', 'workdirs', '__pycache__',
            '.pytest_cache'}


def pack(repo, path):
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(repo, arcname='.', filter=lambda info: None if os.path.basename(
        info.name) in LEFT_OUT else info)


def stop_command(grace):
  """SIGTERM to the trainers (they save and exit), SIGKILL after `grace` s:
  the venv's python running alexnet_jax.main at the start of its command
  line, not tpu_worker.sh's wrapper, which names it and outlives it to
  record its exit status and copy the last of its log."""
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
  """The trainer (~ expands on the worker). --config.platform=tpu before the
  user's arguments: a worker without its TPU fails with the trainer's own
  error line, and a --config.platform after -- wins."""
  args = [f'--config={o.config}', f'--workdir={o.workdir}'] + [
      f'--config.{k}={v}' for k, v in (('tfds_data_dir', o.tfds_data_dir),
                                       ('data_dir', o.data_dir)) if v]
  return ' '.join([f'{VENV_PYTHON} -m alexnet_jax.main', *map(
      shlex.quote, args + ['--config.platform=tpu'] + o.main_args)])


class Workers:
  """The remote steps, each one `tpu-vm ssh` (or scp), to its exit status."""

  def __init__(self, o, gcloud):
    self.o, self.gcloud = o, gcloud

  def ssh(self, worker, command):
    return self.gcloud('compute', 'tpus', 'tpu-vm', 'ssh', self.o.name,
                       *self.o.gcloud_flags, f'--worker={worker}',
                       f'--command={command}').returncode

  def script(self, verb):
    """tpu_worker.sh VERB on worker 0; 4 (no run) when it is not there."""
    return self.ssh(0, f'[ -f {SCRIPT} ] || exit 4; bash {SCRIPT} {verb}')

  def start(self, tarball):
    """Copy, stop leftovers (before the install replaces the code and venv
    they run from), install, start: the first failing step's status, or 0."""
    o = self.o
    start = (f'cd ~/alexnet_jax && bash launch/tpu_worker.sh start '
             f'--copy-log-to={shlex.quote(o.workdir + "/logs/")} '
             f'--copy-every={o.log_copy_seconds} -- {train_command(o)}')
    return self.gcloud(
        'compute', 'tpus', 'tpu-vm', 'scp', tarball, f'{o.name}:'
        'alexnet_jax.tar.gz', *o.gcloud_flags, '--worker=all').returncode or \
        self.ssh('all', stop_command(o.stop_grace)) or \
        self.ssh('all', setup_command(o.worker_python)) or \
        self.ssh('all', start)

  def stop(self):
    return self.ssh('all', f'[ -f {SCRIPT} ] && bash {SCRIPT} stopped; '
                    f'{stop_command(self.o.stop_grace)}')
