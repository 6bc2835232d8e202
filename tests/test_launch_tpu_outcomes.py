"""launch/tpu_vm.sh against the fake gcloud (as in test_launch_tpu_cloud.py,
remote commands recorded, not run): what it does when training ends
(finished, preempted, a lost connection or process, a usage error, --stop),
the restart budget per window, and --attach, --logs and --stop."""

import pytest

from tests.tpu_fakes import SETUP_AND_TRAIN, FakeCloud, last_line, launch
from tests.tpu_fakes import node, restart_lines


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


# --- Training's outcomes -----------------------------------------------------------


def test_preempted_during_training_recreates_and_resumes(cloud):
  world = {'train': [{'rc': 255, 'node_state': 'PREEMPTED'}]}
  result = launch(cloud, world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'create', *SETUP_AND_TRAIN,
      'describe',                                   # why did training fail?
      'describe', 'delete', 'describe', 'create', *SETUP_AND_TRAIN]
  first, second = cloud.of('start')
  assert first == second  # same command: it resumes from the workdir
  [line] = restart_lines(result.stderr)
  assert 'restart 1/3 (in the last 24h)' in line and 'PREEMPTED' in line


def test_preempted_queued_node_is_requested_again(cloud):
  world = {'train': [{'rc': 255, 'node_state': 'PREEMPTED'}]}
  result = launch(cloud, '--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'qr-describe', 'qr-create', 'qr-describe', 'describe',
      *SETUP_AND_TRAIN,
      'describe', 'describe', 'qr-delete', 'describe', 'qr-describe',
      'qr-create', 'qr-describe', 'describe', *SETUP_AND_TRAIN]
  assert '--force' in cloud.of('qr-delete')[0]
  assert len(restart_lines(result.stderr)) == 1


def test_vanished_node_is_created_again(cloud):
  result = launch(cloud, world={'train': [{'rc': 255, 'node_state': None}]})
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'create', *SETUP_AND_TRAIN,
                           'describe', 'describe', 'create', *SETUP_AND_TRAIN]
  [line] = restart_lines(result.stderr)
  assert 'gone' in line


def test_lost_ssh_on_ready_node_reconnects_without_restarting(cloud):
  """A dropped connection is not a failure of training, which goes on on
  the workers: the launcher follows it again (with back-off), starting
  nothing and spending no restart."""
  result = launch(cloud, world=dict(node('READY'), train=[255, 255, 0]))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN,
                           'describe', 'follow', 'describe', 'follow']
  assert len(cloud.of('start')) == 1
  assert cloud.sleeps() == [60, 120]
  assert not restart_lines(result.stderr)
  assert 'lost the connection to worker 0 of TPU VM my-tpu (ssh exit status ' \
      '255); training goes on there: trying again in 60s' in result.stderr


@pytest.mark.parametrize('rc, why', [
    (75, 'stopped because one of its processes was lost (exit status 75)'),
    (143, 'got a signal nobody here sent (exit status 143)'),
])
def test_a_lost_process_or_a_stray_sigterm_restarts_in_place(cloud, rc, why):
  result = launch(cloud, world=dict(node('READY'), train=[rc]))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN,
                           'describe', 'describe', *SETUP_AND_TRAIN]
  [line] = restart_lines(result.stderr)
  assert f'training on TPU VM my-tpu (READY) {why}' in line


def test_stopped_with_stop_is_not_restarted(cloud):
  result = launch(cloud, world=dict(node('READY'), train=[200]))
  assert result.returncode == 143
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN]
  assert 'was stopped with --stop' in last_line(result)


def test_usage_error_in_training_is_not_restarted(cloud):
  result = launch(cloud, world=dict(node('READY'), train=[2]))
  assert result.returncode == 2
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN]
  assert not restart_lines(result.stderr)


def test_training_failure_on_ready_node_is_not_restarted(cloud):
  result = launch(cloud, world=dict(node('READY'), train=[1]))
  assert result.returncode == 1
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN, 'describe']
  assert not restart_lines(result.stderr)


def test_max_restarts_zero_disables_restarts(cloud):
  world = dict(node('READY'), train=[{'rc': 255, 'node_state': 'PREEMPTED'}])
  result = launch(cloud, world=world, max_restarts=0)
  assert result.returncode == 255
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN, 'describe']
  assert not restart_lines(result.stderr)
  assert 'no restarts left (0 in the last 24h' in last_line(result)


def test_restarts_run_out(cloud):
  preempted = {'rc': 255, 'node_state': 'PREEMPTED'}
  world = dict(node('READY'), train=[preempted] * 3)
  result = launch(cloud, world=world, max_restarts=2)
  assert result.returncode == 255
  assert len(cloud.of('start')) == 3
  lines = restart_lines(result.stderr)
  assert [l.split(':')[1].strip().split(' (')[0] for l in lines] == [
      'restart 1/2', 'restart 2/2']
  assert 'no restarts left' in last_line(result)


def test_the_restart_budget_counts_per_window(cloud):
  """One restart per 24 h: preemptions 30 h apart are each restarted; one
  an hour after the last is one too many in its window."""
  def preempted(hours):
    return {'rc': 255, 'node_state': 'PREEMPTED', 'hours': hours}
  world = dict(node('READY'),
               train=[preempted(30), preempted(30), preempted(1)])
  result = launch(cloud, '--restart-window=1d', world=world, max_restarts=1)
  assert result.returncode == 255
  assert len(cloud.of('start')) == 3
  assert len(restart_lines(result.stderr)) == 2
  assert 'no restarts left (1 in the last 1d: --max-restarts=1 ' \
      '--restart-window=1d)' in last_line(result)


# --- --attach, --logs, --stop --------------------------------------------------


def test_attach_follows_and_reconnects_but_restarts_nothing(cloud):
  result = cloud.launch('--attach', main_args=(),
                        world=dict(node('READY'), train=[255, 75]))
  assert result.returncode == 75
  assert cloud.kinds() == ['describe', 'follow', 'describe', 'follow',
                           'describe']
  assert 'ended with exit status 75 (the VM is READY); --attach restarts ' \
      'nothing' in last_line(result)


def test_attach_to_nothing_is_one_error(cloud):
  result = cloud.launch('--attach', main_args=(), world={})
  assert result.returncode == 1
  assert last_line(result) == (
      'error: TPU VM my-tpu is not there; nothing to attach to')


def test_logs_of_a_gone_vm_come_from_the_workdir(cloud):
  logs = cloud.gcs / 'bucket' / 'runs' / 'a1' / 'logs'
  logs.mkdir(parents=True)
  (logs / '20270115T080000Z-100.log').write_text('old run\n')
  (logs / '20270116T080000Z-7.log').write_text('step 5/20\nlatest run\n')
  (logs / 'launcher.log').write_text('decisions\n')
  result = cloud.launch('--logs', '--workdir=gs://bucket/runs/a1',
                        main_args=(), world={})
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'step 5/20\nlatest run\n'
  result = cloud.launch('--logs', main_args=(), world={})
  assert result.returncode == 1 and 'give --workdir' in last_line(result)


def test_stop_marks_and_stops_every_worker(cloud):
  result = cloud.launch('--stop', '--workdir=gs://bucket/runs/a1',
                        main_args=(), world=node('READY'))
  assert result.returncode == 0, result.stderr
  [stop] = cloud.of('stopped')
  assert '--worker=all' in stop
  assert cloud.decisions()[-1].startswith('training on TPU VM my-tpu stopped')
