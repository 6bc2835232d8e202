"""tower_parallelism=2: the paper's two towers on a 'tower' pair of devices
(`model/towers.py`). The same training as one device, the paper's
communication pattern and no more, checkpoints across layouts, and the
one-line errors.

Device counts are fixed when a process starts JAX, so the multi-device
checks run in a child process with simulated CPU devices.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax.errors import ConfigError
from alexnet_jax.task import validation
from configs import cifar10
from tests import cli
from tests.conftest import REPO
from tests.conftest import require_cifar_subset
from tests.helpers import run_on_simulated_devices as run_child
from tests.multiproc import assert_trees_close
from tests.multiproc import params_of
from tests.multiproc import run_main
from tests.multiproc import train_losses


# Three steps of the tiny two-tower net (dropout on) in one process of four
# devices, on three layouts: one device, one tower pair, and data 2 x tower 2.
_THREE_LAYOUTS = r'''
import json
import jax
import numpy as np
from configs import cifar10
from alexnet_jax import build
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps

def train(devices, towers):
  c = cifar10.get_config()
  c.model, c.tower_parallelism, c.batch_size = 'alexnet_tiny_towers', towers, 8
  c.schedule, c.warmup_epochs, c.learning_rate = 'constant', 0., 0.05
  c.dropout_rate, c.log_every_steps = 0.5, 1
  mesh = mesh_lib.make_mesh(1, towers, jax.devices()[:devices])
  model = build.model(c, 10)
  tx, _ = build.optimizer(c, build.durations(c, 10))
  state, _ = state_lib.create_train_state(
      model, tx, (32, 32, 3), 0, mesh, build.apply_fn(c, model, mesh))
  step = steps.make_train_step(build.input_spec(c, build.dataset(c), 32), 10,
                               log_every=c.log_every_steps)
  rng, losses = np.random.default_rng(0), []
  for _ in range(3):
    batch = {'images': rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
             'labels': rng.integers(0, 10, (8,), np.int32)}
    state = step(state, jax.device_put(batch, mesh_lib.batch(mesh)))
    losses.append(float(state.sums['loss'] / state.sums['count']))
  params = jax.tree.map(lambda x: np.asarray(x).tolist(),
                        jax.device_get(state.params))
  return {'losses': losses, 'params': params,
          'conv2': [str(a) for a in state.params['conv2']['kernel'].sharding.spec]}

print(json.dumps({'one': train(1, 1), 'pair': train(2, 2),
                  'data_x_tower': train(4, 2)}))
'''


def arrays(tree):
  return jax.tree.map(np.asarray, tree, is_leaf=lambda x: isinstance(x, list))


def test_towers_train_as_one_device(subprocess_env):
  """One tower pair, and two pairs data-parallel, equal one device over
  three steps with dropout: parameters and losses to float32 rounding."""
  runs = run_child(_THREE_LAYOUTS, subprocess_env, devices=4)
  one = runs['one']
  assert one['conv2'] == []
  for name in ('pair', 'data_x_tower'):
    run = runs[name]
    assert run['conv2'] == ['None', 'None', 'None', 'tower'], name
    np.testing.assert_allclose(run['losses'], one['losses'], rtol=1e-5)
    assert_trees_close(arrays(run['params']), arrays(one['params']))
  assert one['losses'][0] != one['losses'][2]  # It did train.


# The compiled train step's collectives, per layout, for the paper's net.
_COUNTS = r'''
import json
import jax
from configs import imagenet
from benchmarks import lowering

def counts(devices, towers):
  c = imagenet.get_config()
  c.dataset, c.num_classes, c.batch_size = 'fake', 1000, 8
  c.image_size = 227
  c.model, c.tower_parallelism = 'alexnet_paper', towers
  hlo = lowering.lower_train_step(c, devices).compile().as_text()
  return lowering.count_collectives(hlo)

print(json.dumps({'pair': counts(2, 2), 'data_x_tower': counts(4, 2),
                  'data': counts(4, 1)}))
'''


def test_towers_communicate_where_the_papers_gpus_did(subprocess_env):
  """The collectives in alexnet_paper's compiled train step (the HLO a run
  executes), counted; a change that adds any fails here.

  One tower pair: 8 in all.
    * 4 all-gathers over 'tower', the forward exchanges of the paper's
      Figure 2: pool2's maps into conv3, pool5's into fc6, fc6's outputs
      into fc7, fc7's into fc8.
    * 3 reduce-scatters, their transposes in the backward pass: the
      gradient each tower owes the other for the half it sent. (fc8's
      all-gather is "invariant": fc8 runs whole on both towers, so its
      input gradient needs no exchange.)
    * 1 all-reduce over 'tower': conv1's gradient. conv1 is whole on both
      towers because this model's LRN after conv1 spans all 96 maps.
  data 2 x tower 2: the same 8 over each pair, plus 1 all-reduce of the
  gradients over 'data' and 1 all-gather of the logits over 'data' for the
  train metrics' top-k: 10, the data-parallel run's 2 plus the towers' 8.
  conv2, conv4 and conv5 exchange nothing. (jit with GSPMD, the kernels
  sharded over 'tower' and feature_group_count=2, was measured at about
  10 all-gathers in the forward pass alone when this was specified.)
  """
  counts = run_child(_COUNTS, subprocess_env, devices=4)
  none = dict(all_to_all=0, collective_permute=0)
  want = {
      'pair': dict(all_gather=4, reduce_scatter=3, all_reduce=1, **none),
      'data_x_tower': dict(all_gather=5, reduce_scatter=3, all_reduce=2,
                           **none),
      'data': dict(all_gather=1, reduce_scatter=0, all_reduce=1, **none),
  }
  got = {layout: {k.replace('-', '_'): v for k, v in c.items()}
         for layout, c in counts.items()}
  assert got == want


@pytest.mark.parametrize('flags, message', [
    (dict(tower_parallelism=3), 'tower_parallelism 3 must be 1 or 2'),
    (dict(tower_parallelism=2, model='alexnet_tiny'),
     "not 'alexnet_tiny' .it has 1 tower"),
    (dict(tower_parallelism=2, model='alexnet_bn'), 'batch norm'),
    (dict(tower_parallelism=2, model='alexnet_tiny_towers',
          model_parallelism=2), 'choose one'),
    (dict(tower_parallelism=2, model='alexnet_tiny_towers'),
     'needs a multiple of 2 devices'),
])
def test_bad_tower_settings_are_one_line(flags, message, monkeypatch):
  if 'model_parallelism' in flags:  # Seen as 4 devices; this process has 1.
    monkeypatch.setattr(jax, 'device_count', lambda: 4)
    monkeypatch.setattr(jax, 'local_device_count', lambda: 4)
  c = cifar10.get_config()
  c.update(flags)
  with pytest.raises(ConfigError, match=message) as err:
    validation.validate_config(c)
  assert '\n' not in str(err.value)


# --- Through alexnet_jax.main: resume and restores across layouts ------------

_FLAGS = ['--config.model=alexnet_tiny_towers', '--config.schedule=constant',
          '--config.warmup_epochs=0']


@pytest.fixture(scope='module')
def towers_runs(tmp_path_factory):
  """Three steps on one device and on data 2 x tower 2; five straight on
  one device, on data 2 x tower 2 and on one tower pair."""
  cifar = require_cifar_subset()
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2')
  root = tmp_path_factory.mktemp('towers')
  out = {'cifar': cifar, 'env': env}
  for name, devices, extra in (
      ('one', 1, ['--config.num_steps=3']),
      ('towers', 4, ['--config.num_steps=3', '--config.tower_parallelism=2']),
      ('straight', 1, ['--config.num_steps=5']),
      ('straight_towers', 4, ['--config.num_steps=5',
                              '--config.tower_parallelism=2']),
      ('straight_pair', 2, ['--config.num_steps=5',
                            '--config.tower_parallelism=2'])):
    out[name] = str(root / name)
    out[name + '_log'] = run_main(out[name], cifar, env, devices=devices,
                                  extra=_FLAGS + extra).stdout
  return out


def resume(runs, source, workdir, devices, extra=()):
  shutil.copytree(runs[source], workdir)
  log = run_main(workdir, runs['cifar'], runs['env'], devices=devices,
                 extra=_FLAGS + ['--config.num_steps=5', *extra]).stdout
  assert 'resuming from' in log and 'at step 3' in log
  return str(workdir)


@pytest.mark.slow
def test_main_with_towers_matches_one_device(towers_runs):
  log = towers_runs['towers_log']
  assert "'data': 2, 'model': 1, 'tower': 2" in log
  assert "conv2 kernel sharded (None, None, None, 'tower')" in log
  assert_trees_close(params_of(towers_runs['towers']),
                     params_of(towers_runs['one']))
  np.testing.assert_allclose(train_losses(towers_runs['towers']),
                             train_losses(towers_runs['one']), rtol=1e-5)


@pytest.mark.slow
def test_towers_resume_exactly_and_checkpoints_move_between_layouts(
    towers_runs, tmp_path):
  """data 2 x tower 2 -> the same layout: bit for bit the uninterrupted
  five steps on that layout (the whole train state, and every logged loss).
  data 2 x tower 2 -> one device, and one device -> one tower pair: as close
  to five uninterrupted steps on one device as the layouts' arithmetic
  allows (`layout_rounding`)."""
  tower = ['--config.tower_parallelism=2']
  same = resume(towers_runs, 'towers', tmp_path / 'same', 4, tower)
  cli.assert_states_bitwise_equal(same, towers_runs['straight_towers'], 5)
  # The resumed run's records: the first run's steps 2 and 3 (its last),
  # then its own 4 and 5.
  resumed, want = losses_by_step(same), losses_by_step(
      towers_runs['straight_towers'])
  assert set(resumed) == {2, 3, 4, 5} and set(want) == {2, 4, 5}
  assert {s: resumed[s] for s in want} == want
  straight = towers_runs['straight']
  for workdir, layout in (
      (resume(towers_runs, 'towers', tmp_path / 'to_one', 1),
       'straight_towers'),
      (resume(towers_runs, 'one', tmp_path / 'to_pair', 2, tower),
       'straight_pair')):
    params_tol, loss_tol = layout_rounding(straight, towers_runs[layout])
    assert_trees_close(params_of(workdir, 5), params_of(straight, 5),
                       params_tol)
    resumed, want = losses_by_step(workdir), losses_by_step(straight)
    assert set(resumed) == {2, 3, 4, 5} and set(want) == {2, 4, 5}
    np.testing.assert_allclose([resumed[s] for s in want],
                               list(want.values()), rtol=loss_tol)


def layout_rounding(one_device, other_layout):
  """(parameter, loss) relative tolerances for a run that moved between one
  device and `other_layout` mid-way, from the arithmetic of the layouts.

  The layouts compute the same sums in other orders (the batch split over
  'data', a tower's gradients reduced over 'tower'), so in float32 their
  results differ in the last bits, and five steps carry those differences
  on. How far is the layouts' own doing: the uninterrupted five steps on
  each (`one_device`, `other_layout`) differ by exactly that. A run that
  switched layouts after step 3 carries three steps of one layout's
  rounding through two of the other's: the same order (measured on an
  Intel Xeon: 5.7e-7 both, the largest leaf), so 4 times the layouts' own
  difference leaves room for roundings that add up where they cancelled
  before. The floor, 16 units of float32 roundoff, is the case where the
  layouts agree to the bit on this machine. A restore that dropped the
  momentum was measured 0.43 off (conv1's bias; the tolerance 2.3e-6).
  """
  u = np.finfo(np.float32).eps / 2
  params = max(assert_trees_close(params_of(other_layout, 5),
                                  params_of(one_device, 5),
                                  rtol=1e-4).values())
  a, b = losses_by_step(other_layout), losses_by_step(one_device)
  losses = max(abs(a[s] - b[s]) / abs(b[s]) for s in b)
  return max(4 * params, 16 * u), max(4 * losses, 16 * u)


def losses_by_step(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f)
            if r['split'] == 'train'}
