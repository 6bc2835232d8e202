"""Helpers for tests that run `python -m alexnet_jax.main` as users do."""

import json
import os
import subprocess
import sys

import jax

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.layout import Layout
from tests import helpers
from tests.conftest import REPO

MAIN = [sys.executable, '-m', 'alexnet_jax.main']


def cli_args(cifar_dir, workdir, config='configs/cifar10.py', **overrides):
  """The tiny net on the real subset: 35 steps an epoch at batch 128."""
  base = dict(model='alexnet_tiny', data_dir=cifar_dir, num_epochs=3,
              batch_size=128, log_every_steps=5, checkpoint_every_steps=10,
              schedule='plateau', plateau_patience=1, learning_rate=0.02)
  base.update(overrides)
  return [f'--config={config}', f'--workdir={workdir}'] + [
      f'--config.{k}={v}' for k, v in base.items()]


def tiny_config(cifar_dir, **overrides):
  """cli_args' run as a config, for runs in this process: the tiny net on
  the real subset, 35 steps an epoch at batch 128, two epochs."""
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  c = cifar10.get_config()
  c.model = 'alexnet_tiny'
  c.data_dir = cifar_dir
  c.batch_size = 128
  c.learning_rate = 0.02
  c.num_epochs = 2
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  c.keep_checkpoints = 2
  c.update(overrides)
  return c


def run_cli(args, env, prefix=(), **kwargs):
  """Runs main to completion; `prefix` (e.g. unshare) goes before python."""
  kwargs.setdefault('timeout', 600)
  kwargs.setdefault('cwd', REPO)
  return subprocess.run(list(prefix) + MAIN + list(args), env=env,
                        capture_output=True, text=True, **kwargs)


def start_cli(args, env, **kwargs):
  return subprocess.Popen(MAIN + list(args), cwd=REPO, env=env, text=True,
                          **kwargs)


def read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def without_speed(records):
  return [{k: v for k, v in r.items() if k != 'images_per_sec'}
          for r in records]


def snapshot(folder):
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith('error:')]


def load_state_on_host(workdir, step=None):
  """A saved train state as numpy arrays, whatever mesh it was saved from:
  every array restored onto this process's first device, then fetched."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if step is None:
    step = checkpoints.latest_step_on_disk(workdir)
  path = Layout.of(workdir).checkpoint(step)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpoints.read_array_metadata(path))
  return jax.device_get(ocp.StandardCheckpointer().restore(path, target))


def assert_states_bitwise_equal(workdir_a, workdir_b, step=None):
  """Whole train states (params, momentum, step, rng, plateau) bit for bit:
  the same leaves, shapes and dtypes, then the same bytes."""
  helpers.assert_trees_equal(load_state_on_host(workdir_a, step),
                             load_state_on_host(workdir_b, step))


def run_tool(tool, args, env):
  """Runs `python -m alexnet_jax.<tool> ARGS` to completion."""
  return subprocess.run([sys.executable, '-m', f'alexnet_jax.{tool}'] + args,
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def assert_one_error_line(result, expected, alone: bool = False):
  """Exit 2, one `error:` line containing `expected`, no traceback; the
  line. Other lines on stderr, such as a library's warnings, may be there (a
  Python process cannot always silence them), unless `alone`: the launchers,
  which own every line they print, leave stdout empty and that line alone.
  """
  assert result.returncode == 2, result.stderr[-2000:]
  errors = error_lines(result.stderr)
  assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  if alone:
    assert result.stdout == '' and result.stderr.splitlines() == errors, (
        result.stdout[-1000:], result.stderr[-1000:])
  return errors[0]


def evaluate_arrays(config, model, params, images, labels, num_classes=10):
  """The trainer's evaluation (views, padded and masked batches) of host
  arrays: {'loss', 'top1', 'top5'}. `params` may be the model's variables
  ({'params', 'batch_stats'})."""
  variables = params if 'params' in params else {'params': params}
  from alexnet_jax import build  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.task import evaluation  # pylint: disable=g-import-not-at-top
  spec = build.input_spec(config, build.dataset(config), images.shape[1])
  evaluator = evaluation.Evaluator(
      evaluation.make_logits_fn(spec, model.apply), config.eval_batch_size,
      mesh_lib.make_mesh(), num_classes)
  return evaluation.split_metrics(evaluator.over_arrays(
      variables, jax.numpy.asarray(images), jax.numpy.asarray(labels)))


def durations(total_steps: int, log_every: int = 1, steps_per_epoch: int = 10):
  """A run's Durations for components tested on their own."""
  from alexnet_jax.task.durations import Durations  # pylint: disable=g-import-not-at-top
  return Durations(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                   log_every=log_every, steps_per_eval=0, checkpoint_every=0,
                   warmup_steps=0, lr_step_boundaries=())
