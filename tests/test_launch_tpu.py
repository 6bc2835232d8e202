"""launch/tpu_vm.sh: the exact gcloud commands its dry run prints, one-line
errors on bad input, what it does against each TPU VM / queued resource state
and training outcome (a fake gcloud on PATH, tests/fake_gcloud/gcloud.py), and
the remote command that stops leftover training processes (run here, against
a real process)."""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.test_launch import BASH, REPO, TPU, assert_one_error_line
from tests.test_launch import commands, option, run

FAKE_GCLOUD = pathlib.Path(__file__).resolve().parent / 'fake_gcloud' / 'gcloud.py'


# --- dry runs ----------------------------------------------------------------

TPU_ARGS = ('--workdir=gs://bucket/runs/a1', '--tfds-data-dir', 'gs://bucket/tfds')


def kind(argv):
  """What a gcloud call (argv after `gcloud`) is, in this launcher's terms."""
  group, verb = argv[2], argv[3]
  if group == 'queued-resources':
    return 'qr-' + verb
  if verb == 'ssh':
    command = option(argv, '--command')
    if ' -m alexnet_jax.main ' in command:
      return 'train'
    if 'pgrep' in command:
      return 'stop'
    assert 'pip install' in command, command
    return 'install'
  return verb


def dry_gcloud(*args, bare_path):
  result = run(TPU, '--dry-run', *args, env={'PATH': bare_path})
  assert result.returncode == 0, result.stderr
  return [a[1:] for a in commands(result.stdout) if a[0] == 'gcloud']


def test_tpu_dry_run_commands(bare_path):
  result = run(TPU, '--dry-run', '--name=my-tpu', '--project', 'proj-1',
               *TPU_ARGS, '--', '--config.num_epochs=90', 'two words',
               env={'PATH': bare_path})
  assert result.returncode == 0, result.stderr
  argvs = commands(result.stdout)
  gcloud = [a for a in argvs if a[0] == 'gcloud']
  assert [a[1:5] for a in gcloud] == [
      ['compute', 'tpus', 'tpu-vm', verb]
      for verb in ('describe', 'create', 'scp', 'ssh', 'ssh', 'ssh')]
  assert [kind(a[1:]) for a in gcloud] == [
      'describe', 'create', 'scp', 'stop', 'install', 'train']
  for argv in gcloud:
    assert '--zone=us-central2-b' in argv and '--project=proj-1' in argv
  describe, create, scp, stop, install, train = gcloud
  for argv in (describe, create, stop, install, train):
    assert argv[5] == 'my-tpu'
  assert option(describe, '--format') == \
      'value(state,acceleratorType,queuedResource)'
  assert scp[6] == 'my-tpu:alexnet_jax.tar.gz'
  assert '--accelerator-type=v4-32' in create
  assert '--version=tpu-ubuntu2204-base' in create
  assert not {'--spot', '--reserved'} & set(create)
  for argv in (scp, stop, install, train):
    assert '--worker=all' in argv

  # The tarball made first is the one copied to the workers.
  tar = argvs[0]
  assert tar[0] == 'tar' and str(REPO) in tar
  assert tar[tar.index('-czf') + 1] == scp[5]
  assert '--exclude=.git' in tar

  # Workers get the training requirements only, not the test tools.
  setup = option(install, '--command')
  assert "-r ~/alexnet_jax/requirements-train.txt 'jax[tpu]==0.10.2'" in setup
  assert 'requirements.txt' not in setup and 'pytest' not in setup
  assert '-m venv' in setup

  remote = shlex.split(option(train, '--command'))
  main = remote.index('alexnet_jax.main')
  assert remote[main - 2].endswith('/bin/python') and remote[main - 1] == '-m'
  assert remote[main + 1:] == [
      '--config=configs/cifar10.py', '--workdir=gs://bucket/runs/a1',
      '--config.tfds_data_dir=gs://bucket/tfds', '--config.num_epochs=90',
      'two words']


def test_tpu_options_override_defaults(bare_path):
  result = run(TPU, '--dry-run', '--zone=europe-west4-a',
               '--accelerator-type', 'v5litepod-16', '--version=v2-alpha-tpuv5-lite',
               '--config=configs/cifar10_227.py', *TPU_ARGS,
               env={'PATH': bare_path})
  assert result.returncode == 0, result.stderr
  gcloud = [a for a in commands(result.stdout) if a[0] == 'gcloud']
  create = gcloud[1]
  assert create[5] == 'alexnet-jax'
  assert '--accelerator-type=v5litepod-16' in create
  assert '--version=v2-alpha-tpuv5-lite' in create
  assert all('--zone=europe-west4-a' in a for a in gcloud)
  assert not any(x.startswith('--project') for a in gcloud for x in a)
  assert '--config=configs/cifar10_227.py' in shlex.split(
      option(gcloud[-1], '--command'))


# Google's "TPU software versions" table (cloud.google.com/tpu/docs/runtimes).
FAMILY_VERSIONS = [
    ('v2-8', 'tpu-ubuntu2204-base'), ('v3-32', 'tpu-ubuntu2204-base'),
    ('v4-32', 'tpu-ubuntu2204-base'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-8', 'v2-alpha-tpuv5'), ('v6e-8', 'v2-alpha-tpuv6e')]


@pytest.mark.parametrize('accelerator,version', FAMILY_VERSIONS)
def test_tpu_version_follows_accelerator_family(accelerator, version, bare_path):
  gcloud = dry_gcloud(f'--accelerator-type={accelerator}', *TPU_ARGS,
                      bare_path=bare_path)
  [create] = [a for a in gcloud if kind(a) == 'create']
  assert f'--accelerator-type={accelerator}' in create
  assert option(create, '--version') == version

  gcloud = dry_gcloud('--queued', f'--accelerator-type={accelerator}',
                      *TPU_ARGS, bare_path=bare_path)
  [create] = [a for a in gcloud if kind(a) == 'qr-create']
  assert option(create, '--runtime-version') == version


@pytest.mark.parametrize('accelerator', ['v6e-8', 'v7x-8'])
def test_tpu_explicit_version_wins(accelerator, bare_path):
  # Also for a family the table does not know.
  gcloud = dry_gcloud(f'--accelerator-type={accelerator}', '--version=my-image',
                      *TPU_ARGS, bare_path=bare_path)
  [create] = [a for a in gcloud if kind(a) == 'create']
  assert option(create, '--version') == 'my-image'


def test_tpu_dry_run_queued(bare_path):
  gcloud = dry_gcloud('--queued', '--spot', '--valid-until-duration=6h',
                      '--name=q-tpu', '--accelerator-type=v5p-8',
                      '--project=proj-1', *TPU_ARGS, bare_path=bare_path)
  assert [kind(a) for a in gcloud] == [
      'describe', 'qr-describe', 'qr-create', 'qr-describe', 'scp', 'stop',
      'install', 'train']
  create = gcloud[2]
  assert create[:5] == ['compute', 'tpus', 'queued-resources', 'create', 'q-tpu']
  for flag in ('--node-id=q-tpu', '--accelerator-type=v5p-8',
               '--runtime-version=v2-alpha-tpuv5', '--spot',
               '--valid-until-duration=6h', '--zone=us-central2-b',
               '--project=proj-1'):
    assert flag in create
  for describe in (gcloud[1], gcloud[3]):
    assert describe[4] == 'q-tpu'
    assert option(describe, '--format') == 'value(state.state)'


def test_tpu_dry_run_spot_and_reserved(bare_path):
  [create] = [a for a in dry_gcloud('--spot', *TPU_ARGS, bare_path=bare_path)
              if kind(a) == 'create']
  assert '--spot' in create
  [create] = [a for a in dry_gcloud('--queued', '--reserved', *TPU_ARGS,
                                    bare_path=bare_path)
              if kind(a) == 'qr-create']
  assert '--reserved' in create and '--spot' not in create


def test_tpu_help_shows_defaults():
  result = run(TPU, '--help')
  assert result.returncode == 0
  for default in ('us-central2-b', 'v4-32', 'tpu-ubuntu2204-base',
                  'v2-alpha-tpuv5-lite', 'v2-alpha-tpuv5\n', 'v2-alpha-tpuv6e',
                  'configs/cifar10.py', '--dry-run', '--tfds-data-dir',
                  '--queued', '--spot', '--max-restarts', 'PREEMPTED',
                  'TPU_POLL_SECONDS', '--stop-grace'):
    assert default in result.stdout


# (arguments, what the one error line says): each bad input its own message.
TPU_BAD_INPUT = {
    'no-workdir': (('--tfds-data-dir=gs://bucket/tfds',),
                   '--workdir is required'),
    'local-workdir': (('--workdir=/tmp/run', '--tfds-data-dir=gs://bucket/tfds'),
                      '--workdir must be a gs:// path'),
    'no-tfds': (('--workdir=gs://bucket/run',), '--tfds-data-dir is required'),
    'local-tfds': (('--workdir=gs://bucket/run', '--tfds-data-dir=/data/tfds'),
                   '--tfds-data-dir must be a gs:// path'),
    'no-value': ((*TPU_ARGS, '--zone'), '--zone needs a value'),
    'empty-value': ((*TPU_ARGS, '--zone='), '--zone needs a non-empty value'),
    'unknown': ((*TPU_ARGS, '--bogus=1'), 'unknown option: --bogus'),
    'positional': ((*TPU_ARGS, 'stray'), 'unexpected argument: stray'),
    'bad-name': ((*TPU_ARGS, '--name=Bad_Name'),
                 '--name must be lowercase letters'),
    'missing-config': ((*TPU_ARGS, '--config=configs/missing.py'),
                       '--config configs/missing.py not found'),
    'type-no-size': ((*TPU_ARGS, '--accelerator-type=v4'),
                     '--accelerator-type must be FAMILY-SIZE'),
    'type-upper': ((*TPU_ARGS, '--accelerator-type=V4-32'),
                   '--accelerator-type must be FAMILY-SIZE'),
    'unknown-family': ((*TPU_ARGS, '--accelerator-type=v7x-8'),
                       'no default --version for accelerator family v7x'),
    'v5e-name': ((*TPU_ARGS, '--accelerator-type=v5e-8'),
                 'no default --version for accelerator family v5e'),
    'multislice': ((*TPU_ARGS, '--node-count=2'),
                   'Multislice (more than one slice) is not supported'),
    'zero-nodes': ((*TPU_ARGS, '--node-count=0'),
                   '--node-count must be a positive integer, got: 0'),
    'negative-restarts': ((*TPU_ARGS, '--max-restarts=-1'),
                          '--max-restarts must be a non-negative integer'),
    'text-restarts': ((*TPU_ARGS, '--max-restarts=x'),
                      '--max-restarts must be a non-negative integer, got: x'),
    'fractional-grace': ((*TPU_ARGS, '--stop-grace=1.5'),
                         '--stop-grace must be a non-negative integer'),
    'spot-and-reserved': ((*TPU_ARGS, '--spot', '--reserved'),
                          '--spot and --reserved exclude each other'),
    'valid-until-unqueued': ((*TPU_ARGS, '--valid-until-duration=6h'),
                             '--valid-until-duration needs --queued'),
    'bad-duration': ((*TPU_ARGS, '--queued', '--valid-until-duration=six'),
                     '--valid-until-duration must be a gcloud duration'),
    'switch-with-value': ((*TPU_ARGS, '--queued=yes'),
                          '--queued takes no value'),
}


@pytest.mark.parametrize('args, expected', list(TPU_BAD_INPUT.values()),
                         ids=list(TPU_BAD_INPUT))
def test_tpu_bad_input(args, expected, bare_path):
  # --dry-run too: validation must not depend on gcloud being there.
  assert_one_error_line(run(TPU, '--dry-run', *args, env={'PATH': bare_path}),
                        expected)


def test_tpu_unknown_family_error_lists_known_ones(bare_path):
  result = run(TPU, '--dry-run', *TPU_ARGS, '--accelerator-type=v7x-8',
               env={'PATH': bare_path})
  assert_one_error_line(result, 'no default --version')
  for family in ('v2', 'v3', 'v4', 'v5litepod', 'v5p', 'v6e', '--version'):
    assert family in result.stderr


def test_tpu_bad_poll_seconds(bare_path):
  assert_one_error_line(run(TPU, '--dry-run', *TPU_ARGS,
                            env={'PATH': bare_path, 'TPU_POLL_SECONDS': 'soon'}),
                        'TPU_POLL_SECONDS must be a non-negative integer')


# --- real runs against a fake gcloud -----------------------------------------


class FakeCloud:
  """A fake `gcloud` on PATH, its simulated world and its call log."""

  def __init__(self, tmp_path):
    self.bin = tmp_path / 'fakebin'
    self.bin.mkdir()
    gcloud = self.bin / 'gcloud'
    gcloud.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} '
        f'{shlex.quote(str(FAKE_GCLOUD))} "$@"\n')
    gcloud.chmod(0o755)
    self.state = tmp_path / 'world.json'
    self.log = tmp_path / 'calls.jsonl'

  def launch(self, *args, world=None, max_restarts=None):
    self.state.write_text(json.dumps(world or {}))
    self.log.write_text('')
    env = dict(os.environ, PATH=f'{self.bin}{os.pathsep}{os.environ["PATH"]}',
               TPU_POLL_SECONDS='0', FAKE_GCLOUD_LOG=str(self.log),
               FAKE_GCLOUD_STATE=str(self.state))
    extra = () if max_restarts is None else (f'--max-restarts={max_restarts}',)
    result = subprocess.run(
        [BASH, str(TPU), '--name=my-tpu', *extra, *args, *TPU_ARGS, '--',
         '--config.num_epochs=2'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    self.calls = [json.loads(line) for line in
                  self.log.read_text().splitlines()]
    return result

  def kinds(self):
    return [kind(c) for c in self.calls]

  def world(self):
    return json.loads(self.state.read_text())

  def of(self, what):
    return [c for c in self.calls if kind(c) == what]


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


SETUP_AND_TRAIN = ['scp', 'stop', 'install', 'train']


def node(state, accelerator='v4-32', qr=''):
  return {'node': {'state': state, 'type': accelerator, 'qr': qr}}


def restart_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith('tpu_vm.sh: restart ')]


def test_fresh_create(cloud):
  result = cloud.launch('--accelerator-type=v6e-8')
  assert result.returncode == 0, result.stderr
  assert result.stdout == ''
  assert cloud.kinds() == ['describe', 'create', *SETUP_AND_TRAIN]
  [create] = cloud.of('create')
  assert create[4] == 'my-tpu'
  assert '--accelerator-type=v6e-8' in create
  assert '--version=v2-alpha-tpuv6e' in create
  for call in cloud.calls[2:]:
    assert '--worker=all' in call
  [install] = cloud.of('install')
  setup = option(install, '--command')
  assert 'requirements-train.txt' in setup and 'pytest' not in setup
  assert 'requirements.txt' not in setup
  assert cloud.world()['node']['state'] == 'READY'


def test_ready_node_of_same_type_is_reused(cloud):
  result = cloud.launch(world=node('READY'))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN]


@pytest.mark.parametrize('state', ['READY', 'PREEMPTED'])
def test_node_of_another_type_is_an_error(cloud, state):
  result = cloud.launch('--accelerator-type=v4-32',
                        world=node(state, accelerator='v5p-8'))
  assert result.returncode == 2
  assert result.stdout == ''
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0]
  assert 'v5p-8' in errors[0] and 'v4-32' in errors[0]
  assert 'delete' in errors[0] and '--name' in errors[0]
  assert cloud.kinds() == ['describe']  # nothing deleted, created or run
  assert cloud.world()['node']['type'] == 'v5p-8'


def test_queued_node_of_another_type_names_its_queued_resource(cloud):
  world = node('READY', accelerator='v6e-8',
               qr='projects/p/locations/z/queuedResources/their-qr')
  result = cloud.launch('--queued', world=world)
  assert result.returncode == 2
  assert 'queued-resources delete their-qr' in result.stderr.splitlines()[-1]
  assert cloud.kinds() == ['describe']


@pytest.mark.parametrize('state', ['PREEMPTED', 'TERMINATED'])
def test_preempted_node_is_deleted_and_created_again(cloud, state):
  result = cloud.launch(world=node(state))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'delete', 'describe', 'create',
                           *SETUP_AND_TRAIN]
  [delete] = cloud.of('delete')
  assert delete[4] == 'my-tpu' and '--quiet' in delete


def test_preempted_node_from_queued_resource_goes_with_it(cloud):
  world = node('PREEMPTED', qr='projects/p/locations/z/queuedResources/my-tpu')
  world['qr'] = {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                 'states': ['SUSPENDED']}
  result = cloud.launch('--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'qr-delete', 'describe', 'qr-describe', 'qr-create',
      'qr-describe', 'describe', *SETUP_AND_TRAIN]
  [delete] = cloud.of('qr-delete')
  assert delete[4] == 'my-tpu' and '--force' in delete and '--quiet' in delete


def test_stopped_node_is_started(cloud):
  result = cloud.launch(world=node('STOPPED'))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'start', 'describe', *SETUP_AND_TRAIN]
  assert cloud.of('start')[0][4] == 'my-tpu'


def test_node_in_transition_is_waited_for(cloud):
  world = dict(node('READY'), node_states=['CREATING', 'STARTING'])
  result = cloud.launch(world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe'] * 3 + SETUP_AND_TRAIN
  assert 'CREATING' in result.stderr and 'STARTING' in result.stderr


def test_queued_resource_is_polled_until_active(cloud):
  world = {'qr_states': ['WAITING_FOR_RESOURCES', 'WAITING_FOR_RESOURCES',
                         'ACTIVE']}
  result = cloud.launch('--queued', '--spot', '--accelerator-type=v5litepod-16',
                        world=world)
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
  assert len(progress) == 2
  assert cloud.world()['node']['qr'].endswith('/my-tpu')


@pytest.mark.parametrize('state', ['FAILED', 'SUSPENDED'])
def test_queued_resource_that_fails_stops_the_launch(cloud, state):
  result = cloud.launch('--queued', world={
      'qr_states': ['WAITING_FOR_RESOURCES', state]})
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith('error: ')
  assert state in result.stderr.splitlines()[-1]
  assert cloud.kinds() == ['describe', 'qr-describe', 'qr-create',
                           'qr-describe', 'qr-describe']


def test_existing_queued_resource_is_waited_for_not_requested_again(cloud):
  # A previous launch was interrupted while its request waited in the queue.
  world = {'qr': {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                  'states': ['PROVISIONING', 'ACTIVE']}}
  result = cloud.launch('--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'qr-describe', 'qr-describe',
                           'describe', *SETUP_AND_TRAIN]
  assert not cloud.of('qr-create')


def test_failed_queued_resource_is_requested_again(cloud):
  world = {'qr': {'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                  'states': ['FAILED']}}
  result = cloud.launch('--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'qr-describe', 'qr-delete', 'qr-create',
                           'qr-describe', 'describe', *SETUP_AND_TRAIN]
  assert '--force' not in cloud.of('qr-delete')[0]


def test_preempted_during_training_recreates_and_resumes(cloud):
  world = {'train': [{'rc': 255, 'node_state': 'PREEMPTED'}]}
  result = cloud.launch(world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'create', *SETUP_AND_TRAIN,
      'describe',                                   # why did training fail?
      'describe', 'delete', 'describe', 'create', *SETUP_AND_TRAIN]
  first, second = cloud.of('train')
  assert first == second  # same command: it resumes from the workdir
  [line] = restart_lines(result.stderr)
  assert 'restart 1/3' in line and 'PREEMPTED' in line


def test_preempted_queued_node_is_requested_again(cloud):
  world = {'train': [{'rc': 255, 'node_state': 'PREEMPTED'}]}
  result = cloud.launch('--queued', world=world)
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == [
      'describe', 'qr-describe', 'qr-create', 'qr-describe', 'describe',
      *SETUP_AND_TRAIN,
      'describe', 'describe', 'qr-delete', 'describe', 'qr-describe',
      'qr-create', 'qr-describe', 'describe', *SETUP_AND_TRAIN]
  assert '--force' in cloud.of('qr-delete')[0]
  assert len(restart_lines(result.stderr)) == 1


def test_vanished_node_is_created_again(cloud):
  result = cloud.launch(world={'train': [{'rc': 255, 'node_state': None}]})
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', 'create', *SETUP_AND_TRAIN,
                           'describe', 'describe', 'create', *SETUP_AND_TRAIN]
  [line] = restart_lines(result.stderr)
  assert 'gone' in line


def test_lost_ssh_on_ready_node_reruns_training(cloud):
  result = cloud.launch(world=dict(node('READY'), train=[255]))
  assert result.returncode == 0, result.stderr
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN,
                           'describe', 'stop', 'train']
  first, second = cloud.of('train')
  assert first == second
  [line] = restart_lines(result.stderr)
  assert '255' in line


def test_usage_error_in_training_is_not_restarted(cloud):
  result = cloud.launch(world=dict(node('READY'), train=[2]))
  assert result.returncode == 2
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN]
  assert not restart_lines(result.stderr)


def test_training_failure_on_ready_node_is_not_restarted(cloud):
  result = cloud.launch(world=dict(node('READY'), train=[1]))
  assert result.returncode == 1
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN, 'describe']
  assert not restart_lines(result.stderr)


def test_max_restarts_zero_disables_restarts(cloud):
  world = dict(node('READY'), train=[{'rc': 255, 'node_state': 'PREEMPTED'}])
  result = cloud.launch(world=world, max_restarts=0)
  assert result.returncode == 255
  assert cloud.kinds() == ['describe', *SETUP_AND_TRAIN]
  assert not restart_lines(result.stderr)


def test_restarts_run_out(cloud):
  preempted = {'rc': 255, 'node_state': 'PREEMPTED'}
  world = dict(node('READY'), train=[preempted] * 3)
  result = cloud.launch(world=world, max_restarts=2)
  assert result.returncode == 255
  assert len(cloud.of('train')) == 3
  lines = restart_lines(result.stderr)
  assert [l.split(':')[1].strip() for l in lines] == [
      'restart 1/2', 'restart 2/2']
  assert 'no restarts left' in result.stderr.splitlines()[-1]


# --- the remote command that stops leftover training processes ---------------

DUMMY_MAIN = '''
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ['DUMMY_OUT'])
def on_term(*_):
  (out / 'sigterm').write_text('1')
  if not os.environ.get('DUMMY_IGNORE_TERM'):
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
(out / 'ready').write_text(str(os.getpid()))
while True:
  time.sleep(0.05)
'''


@pytest.fixture
def worker_home(tmp_path):
  """A fake worker: HOME with the launcher's venv path and a dummy
  alexnet_jax.main that records SIGTERM."""
  home = tmp_path / 'home'
  venv_bin = home / 'alexnet_jax_venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'python').symlink_to(os.path.realpath(sys.executable))
  package = home / 'alexnet_jax' / 'alexnet_jax'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'main.py').write_text(DUMMY_MAIN)
  return home


def stop_command(grace, bare_path):
  gcloud = dry_gcloud(f'--stop-grace={grace}', *TPU_ARGS, bare_path=bare_path)
  [stop] = [a for a in gcloud if kind(a) == 'stop']
  return option(stop, '--command')


def start_dummy(home, out, ignore_term=False):
  out.mkdir()
  env = dict(os.environ, HOME=str(home), DUMMY_OUT=str(out))
  env.pop('PYTHONPATH', None)
  if ignore_term:
    env['DUMMY_IGNORE_TERM'] = '1'
  # The command line the launcher's training ssh runs, ~ expanded.
  proc = subprocess.Popen(
      [str(home / 'alexnet_jax_venv' / 'bin' / 'python'), '-m',
       'alexnet_jax.main', '--config=configs/cifar10.py'],
      cwd=home / 'alexnet_jax', env=env)
  deadline = time.monotonic() + 20
  while not (out / 'ready').exists():
    assert proc.poll() is None, 'dummy trainer died'
    assert time.monotonic() < deadline, 'dummy trainer did not start'
    time.sleep(0.05)
  return proc


def run_stop(command, home):
  env = dict(os.environ, HOME=str(home))
  return subprocess.run([BASH, '-c', command], env=env, capture_output=True,
                        text=True, timeout=30)


@pytest.mark.parametrize('ignore_term', [False, True],
                         ids=['exits-on-sigterm', 'ignores-sigterm'])
def test_stop_leftovers_sigterm_then_sigkill(worker_home, tmp_path, bare_path,
                                             ignore_term):
  out = tmp_path / 'out'
  proc = start_dummy(worker_home, out, ignore_term=ignore_term)
  try:
    result = run_stop(stop_command(1, bare_path), worker_home)
    assert result.returncode == 0, result.stderr
    assert 'stopping leftover training processes' in result.stderr
    assert (out / 'sigterm').exists()  # SIGTERM first: a checkpoint is saved
    # Gone when the command returns (reaping the zombie is our job here).
    status = proc.wait(timeout=5)
    assert status == (-signal.SIGKILL if ignore_term else 143)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def test_stop_leftovers_without_leftovers(worker_home, bare_path):
  start = time.monotonic()
  result = run_stop(stop_command(120, bare_path), worker_home)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert time.monotonic() - start < 10
