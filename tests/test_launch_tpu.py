"""launch/tpu_vm.sh: the exact gcloud commands its dry run prints and one-line
errors on bad input."""

import shlex

import pytest

from tests.test_launch import REPO, TPU, assert_one_error_line, bare_path  # pylint: disable=unused-import
from tests.test_launch import commands, option, run


# --- tpu_vm.sh ---------------------------------------------------------------

TPU_ARGS = ('--workdir=gs://bucket/runs/a1', '--tfds-data-dir', 'gs://bucket/tfds')


def test_tpu_dry_run_commands(bare_path):
  result = run(TPU, '--dry-run', '--name=my-tpu', '--project', 'proj-1',
               *TPU_ARGS, '--', '--config.num_epochs=90', 'two words',
               env={'PATH': bare_path})
  assert result.returncode == 0, result.stderr
  argvs = commands(result.stdout)
  gcloud = [a for a in argvs if a[0] == 'gcloud']
  assert [a[1:5] for a in gcloud] == [
      ['compute', 'tpus', 'tpu-vm', verb]
      for verb in ('describe', 'create', 'scp', 'ssh', 'ssh')]
  for argv in gcloud:
    assert '--zone=us-central2-b' in argv and '--project=proj-1' in argv
  describe, create, scp, install, train = gcloud
  for argv in (describe, create, install, train):
    assert argv[5] == 'my-tpu'
  assert scp[6] == 'my-tpu:alexnet_jax.tar.gz'
  assert '--accelerator-type=v4-32' in create
  assert '--version=tpu-ubuntu2204-base' in create
  for argv in (scp, install, train):
    assert '--worker=all' in argv

  # The tarball made first is the one copied to the workers.
  tar = argvs[0]
  assert tar[0] == 'tar' and str(REPO) in tar
  assert tar[tar.index('-czf') + 1] == scp[5]
  assert '--exclude=.git' in tar

  setup = option(install, '--command')
  assert "'jax[tpu]==0.10.2'" in setup and 'requirements.txt' in setup
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


def test_tpu_help_shows_defaults():
  result = run(TPU, '--help')
  assert result.returncode == 0
  for default in ('us-central2-b', 'v4-32', 'tpu-ubuntu2204-base',
                  'configs/cifar10.py', '--dry-run', '--tfds-data-dir'):
    assert default in result.stdout


@pytest.mark.parametrize('args', [
    ('--tfds-data-dir=gs://bucket/tfds',),                      # no --workdir
    ('--workdir=/tmp/run', '--tfds-data-dir=gs://bucket/tfds'),  # not gs://
    ('--workdir=gs://bucket/run',),                             # no tfds dir
    ('--workdir=gs://bucket/run', '--tfds-data-dir=/data/tfds'),
    (*TPU_ARGS, '--zone'),                                       # no value
    (*TPU_ARGS, '--zone='),
    (*TPU_ARGS, '--bogus=1'),
    (*TPU_ARGS, 'stray'),
    (*TPU_ARGS, '--name=Bad_Name'),
    (*TPU_ARGS, '--config=configs/missing.py'),
], ids=['no-workdir', 'local-workdir', 'no-tfds', 'local-tfds', 'no-value',
        'empty-value', 'unknown', 'positional', 'bad-name', 'missing-config'])
def test_tpu_bad_input(args, bare_path):
  # --dry-run too: validation must not depend on gcloud being there.
  assert_one_error_line(run(TPU, '--dry-run', *args, env={'PATH': bare_path}))
