"""launch/tpu_vm.sh against a fake gcloud on PATH (tests/fake_gcloud) that
records every call and plays the TPU VM, queued resource and training
outcomes a test sets up, with a fake clock (its sleeps are recorded, not
slept): what the launcher does for each VM state and stockout, and the
decision log it keeps in the workdir; when training ends:
test_launch_tpu_outcomes.py. The remote commands are recorded, not run
(test_launch_tpu_runs.py runs them on fake workers)."""

import pytest

from tests.tpu_fakes import SETUP_AND_TRAIN, STOCKOUT, FakeCloud, last_line
from tests.tpu_fakes import launch, node


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


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
  here = [l[len('tpu_vm.sh: '):] for l in result.stderr.splitlines()
          if l.startswith('tpu_vm.sh: ')]
  assert here == cloud.decisions() == [
      'TPU VM my-tpu does not exist: creating it (v4-32, tpu-ubuntu2204-base)',
      'starting training on every worker of TPU VM my-tpu; it resumes from '
      'the checkpoints in gs://bucket/runs/a1, if any',
      'training on TPU VM my-tpu finished (exit status 0)']
  log = cloud.gcs / 'bucket' / 'runs' / 'a1' / 'logs' / 'launcher.log'
  assert log.read_text().startswith('2027-01-15T08:00:00Z TPU VM my-tpu')
  result = launch(cloud, world=node('READY'), keep=False)
  assert cloud.decisions()[:3] == here
  assert cloud.decisions()[3] == 'using TPU VM my-tpu (READY, v4-32)'


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
  assert cloud.kinds() == ['describe']  # nothing deleted, created or run
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
  world = node('PREEMPTED', qr='projects/p/locations/z/queuedResources/my-tpu')
  world['qr'] = {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                 'states': ['SUSPENDED']}
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
  assert 'CREATING' in result.stderr and 'STARTING' in result.stderr


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
              if 'WAITING_FOR_RESOURCES' in l]
  assert len(progress) == 2 and cloud.sleeps() == [30, 30]
  assert cloud.world()['node']['qr'].endswith('/my-tpu')


def test_a_queued_request_not_filled_by_the_deadline_gives_up(cloud):
  world = {'qr_states': ['WAITING_FOR_RESOURCES']}
  result = launch(cloud, '--queued', '--retry-for=2h', world=world,
                  TPU_POLL_SECONDS='1800')
  assert result.returncode == 1
  assert cloud.sleeps() == [1800] * 4
  assert last_line(result).startswith(
      'error: queued resource my-tpu is WAITING_FOR_RESOURCES; giving up at')
  assert '(--retry-for=2h)' in last_line(result)
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


# --- Stockouts -------------------------------------------------------------------


def test_a_stockout_is_tried_again_with_back_off(cloud):
  result = launch(cloud, world={'create_errors': [STOCKOUT] * 3})
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'create'] * 4 + SETUP_AND_TRAIN
  assert cloud.sleeps() == [60, 120, 240]
  retries = [d for d in cloud.decisions() if 'trying again' in d]
  assert len(retries) == 3
  assert retries[0].startswith('TPU VM my-tpu could not be created, for lack '
                               'of capacity or availability')
  assert 'There is no more capacity in the zone' in retries[0]
  assert 'trying again in 60s (attempt 1; giving up at 2027-01-16T08:00:00Z)' \
      in retries[0]


def test_stockouts_until_the_deadline_give_up(cloud):
  result = launch(cloud, '--retry-for=10m',
                  world={'create_errors': [STOCKOUT] * 20})
  assert result.returncode == 1
  assert cloud.sleeps() == [60, 120, 240, 180]  # The last one ends at 600 s.
  assert len(cloud.of('create')) == 5
  assert last_line(result).startswith('error: TPU VM my-tpu could not be '
                                      'created, for lack of capacity')
  assert 'giving up: still failing 600 s after it began' in last_line(result)
  assert cloud.decisions()[-1] == last_line(result)


def test_a_create_error_that_is_not_capacity_stops_at_once(cloud):
  error = ('ERROR: (gcloud.compute.tpus.tpu-vm.create) INVALID_ARGUMENT: '
           'Runtime version "nope" is not supported')
  result = launch(cloud, world={'create_errors': [error]})
  assert result.returncode == 1
  assert last_line(result) == (
      'error: could not create TPU VM my-tpu: ' + error)
  assert cloud.kinds() == ['describe', 'create'] and not cloud.sleeps()
