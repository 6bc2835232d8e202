"""launch/tpu_vm.py end to end on fake workers (tests/tpu_fakes.py
WorkerCloud: the fake gcloud binary in execute mode, each worker a home
folder where the remote commands really run, in a session of their own as
under sshd, with a dummy trainer that counts steps and keeps them in the
workdir). What the user sees: training that outlives the launcher, a rerun
or --attach that follows instead of starting another trainer, a dropped
connection followed again, a preempted VM brought back through stockouts
and resumed, --stop, --logs. Real processes and signals: the slow tier.
The real trainer on these workers: test_launch_tpu_trainer.py."""

import os
import signal

import pytest

from tests.tpu_fakes import STOCKOUT, TPU_ARGS, WorkerCloud, node
from tests.tpu_fakes import restart_lines, wait_for

pytestmark = pytest.mark.slow  # The whole module: see conftest.py.


@pytest.fixture
def cloud(tmp_path):
  c = WorkerCloud(tmp_path)
  yield c
  c.cleanup()


def steps_saved(cloud):
  path = cloud.gcs / 'bucket' / 'runs' / 'a1' / 'dummy_step'
  return int(path.read_text()) if path.exists() else 0


def text(path):
  return path.read_text() if path.exists() else ''


def interrupt(cloud, launcher):
  """Ctrl-C in the launcher's terminal: SIGINT to its process group."""
  os.killpg(launcher.pid, signal.SIGINT)
  assert launcher.wait(timeout=60) == 130
  return text(cloud.tmp / 'launcher.err')


def test_training_outlives_the_launcher_and_is_followed_again(cloud):
  launcher = cloud.start(DUMMY_STEPS='40', DUMMY_STEP_SECONDS='0.1',
                         TPU_LOG_COPY_SECONDS='1')
  wait_for(lambda: 'step 3/40' in text(cloud.tmp / 'launcher.out'),
           what='progress shown by the launcher')
  err = interrupt(cloud, launcher)
  assert 'tpu_vm.py: detached (Ctrl-C): training, if it runs, goes on on TPU ' \
      'VM my-tpu; --attach follows it, --stop stops it\n' in err
  trainers = cloud.starts()
  assert sorted(t['worker'] for t in trainers) == [0, 1]
  assert all(t['sid'] != launcher.pid for t in trainers)  # Its own session.
  wait_for(lambda: steps_saved(cloud) == 40, what='training to go on')

  attach = cloud.launch('--attach', main_args=(), keep=True)
  assert attach.returncode == 0, attach.stderr
  assert attach.stdout.splitlines()[-1] == 'step 40/40'
  assert 'training exited with status 0' in attach.stderr
  logs = cloud.launch('--logs', main_args=(), keep=True)
  assert logs.stdout.splitlines() == (
      ['starting'] + [f'step {i}/40' for i in range(1, 41)])
  copies = list((cloud.gcs / 'bucket' / 'runs' / 'a1' / 'logs').glob('2*.log'))
  assert [c.read_text() for c in copies] == [cloud.worker_log(0)]
  assert len(cloud.starts()) == 2  # One trainer per worker, ever.


def test_the_same_command_again_follows_instead_of_starting_another(cloud):
  launcher = cloud.start(DUMMY_STEPS='40', DUMMY_STEP_SECONDS='0.1')
  wait_for(lambda: len(cloud.starts()) == 2, what='both trainers')
  interrupt(cloud, launcher)
  again = cloud.launch(*TPU_ARGS, keep=True)
  assert again.returncode == 0, again.stderr
  assert 'already training on TPU VM my-tpu: following it' in again.stderr
  assert 'training on TPU VM my-tpu finished (exit status 0)' in again.stderr
  assert len(cloud.starts()) == 2
  assert not cloud.of('install')


def test_a_dropped_connection_is_followed_again(cloud):
  result = cloud.launch(*TPU_ARGS,
                        world={'train': [{'drop_after_line': 'step 10/30'}]},
                        DUMMY_STEPS='30', DUMMY_STEP_SECONDS='0.05')
  assert result.returncode == 0, result.stderr
  assert 'lost the connection to worker 0' in result.stderr
  assert 'exited with return code [255]' in result.stderr  # gcloud said so.
  assert result.stdout.splitlines()[-1] == 'step 30/30'
  assert not restart_lines(result.stderr)
  assert len(cloud.starts()) == 2 and steps_saved(cloud) == 30


def test_a_start_retried_after_a_drop_starts_no_second_trainer(cloud):
  """The connection drops after `start` ran on the workers (what gcloud's
  own ssh retries run into too): the launcher asks again, finds its command
  training and follows it."""
  result = cloud.launch(*TPU_ARGS, world={'start': [{'rc': 255}]},
                        DUMMY_STEPS='30', DUMMY_STEP_SECONDS='0.05')
  assert result.returncode == 0, result.stderr
  assert 'already training on TPU VM my-tpu: following it' in result.stderr
  assert len(cloud.starts()) == 2
  assert len(cloud.of('start')) == 1 and len(cloud.of('status')) == 2


def test_preempted_brought_back_through_stockouts_and_resumed(cloud):
  """A Spot preemption mid-run: the trainers save on SIGTERM, the VM goes;
  the launcher recreates it, waiting out two stockouts, and training
  resumes from the saved step on the new VM, on every worker, even one that
  starts late."""
  world = dict(node('READY'), train=[{'preempt_after_line': 'step 10/60'}],
               create_errors=[STOCKOUT, STOCKOUT])
  result = cloud.launch(*TPU_ARGS, world=world, DUMMY_STEPS='60',
                        DUMMY_STEP_SECONDS='0.05', DUMMY_LATE_WORKER='1=0.5')
  assert result.returncode == 0, result.stderr
  first, second = cloud.starts()[:2], cloud.starts()[2:]
  assert len(first) == len(second) == 2
  saved = second[0]['resumed_from']
  assert 10 <= saved < 60 and all(t['resumed_from'] == saved for t in second)
  assert f'resuming from step {saved}' in cloud.worker_log(0)
  assert steps_saved(cloud) == 60
  decisions = cloud.decisions()
  assert [d for d in decisions if d.startswith('restart ')] == [
      'restart 1/3 (in the last 24h): TPU VM my-tpu is PREEMPTED (training '
      'exit status 255); training resumes from gs://bucket/runs/a1']
  assert sum('There is no more capacity in the zone' in d and 'trying again'
             in d for d in decisions) == 2
  assert decisions[-1] == 'training on TPU VM my-tpu finished (exit status 0)'


def test_stop_stops_the_run_that_a_launcher_follows(cloud):
  launcher = cloud.start(DUMMY_STEPS='400', DUMMY_STEP_SECONDS='0.05')
  wait_for(lambda: steps_saved(cloud) >= 3, what='training')
  stop = cloud.launch('--stop', '--stop-grace=30', main_args=(), keep=True)
  assert stop.returncode == 0, stop.stderr
  assert launcher.wait(timeout=60) == 143
  err = text(cloud.tmp / 'launcher.err')
  assert 'training on TPU VM my-tpu was stopped with --stop; it saved a ' \
      'checkpoint' in err
  # The trainer's own status, recorded by the wrapper the stop left alone,
  # which also copied the last of the log to the workdir.
  assert 'training was stopped on purpose (exit status 143)' in err
  assert 'stopped by SIGTERM at step' in cloud.worker_log(0)
  [log] = [p for p in (cloud.gcs / 'bucket' / 'runs' / 'a1' / 'logs').iterdir()
           if p.name != 'launcher.log']  # Worker 0's.
  assert 'stopped by SIGTERM at step' in log.read_text()
  assert steps_saved(cloud) < 400
