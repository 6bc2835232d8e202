"""The fake Cloud TPU worlds the launcher's tests run in.

FakeCloud, in-process: launch/tpu_vm.py's main() with this object as its
gcloud runner and a FakeClock (sleeps recorded, not slept), the calls
answered by tests/fake_gcloud/world.py in record mode (remote commands
recorded, not run, their outcomes scripted): the whole state machine.

WorkerCloud, execute mode: launch/tpu_vm.py as a subprocess, the fake gcloud
binary (tests/fake_gcloud/gcloud.py, the same world) first on PATH, real
workers (home folders where the remote commands run) and a dummy trainer,
or the real one."""

import dataclasses
import io
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from unittest import mock

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKES = REPO / 'tests' / 'fake_gcloud'
LAUNCHER = REPO / 'launch' / 'tpu_vm.py'
sys.path[:0] = [str(REPO / 'launch'), str(FAKES)]
# pylint: disable=g-import-not-at-top,wrong-import-position
import tpu_vm  # noqa: E402
from tpu import workers as tpu_workers  # noqa: E402
from world import FolderStorage, RecordedWorkers, World, kind_of  # noqa: E402
import workers as fake_workers  # noqa: E402

TPU_ARGS = ('--workdir=gs://bucket/runs/a1', '--tfds-data-dir',
            'gs://bucket/tfds')
CLOCK_START = 1_800_000_000  # 2027-01-15T08:00:00Z
# The remote steps of a start, in order.
SETUP_AND_TRAIN = ['status', 'scp', 'stop', 'install', 'start', 'follow']
# What `tpu-vm create` says in a stockout.
STOCKOUT = ('ERROR: (gcloud.compute.tpus.tpu-vm.create) {"code": 8, "message":'
            ' "There is no more capacity in the zone \\"us-central2-b\\"; you '
            'can try in another zone"}')


def option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def kind(argv):
  """What a gcloud call (argv after `gcloud`) is, in the launcher's terms."""
  if argv[0] == 'storage':
    return 'storage-' + argv[1]
  group, verb = argv[2], argv[3]
  if group == 'queued-resources':
    return 'qr-' + verb
  return kind_of(option(argv, '--command')) if verb == 'ssh' else verb


def node(state, accelerator='v4-32', qr=''):
  return {'node': {'name': 'my-tpu', 'state': state, 'type': accelerator,
                   'qr': qr}}


def last_line(result):
  return result.stderr.splitlines()[-1]


def restart_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith('tpu_vm.py: restart ')]


def decision_lines(stderr):
  return [l[len('tpu_vm.py: '):] for l in stderr.splitlines()
          if l.startswith('tpu_vm.py: ')]


class FakeClock:
  """The time module's time() and sleep(): sleeps recorded, not slept."""

  def __init__(self):
    self.now, self.sleeps = CLOCK_START, []

  def time(self):
    return self.now

  def sleep(self, seconds):
    self.sleeps.append(seconds)
    self.now += seconds

  def advance(self, seconds):
    self.now += seconds


@dataclasses.dataclass
class Launched:
  returncode: int
  stdout: str
  stderr: str


class FakeCloud:
  """The launcher's gcloud runner, in-process: the real runner's interface
  (run(argv, capture, show) -> CompletedProcess), the world's answers."""

  def __init__(self, tmp_path):
    self.gcs = tmp_path / 'gcs'
    (self.gcs / 'bucket').mkdir(parents=True)
    self.state, self.calls, self.clock = {}, [], FakeClock()

  def run(self, argv, capture=False, show=True):
    assert argv[0] == 'gcloud', argv
    if show:
      print('+', shlex.join(argv), file=self.err)
    self.calls.append(argv[1:])
    status, out, err = self.sim.call(argv[1:])
    if not capture:
      self.out.write(out)
      self.err.write(err)
    return subprocess.CompletedProcess(argv, status, out, err)

  def launch(self, *args, world=None, max_restarts=None, keep=False,
             main_args=('--config.num_epochs=2',), **environ):
    """The launcher to its end; `keep`: in the world (and at the time) the
    last one left. The calls are this launcher's."""
    if not keep:
      self.state, self.clock = json.loads(json.dumps(world or {})), FakeClock()
    self.sim = World(self.state, FolderStorage(str(self.gcs)),
                     RecordedWorkers(), self.clock)
    self.calls, self.out, self.err = [], io.StringIO(), io.StringIO()
    argv = ['--name=my-tpu', *args] + (
        [f'--max-restarts={max_restarts}'] if max_restarts is not None else [])
    argv += ['--', *main_args] if main_args else []
    # The tarball is an empty file here: what is in it is the concern of
    # the execute-mode tests, which unpack it on their workers.
    with mock.patch.object(tpu_workers, 'pack',
                           lambda repo, path: open(path, 'w').close()):
      status = tpu_vm.main(argv, environ, runner=self, clock=self.clock,
                           out=self.out, err=self.err)
    return Launched(status, self.out.getvalue(), self.err.getvalue())

  def kinds(self):
    """The calls but storage's (decision-log uploads): the launcher's path."""
    return [k for k in map(kind, self.calls) if not k.startswith('storage')]

  def of(self, what):
    return [c for c in self.calls if kind(c) == what]

  def world(self):
    return self.state

  def sleeps(self):
    return self.clock.sleeps

  def decisions(self):
    """The workdir's decision log, without its time stamps."""
    path = self.gcs / 'bucket' / 'runs' / 'a1' / 'logs' / 'launcher.log'
    return [l.split(' ', 1)[1] for l in path.read_text().splitlines()]


def launch(cloud, *args, **kwargs):
  """The launcher with the usual workdir and data dir, to its end."""
  return cloud.launch(*args, *TPU_ARGS, **kwargs)


class WorkerCloud:
  """The fake gcloud binary first on PATH, its world in files, and real
  workers; the launcher runs as a user runs it, in a process of its own."""

  def __init__(self, tmp_path, workers=2):
    self.tmp = tmp_path
    self.bin = tmp_path / 'fakebin'
    self.bin.mkdir()
    gcloud = self.bin / 'gcloud'
    gcloud.write_text(  # -S: starts faster.
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S '
        f'{shlex.quote(str(FAKES / "gcloud.py"))} "$@"\n')
    gcloud.chmod(0o755)
    self.state, self.log = tmp_path / 'world.json', tmp_path / 'calls.jsonl'
    self.gcs, self.workers = tmp_path / 'gcs', tmp_path / 'workers'
    (self.gcs / 'bucket').mkdir(parents=True)
    self.n_workers, self.calls = workers, []

  def env(self, **extra):
    path = os.environ['PATH']
    env = dict(os.environ, PATH=f'{self.bin}:{path}', TPU_POLL_SECONDS='0',
               TPU_RETRY_SECONDS='0', FAKE_GCLOUD_LOG=str(self.log),
               FAKE_GCLOUD_STATE=str(self.state), FAKE_GCS_ROOT=str(self.gcs),
               FAKE_WORKER_PATH=f'{self.bin}:{path}',
               FAKE_TRAINER=str(FAKES / 'dummy_main.py'),
               FAKE_TPU_WORKERS=str(self.workers))
    env.pop('PYTHONPATH', None)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}

  def reset(self, world):
    world = dict(world or {})
    world.setdefault('workers', self.n_workers)
    if (world.get('node') or {}).get('state') == 'READY':
      for i in range(self.n_workers):
        (self.workers / f'worker_{i}').mkdir(parents=True, exist_ok=True)
    self.state.write_text(json.dumps(world))
    self.log.write_text('')

  def command(self, *args):
    # -S: no site-packages, so the launcher runs on the standard library.
    return [sys.executable, '-S', str(LAUNCHER), '--name=my-tpu', *args]

  def launch(self, *args, world=None, keep=False,
             main_args=('--config.num_epochs=2',), timeout=300, **env):
    """The launcher to its end; `keep` keeps the world as it was left."""
    if not keep:
      self.reset(world)
    self.log.write_text('')
    tail = ('--', *main_args) if main_args else ()
    result = subprocess.run(self.command(*args, *tail), cwd=REPO,
                            env=self.env(**env), capture_output=True,
                            text=True, timeout=timeout)
    self.read_calls()
    return result

  def start(self, *args, world=None, main_args=('--config.num_epochs=2',),
            **env):
    """The launcher in the background (its own process group, as in a
    terminal), its stdout and stderr in files."""
    self.reset(world)
    self.out = open(self.tmp / 'launcher.out', 'w')
    self.err = open(self.tmp / 'launcher.err', 'w')
    return subprocess.Popen(
        self.command(*args, *TPU_ARGS, '--', *main_args), cwd=REPO,
        env=self.env(**env), stdout=self.out, stderr=self.err, text=True,
        start_new_session=True)

  def read_calls(self):
    self.calls = [json.loads(l) for l in self.log.read_text().splitlines()]

  def of(self, what):
    self.read_calls()
    return [c for c in self.calls if kind(c) == what]

  def decisions(self, bucket='bucket', workdir='runs/a1'):
    path = self.gcs / bucket / workdir / 'logs' / 'launcher.log'
    return [l.split(' ', 1)[1] for l in path.read_text().splitlines()]

  def starts(self):
    path = self.gcs / 'starts.jsonl'
    if not path.exists():
      return []
    return [json.loads(l) for l in path.read_text().splitlines()]

  def worker_log(self, i=0):
    return (self.workers / f'worker_{i}' / 'alexnet_jax_runs' / 'current' /
            'log').read_text()

  def cleanup(self):
    """No process of a fake worker outlives its test."""
    for i in range(self.n_workers):
      for pid in fake_workers.worker_pids(str(self.workers / f'worker_{i}')):
        try:
          os.kill(pid, signal.SIGKILL)
        except OSError:
          pass


def wait_for(predicate, timeout=120, what='it'):
  """Polls for an event (a file, a line); `timeout` only bounds a hang."""
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, f'waited {timeout} s for {what}'
    time.sleep(0.05)
