"""Steps dispatched in chunks (`steps.OnDevice`): n steps in one compiled
call equal n calls of one step bit for bit, a chunk never crosses an epoch
or a step where something is due, and a run's records do not depend on how
many steps a call takes."""

import dataclasses

import jax
import numpy as np
import pytest

from alexnet_jax import build
from alexnet_jax import train
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps
from tests import cli
from tests.cli import tiny_config
from tests.helpers import assert_trees_equal


def on_device(config):
  """(the OnDevice steps, a fresh train state) as training builds them."""
  mesh = mesh_lib.make_mesh()
  data = build.dataset(config)
  feed = build.feed(config, mesh, data, 32)
  durations = build.durations_of_feed(config, feed)
  model = build.model(config, feed.num_classes)
  tx, _ = build.optimizer(config, durations)
  state, _ = state_lib.create_train_state(model, tx, (32, 32, 3), 0, mesh)
  return build.train_steps(config, feed, durations, 0), state


def test_a_chunk_of_n_steps_is_n_steps_bit_for_bit(cifar_dir):
  """7 steps as one call, as 7 calls, and as 3 + 4: the same state."""
  config = tiny_config(cifar_dir, steps_per_call=7)
  runner, state = on_device(config)
  copy = lambda s: jax.tree.map(lambda x: x.copy(), s)
  whole = runner.advance(copy(state), 0, 7)
  ones = copy(state)
  for step in range(7):
    ones = runner.advance(ones, step, 1)
  parts = runner.advance(runner.advance(copy(state), 0, 3), 3, 4)
  assert int(whole.step) == int(ones.step) == int(parts.step) == 7
  for other in (ones, parts):
    assert_trees_equal(jax.device_get(whole), jax.device_get(other))


def test_a_chunk_ends_at_the_epoch_and_where_something_is_due(cifar_dir):
  config = tiny_config(cifar_dir, steps_per_call=16)
  runner, _ = on_device(config)
  spe = runner.steps_per_epoch  # 35 steps of 128.
  assert runner.room(0) == 16 and runner.room(spe - 3) == 3
  assert runner.room(spe) == 16
  with pytest.raises(AssertionError):
    runner.advance(None, spe - 3, 4)  # Across the epoch's end.
  d = dataclasses.replace(cli.durations(100, log_every=10),
                          steps_per_eval=25, checkpoint_every=40)
  assert [d.until_due(s) for s in (0, 9, 10, 20, 24, 38, 95)] == [
      10, 1, 10, 5, 1, 2, 5]


def test_the_steps_per_call_change_nothing_but_the_pace(cifar_dir, tmp_path):
  """The same run with 2 and with 6 steps a call: the same records and
  final metrics (logs every 5, evaluations every 7 steps, saves every 4
  steps: chunks cut short everywhere). (1 a call is another program:
  `steps.OnDevice`.)"""
  runs = {}
  for k in (2, 6):
    config = tiny_config(cifar_dir, num_epochs=0, num_steps=15,
                         batch_size=64, log_every_steps=5,
                         eval_every_epochs=0.1, checkpoint_every_steps=4,
                         steps_per_call=k)
    workdir = tmp_path / f'k{k}'
    final = train.train_and_evaluate(config, str(workdir))
    runs[k] = (final, cli.without_speed(cli.read_jsonl(str(workdir))))
  assert runs[2] == runs[6]
  assert [r['step'] for r in runs[6][1] if r['split'] == 'train'] == [
      5, 10, 15]
  assert [r['step'] for r in runs[6][1] if r['split'] == 'val'] == [
      7, 14, 15]
