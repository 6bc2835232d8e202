"""Large batches: LARS worked by hand (the trust ratio per layer, the
masks), the poly schedule, AlexNet-BN's shape and its batch statistics as
train state (saved, restored, an exact resume), statistics over the global
batch on several devices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import build
from alexnet_jax import train
from alexnet_jax.model import alexnet
from configs import default
from tests import cli
from tests.cli import tiny_config
from tests.helpers import assert_same_structure
from tests.helpers import run_on_simulated_devices


def lars_config(**overrides):
  c = default.get_config()
  c.update(optimizer='lars', schedule='constant', learning_rate=2.0,
           weight_decay=0.01, momentum=0.9, lars_trust_coefficient=0.001,
           warmup_epochs=0.)
  c.update(overrides)
  return c


def test_two_lars_steps_by_hand():
  """Kernels: the step is lr * eta * ||w|| / ||g + wd w|| * (g + wd w), per
  layer, into the momentum; biases and batch-norm leaves (no 'kernel'):
  lr * g, no decay, no trust ratio."""
  config = lars_config()
  tx, _ = build.optimizer(config, build.durations(config, 10))
  w = {'conv1': {'kernel': jnp.array([[3., 4.]]), 'bias': jnp.array([1.])},
       'fc6': {'kernel': jnp.array([0.5, -0.5, 1.0]),
               'bias': jnp.array([-2., 0.])}}
  grads = [jax.tree.map(lambda x: 0.1 * jnp.ones_like(x) + 0.05 * x, w),
           jax.tree.map(lambda x: -0.2 * jnp.ones_like(x), w)]
  state, params = tx.init(w), w
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)

  def by_hand(w0, gs, kernel):
    w0, v = np.asarray(w0, np.float64), 0.
    for g in gs:
      g = np.asarray(g, np.float64)
      if kernel:
        g = g + 0.01 * w0
        g = 0.001 * np.linalg.norm(w0) / np.linalg.norm(g) * g
      v = 0.9 * v + 2.0 * g
      w0 = w0 - v
    return w0

  for layer in w:
    for leaf in ('kernel', 'bias'):
      want = by_hand(w[layer][leaf], [g[layer][leaf] for g in grads],
                     leaf == 'kernel')
      np.testing.assert_allclose(params[layer][leaf], want, rtol=1e-5,
                                 err_msg=f'{layer}/{leaf}')
  # Not optax's defaults, which decay and trust-scale the biases too.
  default_tx = optax.lars(2.0, weight_decay=0.01, momentum=0.9)
  p = optax.apply_updates(w, default_tx.update(grads[0], default_tx.init(w),
                                               w)[0])
  assert not np.allclose(p['fc6']['bias'], w['fc6']['bias'] - 2.0 * np.asarray(
      grads[0]['fc6']['bias']))


def test_poly_schedule_warms_up_then_falls_as_a_square_to_zero():
  config = lars_config(schedule='poly', learning_rate=10., warmup_epochs=1.,
                       num_steps=110)
  _, sched = build.optimizer(config, build.durations(config, 10))
  assert float(sched(0)) == 0. and float(sched(5)) == pytest.approx(5.)
  assert float(sched(10)) == pytest.approx(10.)
  assert float(sched(60)) == pytest.approx(10. * 0.5 ** 2)
  assert float(sched(110)) == pytest.approx(0., abs=1e-6)


def test_lars_with_the_plateau_schedule_is_one_line(cifar_dir, tmp_path,
                                                    subprocess_env):
  """As a user meets it: one `error:` line naming the valid schedules, exit
  status 2, no traceback, no workdir."""
  workdir = tmp_path / 'w'
  result = cli.run_cli(cli.cli_args(cifar_dir, workdir, optimizer='lars',
                                    schedule='plateau'), subprocess_env)
  cli.assert_one_error_line(result, 'optimizer lars takes schedule poly, '
                            'cosine, step or constant, not plateau')
  assert not workdir.exists()


def test_alexnet_bn_has_the_papers_parameters_and_batch_statistics():
  model = alexnet.AlexNetBN(num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 227, 227, 3))))
  count = sum(x.size for x in jax.tree.leaves(shapes['params']))
  assert count == 60_965_224  # The normalization learns no parameters.
  stats = {name: leaf.shape for name, layer in shapes['batch_stats'].items()
           for leaf in layer.values()}
  assert stats == {'bn2': (96,), 'bn3': (256,), 'bn4': (384,), 'bn5': (384,)}
  assert not any('lrn' in k for k in shapes['params'])


def test_batch_norm_trains_on_the_batch_and_evaluates_on_running_averages():
  model = alexnet.AlexNetTinyBN(num_classes=10)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3)) * 3 + 2
  variables = model.init(jax.random.key(0), x[:1])
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.key(2)})
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       variables['batch_stats'], updated['batch_stats'])
  assert all(v > 0 for v in jax.tree.leaves(moved))
  a = model.apply(variables, x[:4], train=False)
  b = model.apply(variables, jnp.concatenate([x[:4], 10 * x[4:]]),
                  train=False)[:4]
  np.testing.assert_allclose(a, b, rtol=1e-6)  # No batch statistics used.


def test_batch_statistics_are_checkpointed_and_resume_exactly(cifar_dir,
                                                              tmp_path):
  """The tiny AlexNet-BN under LARS and the poly schedule, 12 steps; its
  workdir cut back to the checkpoint at step 6 (later steps and the final
  metrics deleted) and rerun: the end is the uninterrupted run's bit for
  bit, running averages included, and evaluation uses them."""
  import shutil  # pylint: disable=g-import-not-at-top
  config = tiny_config(
      cifar_dir, model='alexnet_tiny_bn', optimizer='lars', schedule='poly',
      learning_rate=1.0, warmup_epochs=0.1, num_epochs=0, num_steps=12,
      eval_every_epochs=0, checkpoint_every_steps=6, keep_checkpoints=3)
  whole, cut = str(tmp_path / 'whole'), str(tmp_path / 'cut')
  final = train.train_and_evaluate(config, whole)
  shutil.copytree(whole, cut)
  shutil.rmtree(os.path.join(cut, 'checkpoints', '12'))
  os.remove(os.path.join(cut, 'final_metrics.json'))
  again = train.train_and_evaluate(config, cut)
  cli.assert_states_bitwise_equal(whole, cut, 12)
  state = cli.load_state_on_host(cut, 12)
  assert set(state['batch_stats']) == {'bn2', 'bn3', 'bn4', 'bn5'}
  assert np.abs(state['batch_stats']['bn2']['mean']).max() > 0
  assert again['test'] == final['test']


_GLOBAL_STATS = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from alexnet_jax import build
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps
from configs import default
c = default.get_config()
c.update(model='alexnet_tiny_bn', dataset='fake', num_classes=10,
         crop_padding=0, random_flip=False, dropout_rate=0., batch_size=16,
         schedule='constant', optimizer='lars', learning_rate=1.)
mesh = mesh_lib.make_mesh()
model = build.model(c, 10)
tx, _ = build.optimizer(c, build.durations(c, 1))
state, _ = state_lib.create_train_state(model, tx, (32, 32, 3), 0, mesh)
step = steps.make_train_step(build.input_spec(c, build.dataset(c), 32), 10,
                             log_every=c.log_every_steps)
rng = np.random.default_rng(0)
for _ in range(2):
  batch = {'images': jax.device_put(rng.integers(0, 256, (16, 32, 32, 3),
                                                 np.uint8), mesh_lib.batch(mesh)),
           'labels': jax.device_put(rng.integers(0, 10, (16,), np.int32),
                                    mesh_lib.batch(mesh))}
  state = step(state, batch)
out = jax.device_get({'stats': state.batch_stats, 'params': state.params})
print(json.dumps(jax.tree.map(lambda x: np.asarray(x).tolist(), out)))
'''


@pytest.mark.slow
def test_batch_statistics_are_the_global_batchs_on_several_devices(
    subprocess_env):
  """On 4 devices (4 images each) the running averages and the
  parameters after two LARS steps equal one device's: the statistics are
  over the global batch, not each device's share."""
  runs = {devices: run_on_simulated_devices(_GLOBAL_STATS, subprocess_env,
                                            devices)
          for devices in (1, 4)}
  as_arrays = lambda t: jax.tree.map(
      np.asarray, t, is_leaf=lambda x: isinstance(x, list))
  for _, a, b in assert_same_structure(as_arrays(runs[1]), as_arrays(runs[4])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
