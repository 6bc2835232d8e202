"""The fake gcloud is as strict as gcloud: a flag, value or argument the real
tool refuses is refused with its words and exit status, in-process and as
the binary; and it does what the real commands do with what the launcher
relies on (exit statuses of ssh, NOT_FOUND, a VM that is not READY). Where
a real gcloud is installed, the refusals are compared with its own, word
for word (its parsing needs no network or account)."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.tpu_fakes import FAKES, FakeCloud, launch, node
from world import FolderStorage, RecordedWorkers, World

UNKNOWN = ("ERROR: (gcloud.compute.tpus.tpu-vm.create) unrecognized arguments:"
           " --bogus (did you mean '--tags'?) \n\nTo search the help text of "
           "gcloud commands, run:\n  gcloud help -- SEARCH_TERMS\n")
CREATE = ['compute', 'tpus', 'tpu-vm', 'create', 'my-tpu',
          '--zone=us-central2-b']
# Command lines the real gcloud 528.0.0 refuses while parsing, offline.
REFUSED = [
    CREATE + ['--version=v', '--bogus'],
    CREATE + ['--version=v', '--bogus', '--other=1'],
    CREATE + ['--version=v', '--accelerator_type=v4-8'],
    CREATE,
    ['compute', 'tpus', 'tpu-vm', 'create', '--zone=us-central2-b',
     '--version=v'],
    ['compute', 'tpus', 'tpu-vm', 'create'],
    CREATE + ['--version=v', '--spot=yes'],
    ['compute', 'tpus', 'tpu-vm', 'describe', 'my-tpu', '--zone'],
    ['compute', 'tpus', 'tpu-vm', 'describe', 'my-tpu', '--zone=z',
     '--format=value(state)', '--verbosity=loud'],
    ['compute', 'tpus', 'tpu-vm', 'delete', 'my-tpu', '--zone=z', 'extra'],
    ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu', '--zone=z', '--workers=all',
     '--command=x'],
    ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu', '--zone=z', '--command'],
    ['compute', 'tpus', 'tpu-vm', 'ssh', '--zone=z'],
    ['compute', 'tpus', 'tpu-vm', 'scp', 'a', '--zone=z'],
    ['compute', 'tpus', 'tpu-vm', 'start', 'my-tpu', '--zone=z', '--quite'],
    ['compute', 'tpus', 'queued-resources', 'create', 'q', '--zone=z',
     '--node-id=q', '--runtime-version=v'],
    ['compute', 'tpus', 'queued-resources', 'create', 'q', '--zone=z',
     '--accelerator-type=v4-8', '--runtime-version=v'],
    ['compute', 'tpus', 'queued-resources', 'create', 'q', '--zone=z',
     '--node-id=q', '--accelerator-type=v4-8'],
    ['compute', 'tpus', 'queued-resources', 'delete', 'q', '--zone=z',
     '--forced'],
    ['compute', 'tpus', 'queued-resources', 'describe', '--zone=z'],
    ['storage', 'cp', '--quite', 'a', 'gs://b/c'],
    ['storage', 'cp', 'a', '--storage-class'],
    ['storage', 'cat'],
    ['storage', 'ls', '--recursive=yes'],
]


def fake(argv, tmp_path, state=None):
  (tmp_path / 'gcs').mkdir(exist_ok=True)
  return World(state or {}, FolderStorage(str(tmp_path / 'gcs')),
               RecordedWorkers()).call(argv)


@pytest.mark.parametrize('argv', REFUSED, ids=lambda a: ' '.join(a[2:4]))
def test_refused_with_gclouds_words_and_status_2(argv, tmp_path):
  status, out, err = fake(argv, tmp_path)
  assert status == 2 and out == ''
  assert err.startswith('ERROR: (gcloud.') and err.endswith('\n')


def test_an_unknown_flag_in_process_and_as_the_binary(tmp_path):
  assert fake(CREATE + ['--version=v', '--bogus'], tmp_path) == (2, '', UNKNOWN)
  (tmp_path / 'state').write_text('{}')
  binary = subprocess.run(
      [sys.executable, '-S', str(FAKES / 'gcloud.py'), *CREATE,
       '--version=v', '--bogus'], capture_output=True, text=True, timeout=60,
      env=dict(os.environ, FAKE_GCLOUD_LOG=str(tmp_path / 'log'),
               FAKE_GCLOUD_STATE=str(tmp_path / 'state')))
  assert (binary.returncode, binary.stdout, binary.stderr) == (2, '', UNKNOWN)


def test_a_missing_required_flag_and_its_usage(tmp_path):
  status, _, err = fake(CREATE, tmp_path)
  assert status == 2
  assert err.splitlines()[:3] == [
      'ERROR: (gcloud.compute.tpus.tpu-vm.create) argument --version: Must '
      'be specified.',
      'Usage: gcloud compute tpus tpu-vm create (TPU : --zone=ZONE) '
      '--version=VERSION [optional flags]',
      '  optional flags may be  --accelerator-type | --async | --data-disk |']
  assert err.endswith('For detailed information on this command and its '
                      'flags, run:\n  gcloud compute tpus tpu-vm create '
                      '--help\n')


def test_a_missing_positional(tmp_path):
  status, _, err = fake(['compute', 'tpus', 'tpu-vm', 'ssh', '--zone=z'],
                        tmp_path)
  assert status == 2
  assert err.startswith('ERROR: (gcloud.compute.tpus.tpu-vm.ssh) argument '
                        '[USER@]TPU: Must be specified.\nUsage: ')


def ssh(*flags):
  return ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu', '--zone=us-central2-b',
          *flags]


def test_ssh_returns_the_remote_status_or_255(tmp_path):
  world = dict(node('READY'), train=[7, 255], running=3)
  assert fake(ssh('--command=tpu_worker.sh status'), tmp_path, world)[0] == 3
  follow = ssh('--command=bash tpu_worker.sh follow')
  assert fake(follow, tmp_path, world)[0] == 7
  status, _, err = fake(follow, tmp_path, world)
  assert status == 255
  assert err.endswith('ERROR: (gcloud.compute.tpus.tpu-vm.ssh) '
                      '[/usr/bin/ssh] exited with return code [255].\n')


@pytest.mark.parametrize('state, status, says', [
    ('PREEMPTED', 1, 'This TPU has terminal state "PREEMPTED", so it cannot '
                     'be used anymore.'),
    ('STOPPED', 1, 'This TPU has state "STOPPED", so it cannot be currently '
                   'connected to.'),
    ('CREATING', 255, '[/usr/bin/ssh] exited with return code [255].'),
])
def test_ssh_and_scp_need_a_ready_vm(tmp_path, state, status, says):
  (tmp_path / 'f').write_text('x')
  for argv in (ssh('--command=true'),
               ['compute', 'tpus', 'tpu-vm', 'scp', str(tmp_path / 'f'),
                'my-tpu:f', '--zone=us-central2-b']):
    got, _, err = fake(argv, tmp_path, node(state))
    assert got == status and err.rstrip('\n').endswith(says)


def test_describe_of_a_missing_vm_is_not_found(tmp_path):
  status, out, err = fake(['compute', 'tpus', 'tpu-vm', 'describe', 'my-tpu',
                           '--zone=us-central2-b'], tmp_path)
  assert (status, out) == (1, '')
  assert err.startswith(
      "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource "
      "'projects/my-project/locations/us-central2-b/nodes/my-tpu' was not "
      "found.")


def test_workers_are_checked_as_gcloud_parses_them(tmp_path):
  status, _, err = fake(ssh('--worker=2', '--command=true'), tmp_path,
                        node('READY'))
  assert status == 1 and 'worker index 2 is larger than the valid worker ' \
      'indexes on this TPU VM' in err
  status, _, err = fake(ssh('--worker=all'), tmp_path, node('READY'))
  assert status == 1 and 'cannot target multiple workers without the ' \
      '`--command` flag' in err


def test_a_queued_resource_with_a_vm_needs_force(tmp_path):
  world = dict(node('READY', qr='projects/my-project/locations/us-central2-b/'
                                'queuedResources/my-tpu'),
               qr={'name': 'my-tpu', 'node': 'my-tpu', 'type': 'v4-32',
                   'states': ['ACTIVE']})
  delete = ['compute', 'tpus', 'queued-resources', 'delete', 'my-tpu',
            '--zone=us-central2-b', '--quiet']
  assert fake(delete, tmp_path, world)[0] == 1
  assert fake(delete + ['--force'], tmp_path, world)[0] == 0
  assert world['node'] is None and world['qr'] is None


@pytest.mark.parametrize('flag, typo', [
    ('--accelerator-type', '--accelerator_type'),
    ('--worker', '--workers'),
    ('--node-id', '--node_id'),
    ('--quiet', '--quite'),
])
def test_a_misspelled_flag_in_the_launcher_fails_the_launch(tmp_path, flag,
                                                           typo, monkeypatch):
  """What a typo in launch/tpu/ does against this fake: gcloud's error, not
  a launch that looks fine."""
  cloud = FakeCloud(tmp_path)
  run = cloud.run
  def misspelled(argv, **kwargs):
    return run([a.replace(flag, typo, 1) if a.startswith(flag) else a
                for a in argv], **kwargs)
  monkeypatch.setattr(cloud, 'run', misspelled)
  world = dict(node('PREEMPTED'), train=[0])
  result = launch(cloud, *(['--queued'] if flag == '--node-id' else []),
                  world=world)
  assert result.returncode != 0
  assert f'unrecognized arguments: {typo}' in result.stderr


# --- The real gcloud, where one is installed -----------------------------------


def real_gcloud():
  path = shutil.which('gcloud')
  if not path or 'fake' in path:
    pytest.skip('no real gcloud here')
  return path


@pytest.mark.slow
@pytest.mark.parametrize('argv', REFUSED, ids=lambda a: ' '.join(a[2:4]))
def test_refusals_match_the_real_gclouds(argv, tmp_path):
  gcloud = real_gcloud()
  env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / 'config'),
             CLOUDSDK_CORE_DISABLE_USAGE_REPORTING='1',
             CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK='1', TERM='dumb')
  real = subprocess.run([gcloud, *argv], capture_output=True, text=True,
                        env=env, timeout=120)
  assert (real.returncode, real.stdout, real.stderr) == fake(argv, tmp_path)

