"""launch/tpu_worker.sh, the TPU launcher's worker side, run here as it runs
on a worker (HOME a temporary folder, a small bash trainer): training
detached from the ssh session that started it, one trainer per worker
however often `start` is retried, the log followed to the trainer's exit
status, and worker 0's log copied to the workdir (the fake gcloud's Cloud
Storage) as the run goes."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tests.launch_scripts import BASH, REPO
from tests.tpu_fakes import FAKES, wait_for

WORKER = REPO / 'launch' / 'tpu_worker.sh'
TRAINER = '''#!/usr/bin/env bash
# A trainer: STEPS steps of 0.1 s, its start recorded; SIGTERM: saves, 143.
echo "$$ $(ps -o sid= $$)" >>"$HOME/trainers"
trap 'echo "stopped by SIGTERM at step $i"; exit 143' TERM
for ((i = 1; i <= ${STEPS:-10}; i++)); do echo "step $i"; sleep 0.1; done
exit "${RC:-0}"
'''


class Worker:
  """A worker's home with the trainer; commands run as a worker runs them."""

  def __init__(self, tmp_path, worker_id=0):
    self.home = tmp_path / f'home{worker_id}'
    self.home.mkdir()
    (self.home / 'trainer.sh').write_text(TRAINER)
    (self.home / 'trainer.sh').chmod(0o755)
    self.gcs = tmp_path / 'gcs'
    (self.gcs / 'bucket').mkdir(parents=True, exist_ok=True)
    bin_dir = tmp_path / 'bin'
    if not bin_dir.exists():
      bin_dir.mkdir()
      (bin_dir / 'gcloud').write_text(
          f'#!/bin/sh\nexec {sys.executable} -S {FAKES / "gcloud.py"} "$@"\n')
      (bin_dir / 'gcloud').chmod(0o755)
    self.env = dict(os.environ, HOME=str(self.home),
                    TPU_WORKER_ID=str(worker_id),
                    PATH=f'{bin_dir}:{os.environ["PATH"]}',
                    FAKE_GCS_ROOT=str(self.gcs),
                    FAKE_GCLOUD_LOG=str(tmp_path / 'gcloud.log'))

  def run(self, *args, **env):
    return subprocess.run([BASH, str(WORKER), *args], cwd=self.home,
                          env=dict(self.env, **env), capture_output=True,
                          text=True, timeout=60)

  def start(self, *command, options=(), **env):
    return self.run('start', *options, '--', *(command or ['./trainer.sh']),
                    **env)

  def run_dir(self):
    return pathlib.Path(os.path.realpath(self.home / 'alexnet_jax_runs' /
                                         'current'))

  def trainers(self):
    path = self.home / 'trainers'
    return path.read_text().split('\n')[:-1] if path.exists() else []

  def finished(self):
    return (self.run_dir() / 'exit_status').exists()

  def kill_all(self):
    for line in self.trainers():
      try:
        os.kill(int(line.split()[0]), signal.SIGKILL)
      except OSError:
        pass


@pytest.fixture
def worker(tmp_path):
  w = Worker(tmp_path)
  yield w
  w.kill_all()


def test_status_start_twice_and_another_command(worker):
  """Nothing runs (4); a start runs the trainer (0, the same command: 0),
  a second start of it starts nothing, another command is refused (3)."""
  assert worker.run('status').returncode == 4
  first = worker.start(STEPS='30')
  assert first.returncode == 0, first.stderr
  assert 'started training' in first.stderr
  again = worker.start(STEPS='30')
  assert again.returncode == 0 and 'not starting another' in again.stderr
  other = worker.start('./trainer.sh', 'other')
  assert other.returncode == 3
  assert 'another training command is running here' in other.stderr
  assert worker.run('status', '--', './trainer.sh').returncode == 0
  assert worker.run('status', '--', './trainer.sh', 'x').returncode == 3
  # To its end (SIGTERM: it stops): one trainer ran, ever.
  os.kill(int((worker.run_dir() / 'pid').read_text()), signal.SIGTERM)
  wait_for(worker.finished, what='the end of the run')
  assert len(worker.trainers()) == 1


def test_concurrent_starts_make_one_trainer(worker):
  """gcloud's ssh retries a dropped connection by running the same command
  again: starts that race make one trainer, and every one of them says so."""
  procs = [subprocess.Popen([BASH, str(WORKER), 'start', '--', './trainer.sh'],
                            cwd=worker.home, env=dict(worker.env, STEPS='20'),
                            stderr=subprocess.PIPE, text=True)
           for _ in range(4)]
  outs = [p.communicate(timeout=60)[1] for p in procs]
  assert [p.returncode for p in procs] == [0] * 4, outs
  assert sum('started training' in o for o in outs) == 1
  wait_for(worker.finished, what='the end of the run')
  assert len(worker.trainers()) == 1


@pytest.mark.slow
def test_training_outlives_the_ssh_session_that_started_it(worker):
  """`start` in a session of its own that then hangs up (what sshd does
  when the connection drops, or the laptop sleeps): the trainer, in another
  session, goes on to the end, its log complete."""
  session = subprocess.Popen(
      [BASH, '-c', f'bash {WORKER} start -- ./trainer.sh; sleep 60'],
      cwd=worker.home, env=dict(worker.env, STEPS='20'),
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  wait_for(lambda: worker.trainers(), what='the trainer')
  os.killpg(session.pid, signal.SIGHUP)
  session.wait(timeout=30)
  pid, sid = map(int, worker.trainers()[0].split())
  assert sid != session.pid and sid != os.getsid(0)
  wait_for(worker.finished, what='the end of the run')
  assert (worker.run_dir() / 'exit_status').read_text().strip() == '0'
  assert 'step 20' in (worker.run_dir() / 'log').read_text()


@pytest.mark.slow
def test_follow_prints_the_log_to_the_end_and_exits_with_its_status(worker):
  assert worker.start(STEPS='15', RC='7').returncode == 0
  follow = worker.run('follow', '--lines=1000')
  assert follow.returncode == 7
  assert follow.stdout.splitlines() == [f'step {i}' for i in range(1, 16)]
  assert follow.stderr.strip().endswith('training exited with status 7')
  # A finished run: its last lines and its status, at once.
  again = worker.run('follow', '--lines=2')
  assert again.returncode == 7 and again.stdout == 'step 14\nstep 15\n'
  assert worker.run('logs').stdout.splitlines()[-1] == 'step 15'
  assert worker.run('status').returncode == 4
  assert 'exited with status 7' in worker.run('status').stderr


@pytest.mark.slow
def test_a_run_stopped_on_purpose_follows_as_stopped(worker):
  assert worker.start(STEPS='100').returncode == 0
  follow = subprocess.Popen([BASH, str(WORKER), 'follow'], cwd=worker.home,
                            env=worker.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  wait_for(lambda: worker.trainers(), what='the trainer')
  assert worker.run('stopped').returncode == 0
  os.kill(int(worker.trainers()[0].split()[0]), signal.SIGTERM)
  out, err = follow.communicate(timeout=60)
  assert follow.returncode == 200
  assert 'stopped by SIGTERM at step' in out
  assert 'training was stopped on purpose (exit status 143)' in err


@pytest.mark.slow
def test_worker_0_copies_its_log_to_the_workdir_as_it_goes(worker, tmp_path):
  """Every --copy-every seconds while training runs, and once at the end,
  with `gcloud storage cp` (here the fake's Cloud Storage); worker 1 does not
  copy its own."""
  options = ('--copy-log-to=gs://bucket/run/logs/', '--copy-every=1')
  assert worker.start(options=options, STEPS='40').returncode == 0
  run = worker.run_dir().name
  copy = worker.gcs / 'bucket' / 'run' / 'logs' / f'{run}.log'
  wait_for(copy.exists, what='the first copy')
  assert not worker.finished()  # A copy while it runs.
  wait_for(worker.finished, what='the end of the run')
  # The last copy was made before the exit status: whole when it ends.
  assert 'step 40' in copy.read_text()
  assert copy.read_text() == (worker.run_dir() / 'log').read_text()

  second = Worker(tmp_path, worker_id=1)
  try:
    assert second.start(options=options, STEPS='15').returncode == 0
    wait_for(second.finished, what='worker 1 to finish')
    assert sorted(p.name for p in copy.parent.iterdir()) == [f'{run}.log']
  finally:
    second.kill_all()


def test_bad_use_is_one_line(worker):
  for args, text in ((('start',), 'start needs the training command after --'),
                     (('start', '--copy-every=0', '--', 'x'),
                      '--copy-every must be a positive integer, got: 0'),
                     (('nonsense',), 'usage: tpu_worker.sh'),
                     (('follow',), 'no training run here')):
    result = worker.run(*args)
    assert result.returncode in (2, 4), result
    assert len(result.stderr.splitlines()) == 1 and text in result.stderr
