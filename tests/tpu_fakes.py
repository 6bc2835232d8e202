"""The fake Cloud TPU world the launch/tpu_vm.sh tests run the launcher in:
the fake gcloud (tests/fake_gcloud/gcloud.py), a fake clock (date and sleep,
tests/fake_gcloud/clock), Cloud Storage as a folder, and, in execute mode,
real workers (home folders where the remote commands run) with a dummy
trainer (tests/fake_gcloud/dummy_main.py)."""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

from tests.test_launch import BASH, REPO, TPU, option

FAKES = pathlib.Path(__file__).resolve().parent / 'fake_gcloud'
TPU_ARGS = ('--workdir=gs://bucket/runs/a1', '--tfds-data-dir', 'gs://bucket/tfds')
CLOCK_START = 1_800_000_000  # The fake clock's epoch seconds at the start.


def kind(argv):
  """What a gcloud call (argv after `gcloud`) is, in this launcher's terms."""
  if argv[0] == 'storage':
    return 'storage-' + argv[1]
  group, verb = argv[2], argv[3]
  if group == 'queued-resources':
    return 'qr-' + verb
  if verb == 'ssh':
    for word in ('status', 'start', 'follow', 'logs', 'stopped'):
      if f'tpu_worker.sh {word}' in option(argv, '--command'):
        return word
    command = option(argv, '--command')
    if 'pgrep' in command:
      return 'stop'
    assert 'pip install' in command, command
    return 'install'
  return verb


# The remote steps of a start, in order.
SETUP_AND_TRAIN = ['status', 'scp', 'stop', 'install', 'start', 'follow']
# What `tpu-vm create` says in a stockout.
STOCKOUT = ('ERROR: (gcloud.compute.tpus.tpu-vm.create) {"code": 8, "message":'
            ' "There is no more capacity in the zone \\"us-central2-b\\"; you '
            'can try in another zone"}')


def launch(cloud, *args, **kwargs):
  """The launcher with the usual workdir and data dir, to its end."""
  return cloud.launch(*args, *TPU_ARGS, **kwargs)


def last_line(result):
  return result.stderr.splitlines()[-1]


def node(state, accelerator='v4-32', qr=''):
  return {'node': {'state': state, 'type': accelerator, 'qr': qr}}


def restart_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith('tpu_vm.sh: restart ')]


class FakeCloud:
  """A fake `gcloud` on PATH, its simulated world and its call log; with
  `execute`, workers that run the remote commands for real."""

  def __init__(self, tmp_path, execute=False, workers=2):
    self.tmp = tmp_path
    self.bin = tmp_path / 'fakebin'
    self.bin.mkdir()
    gcloud = self.bin / 'gcloud'
    gcloud.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S '
        f'{shlex.quote(str(FAKES / "gcloud.py"))} "$@"\n')  # -S: starts faster
    gcloud.chmod(0o755)
    self.state = tmp_path / 'world.json'
    self.log = tmp_path / 'calls.jsonl'
    self.clock = tmp_path / 'clock'
    self.gcs = tmp_path / 'gcs'
    self.gcs.mkdir()
    self.workers = tmp_path / 'workers' if execute else None
    self.n_workers = workers
    self.calls = []

  def env(self, **extra):
    path = os.environ['PATH']
    env = dict(os.environ, PATH=f'{self.bin}:{FAKES / "clock"}:{path}',
               TPU_POLL_SECONDS='0', FAKE_GCLOUD_LOG=str(self.log),
               FAKE_GCLOUD_STATE=str(self.state), FAKE_CLOCK=str(self.clock),
               FAKE_GCS_ROOT=str(self.gcs), FAKE_WORKER_PATH=f'{self.bin}:{path}',
               FAKE_TRAINER=str(FAKES / 'dummy_main.py'))
    env.pop('PYTHONPATH', None)
    if self.workers:
      env['FAKE_TPU_WORKERS'] = str(self.workers)
    env.update(extra)
    return env

  def reset(self, world):
    world = dict(world or {})
    world.setdefault('workers', self.n_workers)
    if self.workers and (world.get('node') or {}).get('state') == 'READY':
      for i in range(self.n_workers):
        (self.workers / f'worker_{i}').mkdir(parents=True, exist_ok=True)
    self.state.write_text(json.dumps(world))
    self.log.write_text('')
    self.clock.write_text(str(CLOCK_START))

  def launch(self, *args, world=None, max_restarts=None, keep=False,
             main_args=('--config.num_epochs=2',), timeout=120, **env):
    """Runs the launcher to its end; `keep` keeps the world (and the clock)
    as the last launcher left it. The call log is this launcher's."""
    if not keep:
      self.reset(world)
    self.log.write_text('')
    extra = () if max_restarts is None else (f'--max-restarts={max_restarts}',)
    tail = ('--', *main_args) if main_args else ()
    result = subprocess.run(
        [BASH, str(TPU), '--name=my-tpu', *extra, *args, *tail], cwd=REPO,
        env=self.env(**env), capture_output=True, text=True, timeout=timeout)
    self.read_calls()
    return result

  def start(self, *args, world=None, **env):
    """The launcher in the background (its own process group, as in a
    terminal): Popen, its stdout and stderr in files."""
    self.reset(world)
    self.out = open(self.tmp / 'launcher.out', 'w')
    self.err = open(self.tmp / 'launcher.err', 'w')
    return subprocess.Popen(
        [BASH, str(TPU), '--name=my-tpu', *args, *TPU_ARGS, '--',
         '--config.num_epochs=2'], cwd=REPO, env=self.env(**env),
        stdout=self.out, stderr=self.err, text=True, start_new_session=True)

  def read_calls(self):
    self.calls = [json.loads(line) for line in
                  self.log.read_text().splitlines()]

  def kinds(self):
    """The calls but storage's (decision-log uploads): the launcher's path."""
    self.read_calls()
    return [k for k in map(kind, self.calls) if not k.startswith('storage')]

  def world(self):
    return json.loads(self.state.read_text())

  def of(self, what):
    return [c for c in self.calls if kind(c) == what]

  def sleeps(self):
    path = pathlib.Path(f'{self.clock}.sleeps')
    return [int(x) for x in path.read_text().split()] if path.exists() else []

  def decisions(self):
    """The workdir's decision log: (its lines without the time stamps)."""
    path = self.gcs / 'bucket' / 'runs' / 'a1' / 'logs' / 'launcher.log'
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
    if not self.workers:
      return
    sys.path.insert(0, str(FAKES))
    import workers as fake  # pylint: disable=g-import-not-at-top
    sys.path.pop(0)
    for i in range(self.n_workers):
      for pid in fake.worker_pids(str(self.workers / f'worker_{i}')):
        try:
          os.kill(pid, signal.SIGKILL)
        except OSError:
          pass


def wait_for(predicate, timeout=60, what='it'):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, f'waited {timeout} s for {what}'
    time.sleep(0.05)
