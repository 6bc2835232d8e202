"""launch/tpu_vm.py's state machine, in-process: its gcloud runner is the
fake cloud (tests/tpu_fakes.py FakeCloud: gcloud's parsing and answers from
tests/fake_gcloud, remote commands recorded and their outcomes scripted),
its clock a fake one (sleeps recorded, not slept). What it does for each VM
state, queued resource and stockout; when training ends (finished,
preempted, a lost connection or process, a usage error, --stop); the
restart budget per window; --attach, --logs, --stop; the decision log. Real
processes: test_launch_tpu_runs.py."""

import pytest

from tests.tpu_fakes import SETUP_AND_TRAIN, STOCKOUT, FakeCloud
from tests.tpu_fakes import decision_lines, last_line, launch, node
from tests.tpu_fakes import option, restart_lines, tpu_vm


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


# --- Getting the VM ---------------------------------------------------------


def test_fresh_create(cloud):
  result = launch(cloud, '--accelerator-type=v6e-8')
  assert result.returncode == 0, result.stderr
  assert result.stdout == ''
  assert cloud.kinds() == ['describe', 'create', *SETUP_AND_TRAIN]
  [create] = cloud.of('create')
  assert create[4] == 'my-tpu'
  assert '--accelerator-type=v6e-8' in create
  assert '--version=v2-alpha-tpuv6e' in create
  for what in ('scp', 'stop', 'install', 'start'):
    assert '--worker=all' in cloud.of(what)[0]
  assert cloud.world()['node']['state'] == 'READY'


def test_every_decision_is_a_line_here_and_in_the_workdir(cloud):
  """The workdir's launcher.log gets each decision (with its time), and a
  later launcher appends to what an earlier one decided."""
  result = launch(cloud)
  assert result.returncode == 0, result.stderr
  here = decision_lines(result.stderr)
  assert here == cloud.decisions() == [
      'creating TPU VM my-tpu (v4-32, tpu-ubuntu2204-base)',
      'starting training on TPU VM my-tpu (from gs://bucket/runs/a1, if it '
      'holds checkpoints)',
      'training on TPU VM my-tpu finished (exit status 0)']
  log = cloud.gcs / 'bucket' / 'runs' / 'a1' / 'logs' / 'launcher.log'
  assert log.read_text().startswith('2027-01-15T08:00:00Z creating TPU VM')
  launch(cloud, world=node('READY'))
  assert cloud.decisions()[:3] == here
  assert cloud.decisions()[3] == 'using TPU VM my-tpu (READY, v4-32)'
  # Each decision uploaded the whole log, unshown in a real run.
  assert len(cloud.of('storage-cp')) == 3
  assert '+ gcloud storage cp' not in result.stderr


def test_a_decision_that_cannot_be_uploaded_is_carried_by_the_next(cloud):
  (cloud.gcs / 'bucket').rmdir()  # The workdir's bucket is gone: a 404.
  result = launch(cloud)
  assert result.returncode == 0, result.stderr
  assert result.stderr.count('could not copy this decision to '
                             'gs://bucket/runs/a1/logs/launcher.log (the next '
                             'one carries it)') == 3


def test_ready_node_of_same_type_is_reused(cloud):
  result = launch(cloud, world=node('READY'))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN]


def test_the_same_command_already_training_is_followed_not_started(cloud):
  """A rerun of the launcher (a dropped laptop, a second terminal) finds its
  own command training on worker 0: it follows it; nothing is copied,
  installed or started."""
  result = launch(cloud, world=dict(node('READY'), running=0))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'status', 'follow']
  assert 'already training on TPU VM my-tpu: following it' in result.stderr
  assert option(cloud.of('follow')[0], '--command').endswith('--lines=20')


def test_another_command_training_is_an_error(cloud):
  result = launch(cloud, world=dict(node('READY'), running=3))
  assert result.returncode == 2
  assert last_line(result).startswith('error: TPU VM my-tpu is training '
                                      'another command')
  assert '--stop' in last_line(result)
  assert cloud.kinds() == ['describe', 'status']


@pytest.mark.parametrize('state', ['READY', 'PREEMPTED'])
def test_node_of_another_type_is_an_error(cloud, state):
  result = launch(cloud, '--accelerator-type=v4-32',
                  world=node(state, accelerator='v5p-8'))
  assert result.returncode == 2
  assert result.stdout == ''
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and last_line(result) == errors[0]
  assert 'v5p-8' in errors[0] and 'v4-32' in errors[0]
  assert 'delete' in errors[0] and '--name' in errors[0]
  assert cloud.kinds() == ['describe']  # Nothing deleted, created or run.
  assert cloud.world()['node']['type'] == 'v5p-8'


def test_queued_node_of_another_type_names_its_queued_resource(cloud):
  world = node('READY', accelerator='v6e-8',
               qr='projects/p/locations/z/queuedResources/their-qr')
  result = launch(cloud, '--queued', world=world)
  assert result.returncode == 2
  assert 'queued-resources delete their-qr' in last_line(result)
  assert cloud.kinds() == ['describe']


@pytest.mark.parametrize('state', ['PREEMPTED', 'TERMINATED'])
def test_preempted_node_is_deleted_and_created_again(cloud, state):
  result = launch(cloud, world=node(state))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'delete', 'describe', 'create',
                           *SETUP_AND_TRAIN]
  [delete] = cloud.of('delete')
  assert delete[4] == 'my-tpu' and '--quiet' in delete


def test_preempted_node_from_queued_resource_goes_with_it(cloud):
  world = node('PREEMPTED',
               qr='projects/my-project/locations/us-central2-b/'
                  'queuedResources/my-tpu')
  world['qr'] = {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                 'states': ['ACTIVE']}
  result = launch(cloud, '--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'qr-delete', 'describe', 'qr-describe', 'qr-create',
      'qr-describe', 'describe', *SETUP_AND_TRAIN]
  [delete] = cloud.of('qr-delete')
  assert delete[4] == 'my-tpu' and '--force' in delete and '--quiet' in delete


def test_stopped_node_is_started(cloud):
  result = launch(cloud, world=node('STOPPED'))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'start', 'describe', *SETUP_AND_TRAIN]
  assert cloud.of('start')[0][4] == 'my-tpu'


def test_node_in_transition_is_waited_for(cloud):
  world = dict(node('READY'), node_states=['CREATING', 'STARTING'])
  result = launch(cloud, world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe'] * 3 + SETUP_AND_TRAIN
  assert cloud.sleeps() == [30, 30]
  assert 'TPU VM my-tpu is CREATING: checking again in 30s' in result.stderr
  assert 'TPU VM my-tpu is STARTING: checking again in 30s' in result.stderr


def test_a_describe_that_fails_otherwise_than_not_found_stops(cloud):
  """Only NOT_FOUND means "no VM": a refused describe (no permission, a bad
  project) is one error line, never a create."""
  result = launch(cloud, '--project=bad_project')
  assert result.returncode == 1
  assert cloud.kinds() == ['describe']
  assert last_line(result) == (
      'error: gcloud compute tpus tpu-vm describe my-tpu failed: ERROR: '
      '(gcloud) The project property must be set to a valid project ID, '
      '[bad_project] is not a valid project ID.')


# --- Queued resources ---------------------------------------------------------


def test_queued_resource_is_polled_until_active(cloud):
  world = {'qr_states': ['WAITING_FOR_RESOURCES', 'WAITING_FOR_RESOURCES',
                         'ACTIVE']}
  result = launch(cloud, '--queued', '--spot', '--accelerator-type=v5litepod-16',
                  world=world, TPU_POLL_SECONDS='30')
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'qr-describe', 'qr-create', 'qr-describe', 'qr-describe',
      'qr-describe', 'describe', *SETUP_AND_TRAIN]
  [create] = cloud.of('qr-create')
  assert create[4] == 'my-tpu'
  for flag in ('--node-id=my-tpu', '--accelerator-type=v5litepod-16',
               '--runtime-version=v2-alpha-tpuv5-lite', '--spot'):
    assert flag in create
  progress = [l for l in result.stderr.splitlines()
              if l.startswith('tpu_vm.py') and 'WAITING_FOR_RESOURCES' in l]
  assert len(progress) == 2 and cloud.sleeps() == [30, 30]
  assert cloud.world()['node']['qr'].endswith('/my-tpu')


def test_a_queued_request_not_filled_by_the_deadline_gives_up(cloud):
  world = {'qr_states': ['WAITING_FOR_RESOURCES']}
  result = launch(cloud, '--queued', '--retry-for=2h', world=world,
                  TPU_POLL_SECONDS='1800')
  assert result.returncode == 1
  assert cloud.sleeps() == [1800] * 4
  assert last_line(result) == (
      'error: queued resource my-tpu is WAITING_FOR_RESOURCES; giving up '
      'after 7200s (--retry-for=2h)')
  assert cloud.decisions()[-1] == last_line(result)


@pytest.mark.parametrize('state', ['FAILED', 'SUSPENDED'])
def test_queued_resource_that_fails_stops_the_launch(cloud, state):
  result = launch(cloud, '--queued', world={
      'qr_states': ['WAITING_FOR_RESOURCES', state]})
  assert result.returncode == 1
  assert last_line(result).startswith('error: ')
  assert state in last_line(result)
  assert cloud.kinds() == ['describe', 'qr-describe', 'qr-create',
                           'qr-describe', 'qr-describe']


def test_existing_queued_resource_is_waited_for_not_requested_again(cloud):
  # A previous launch was interrupted while its request waited in the queue.
  world = {'qr': {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                  'states': ['PROVISIONING', 'ACTIVE']}}
  result = launch(cloud, '--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'qr-describe', 'qr-describe',
                           'describe', *SETUP_AND_TRAIN]
  assert not cloud.of('qr-create')


def test_failed_queued_resource_is_requested_again(cloud):
  world = {'qr': {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                  'states': ['FAILED']}}
  result = launch(cloud, '--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'qr-describe', 'qr-delete', 'qr-create',
                           'qr-describe', 'describe', *SETUP_AND_TRAIN]
  assert '--force' not in cloud.of('qr-delete')[0]


def test_a_queued_request_gcloud_refuses_stops_at_once(cloud):
  result = launch(cloud, '--queued', '--valid-until-duration=6x')
  assert result.returncode == 1
  assert last_line(result) == (
      'error: gcloud compute tpus queued-resources create my-tpu failed: '
      "ERROR: (gcloud) Duration unit '6x' must be preceded by a number.")


# --- Stockouts -------------------------------------------------------------------


def test_a_stockout_is_tried_again_with_back_off(cloud):
  result = launch(cloud, world={'create_errors': [STOCKOUT] * 3})
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'create'] * 4 + SETUP_AND_TRAIN
  assert cloud.sleeps() == [60, 120, 240]
  retries = [d for d in cloud.decisions() if 'trying again' in d]
  assert len(retries) == 3
  assert retries[0] == (
      f'gcloud compute tpus tpu-vm create my-tpu failed: {STOCKOUT}: trying '
      'again in 60s (attempt 1; giving up at 2027-01-16T08:00:00Z)')


def test_the_back_off_doubles_up_to_30_minutes(cloud):
  result = launch(cloud, world={'create_errors': [STOCKOUT] * 8})
  assert result.returncode == 0, result.stderr
  assert cloud.sleeps() == [60, 120, 240, 480, 960, 1800, 1800, 1800]


def test_stockouts_until_the_deadline_give_up(cloud):
  result = launch(cloud, '--retry-for=10m',
                  world={'create_errors': [STOCKOUT] * 20})
  assert result.returncode == 1
  assert cloud.sleeps() == [60, 120, 240, 180]  # The last one ends at 600 s.
  assert len(cloud.of('create')) == 5
  assert last_line(result) == (
      f'error: gcloud compute tpus tpu-vm create my-tpu failed: {STOCKOUT}; '
      'giving up after 600s (--retry-for=10m)')
  assert cloud.decisions()[-1] == last_line(result)


def test_a_create_error_that_is_not_capacity_stops_at_once(cloud):
  error = ('ERROR: (gcloud.compute.tpus.tpu-vm.create) INVALID_ARGUMENT: '
           'Runtime version "nope" is not supported')
  result = launch(cloud, world={'create_errors': [error]})
  assert result.returncode == 1
  assert last_line(result) == (
      f'error: gcloud compute tpus tpu-vm create my-tpu failed: {error}')
  assert cloud.kinds() == ['describe', 'create'] and not cloud.sleeps()


# --- Training's outcomes -----------------------------------------------------------


def test_preempted_during_training_recreates_and_resumes(cloud):
  world = {'train': [{'rc': 255, 'node_state': 'PREEMPTED'}]}
  result = launch(cloud, world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'create', *SETUP_AND_TRAIN,
      'describe',                                   # Why did training fail?
      'describe', 'delete', 'describe', 'create', *SETUP_AND_TRAIN]
  first, second = cloud.of('start')
  assert first == second  # The same command: it resumes from the workdir.
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
  # The whole log of the run it started; after a reconnect, its last lines.
  assert [option(f, '--command').split()[-1] for f in cloud.of('follow')] == [
      '--lines=100000', '--lines=20', '--lines=20']
  assert 'lost the connection to worker 0 of TPU VM my-tpu (ssh exit status ' \
      '255); training goes on there: trying again in 60s' in result.stderr


@pytest.mark.parametrize('rc, why', [
    (75, 'lost a process (exit status 75)'),
    (143, 'got SIGTERM from elsewhere (exit status 143)'),
])
def test_a_lost_process_or_a_stray_sigterm_restarts_in_place(cloud, rc, why):
  result = launch(cloud, world=dict(node('READY'), train=[rc]))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN,
                           'describe', 'describe', *SETUP_AND_TRAIN]
  [line] = restart_lines(result.stderr)
  assert line == (f'tpu_vm.py: restart 1/3 (in the last 24h): training on TPU '
                  f'VM my-tpu (READY) {why}; training resumes from '
                  'gs://bucket/runs/a1')


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
  assert last_line(result) == ('tpu_vm.py: training exited with status 2 (a '
                               'usage error in its arguments); not restarting')


def test_training_failure_on_ready_node_is_not_restarted(cloud):
  result = launch(cloud, world=dict(node('READY'), train=[1]))
  assert result.returncode == 1
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN, 'describe']
  assert not restart_lines(result.stderr)
  assert 'failed with exit status 1; not restarting' in last_line(result)


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
  assert last_line(result) == (
      'tpu_vm.py: TPU VM my-tpu is PREEMPTED (training exit status 255); no '
      'restarts left (1 in the last 1d: --max-restarts=1)')


@pytest.mark.parametrize('signal, status, said', [
    (KeyboardInterrupt, 130, 'Ctrl-C'), (tpu_vm.Terminated, 143, 'SIGTERM')])
def test_ctrl_c_or_sigterm_detaches_and_says_so(cloud, monkeypatch, signal,
                                                status, said):
  """Ctrl-C, or SIGTERM to the launcher, while it follows: the launcher goes,
  training does not."""
  run = cloud.run
  def interrupted_at_follow(argv, **kwargs):
    if 'tpu_worker.sh follow' in ' '.join(argv):
      raise signal()
    return run(argv, **kwargs)
  monkeypatch.setattr(cloud, 'run', interrupted_at_follow)
  result = launch(cloud, world=node('READY'))
  assert result.returncode == status
  assert cloud.decisions()[-1] == (
      f'detached ({said}): training, if it runs, goes on on TPU VM my-tpu; '
      '--attach follows it, --stop stops it')


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
      'error: TPU VM my-tpu is gone; nothing to attach to')


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


def test_logs_of_a_ready_vm_come_from_worker_0(cloud):
  result = cloud.launch('--logs', main_args=(),
                        world=dict(node('READY'), log='step 1/20\n'))
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'step 1/20\n'
  [logs] = cloud.of('logs')
  assert '--worker=0' in logs


def test_stop_marks_and_stops_every_worker(cloud):
  result = cloud.launch('--stop', '--workdir=gs://bucket/runs/a1',
                        main_args=(), world=node('READY'))
  assert result.returncode == 0, result.stderr
  [stop] = cloud.of('stopped')
  assert '--worker=all' in stop
  assert cloud.decisions()[-1].startswith('training on TPU VM my-tpu stopped')


def test_stop_of_a_vm_that_is_not_there_is_one_error(cloud):
  result = cloud.launch('--stop', main_args=(), world=node('PREEMPTED'))
  assert result.returncode == 1
  assert last_line(result) == ('error: TPU VM my-tpu is PREEMPTED; there is '
                               'no training to stop')
