"""The shared test helpers cannot pass without checking: a tree with a leaf
missing, renamed, reshaped or of another dtype is told apart before any
value is compared; a wait ends in a failure, not a hang, when its event
never comes; a child that asked for simulated devices and did not get them
fails inside itself."""

import subprocess
import sys

import numpy as np
import pytest

from tests import helpers


def tree():
  return {'conv1': {'kernel': np.ones((3, 3), np.float32),
                    'bias': np.zeros(3, np.float32)},
          'fc8': {'kernel': np.ones((3, 2), np.float32)}}


@pytest.mark.parametrize('change', [
    lambda t: t['fc8'].pop('kernel'),
    lambda t: t['conv1'].update(scale=t['conv1'].pop('bias')),
    lambda t: t['conv1'].update(bias=np.zeros(4, np.float32)),
    lambda t: t['conv1'].update(bias=np.zeros(3, np.float64)),
], ids=['missing', 'renamed', 'reshaped', 'other dtype'])
def test_trees_that_differ_in_structure_never_compare_equal_or_close(change):
  other = tree()
  change(other)
  for compare in (helpers.assert_trees_equal, helpers.assert_trees_close):
    with pytest.raises(AssertionError):
      compare(other, tree())
    with pytest.raises(AssertionError):
      compare(tree(), other)


def test_trees_compare_values_once_their_structure_matches():
  helpers.assert_trees_equal(tree(), tree())
  close = tree()
  close['fc8']['kernel'] = close['fc8']['kernel'] * np.float32(1 + 1e-6)
  helpers.assert_trees_close(close, tree(), rtol=2e-6)
  with pytest.raises(AssertionError):
    helpers.assert_trees_equal(close, tree())
  with pytest.raises(AssertionError):
    helpers.assert_trees_close(close, tree(), rtol=1e-7)
  with pytest.raises(AssertionError, match='empty'):
    helpers.assert_trees_equal({}, {})


def test_a_wait_fails_when_its_process_exits_first_or_time_is_up():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  with pytest.raises(AssertionError, match='exited first'):
    helpers.wait_for(lambda: False, what='a file', proc=proc)
  with pytest.raises(AssertionError, match='waited 0 s'):
    helpers.wait_for(lambda: False, timeout=0.1, what='a file')
  assert helpers.wait_for(lambda: 'found', what='a file') == 'found'


def test_a_line_reader_fails_instead_of_hanging():
  """On a process that says nothing and never ends, and on one that ends
  without the line."""
  silent = subprocess.Popen([sys.executable, '-c', 'import time; '
                             'time.sleep(600)'], stdout=subprocess.PIPE,
                            text=True)
  try:
    with pytest.raises(AssertionError, match='waited 0 s'):
      helpers.LineReader(silent.stdout).wait_for('ready', timeout=0.2)
  finally:
    silent.kill()
    silent.wait()
  done = subprocess.Popen([sys.executable, '-c', 'print("other")'],
                          stdout=subprocess.PIPE, text=True)
  reader = helpers.LineReader(done.stdout)
  with pytest.raises(AssertionError, match='ended without'):
    reader.wait_for('ready')
  done.wait()
  assert reader.rest() == 'other\n'


def test_a_child_that_did_not_get_its_devices_fails(subprocess_env,
                                                    monkeypatch):
  """As on a GPU host without JAX_PLATFORMS=cpu, where the simulated count
  is ignored: here the flag is dropped, so the child sees 1 device, not 4."""
  assert helpers.run_on_simulated_devices(
      'import jax, json; print(json.dumps(jax.device_count()))',
      subprocess_env, 4) == 4
  monkeypatch.setattr(helpers, 'simulated_devices_env',
                      lambda env, devices: dict(env, JAX_PLATFORMS='cpu'))
  with pytest.raises(AssertionError, match='asked for 4 simulated CPU'):
    helpers.run_on_simulated_devices('print(1)', subprocess_env, 4)
