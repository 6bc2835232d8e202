"""What every kind of test shares: waiting on events, processes and ports,
comparing pytrees, and float32 error bounds.

`tests/cli.py` runs the command line (and holds the one
`assert_one_error_line`); this module holds what is not about the command
line. Test modules import from here, never from each other.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np

# --- Waiting on events ---------------------------------------------------------

# How often `wait_for` looks again. The condition is the event; this is only
# how soon after it happens the test notices.
_POLL_S = 0.02


def wait_for(predicate, timeout=300., what='the condition', proc=None):
  """Waits until `predicate()` is truthy and returns its value.

  The wait is on the event `predicate` checks (a file appearing, a line
  printed); `timeout` only turns a hang into a failure, so it is generous.
  With `proc` (a Popen), that process exiting first is a failure at once:
  it can no longer make the event happen.
  """
  deadline = time.monotonic() + timeout
  while True:
    value = predicate()
    if value:
      return value
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f'{what}: never happened; the process exited '
                           f'first (status {proc.returncode})')
    if time.monotonic() > deadline:
      raise AssertionError(f'{what}: waited {timeout:.0f} s, never happened')
    time.sleep(_POLL_S)


class LineReader:
  """A text pipe read by a thread, so a test can wait for a line with a
  failure timeout while the process writes (readline alone would block
  forever on a process that hangs). `text()` is everything read so far."""

  def __init__(self, pipe):
    self._lines = queue.Queue()
    self._seen = []
    self._thread = threading.Thread(target=self._read, args=(pipe,),
                                    daemon=True)
    self._thread.start()

  def _read(self, pipe):
    for line in iter(pipe.readline, ''):
      self._lines.put(line)
    self._lines.put(None)  # End of file.

  def wait_for(self, text, timeout=300.):
    """The first line (from here on) containing `text`."""
    deadline = time.monotonic() + timeout
    while True:
      try:
        line = self._lines.get(timeout=max(0., deadline - time.monotonic()))
      except queue.Empty:
        raise AssertionError(f'waited {timeout:.0f} s for a line with '
                             f'{text!r}; read:\n{self.text()[-2000:]}') from None
      if line is None:
        self._lines.put(None)
        raise AssertionError(f'the stream ended without a line with {text!r}; '
                             f'read:\n{self.text()[-2000:]}')
      self._seen.append(line)
      if text in line:
        return line

  def rest(self, timeout=300.):
    """Everything read, once the stream has ended."""
    self._thread.join(timeout)
    assert not self._thread.is_alive(), 'the stream did not end'
    while True:
      line = self._lines.get_nowait()
      if line is None:
        return self.text()
      self._seen.append(line)

  def text(self):
    return ''.join(self._seen)


# --- Processes and ports ---------------------------------------------------------


def _stat_fields(pid):
  """/proc/PID/stat after the command name: [state, ppid, ...]."""
  with open(f'/proc/{pid}/stat') as f:
    return f.read().rsplit(')', 1)[1].split()


def child_pids(pid):
  """The direct children of `pid`, from /proc."""
  children = []
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    try:
      if int(_stat_fields(name)[1]) == pid:
        children.append(int(name))
    except OSError:
      continue  # Gone meanwhile.
  return children


def alive(pid):
  """Running, not a zombie left for a reaper to collect."""
  try:
    return _stat_fields(pid)[0] != 'Z'
  except OSError:
    return False


def free_port():
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def simulated_devices_env(env, devices):
  """`env` for a child process that sees `devices` simulated CPU devices.
  JAX_PLATFORMS=cpu as well: on a GPU or TPU host JAX would otherwise take
  the accelerator, ignore the flag, and a comparison of 1 device with N
  would compare 1 with 1 and pass."""
  return dict(env, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'--xla_force_host_platform_device_count={devices}'))


# Run first in every `run_on_simulated_devices` child: it fails unless JAX
# really gave it the devices the test asked for.
_CHECK_DEVICES = """
import jax as _jax
assert _jax.device_count() == {devices} and {{
    d.platform for d in _jax.devices()}} == {{'cpu'}}, (
        'asked for {devices} simulated CPU devices, got %s' % _jax.devices())
"""


def run_on_simulated_devices(script, env, devices, timeout=300):
  """Runs `python -c SCRIPT` on `devices` simulated CPU devices (checked in
  the child) from the repository root; the JSON object its last line of
  stdout prints."""
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, '-c', _CHECK_DEVICES.format(devices=devices) + script],
      cwd=REPO, env=simulated_devices_env(env, devices), capture_output=True,
      text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


# --- Pytrees -----------------------------------------------------------------------


def _leaves(tree):
  return [(jax.tree_util.keystr(path), np.asarray(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def assert_same_structure(a, b):
  """The same leaves by path, count, shape and dtype: two trees compared
  leaf by leaf must first hold the same leaves (zip alone would pass a tree
  with leaves missing). Returns [(path, a_leaf, b_leaf)]."""
  la, lb = _leaves(a), _leaves(b)
  paths_a, paths_b = [p for p, _ in la], [p for p, _ in lb]
  assert paths_a == paths_b, (
      f'{len(paths_a)} leaves against {len(paths_b)}; only in the first: '
      f'{sorted(set(paths_a) - set(paths_b))}, only in the second: '
      f'{sorted(set(paths_b) - set(paths_a))}')
  assert paths_a, 'both trees are empty: nothing would be compared'
  for (path, x), (_, y) in zip(la, lb):
    assert (x.shape, x.dtype) == (y.shape, y.dtype), (
        path, (x.shape, x.dtype), (y.shape, y.dtype))
  return [(path, x, y) for (path, x), (_, y) in zip(la, lb)]


def assert_trees_equal(a, b):
  """Bit for bit, leaf by leaf, after `assert_same_structure`."""
  for path, x, y in assert_same_structure(a, b):
    assert x.tobytes() == y.tobytes(), path


def relative_difference(x, y):
  """||x - y|| / ||y|| (0 when both are 0), in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  scale = np.linalg.norm(y)
  diff = np.linalg.norm(x - y)
  return diff / scale if scale else diff


def assert_trees_close(a, b, rtol=1e-5):
  """Each leaf within `rtol` of b's in norm, after `assert_same_structure`.
  Returns {path: relative difference}. (The default is the one the
  scale-out comparisons of test_distributed.py use.)"""
  out = {}
  for path, x, y in assert_same_structure(a, b):
    out[path] = relative_difference(x, y)
    assert out[path] <= rtol, (path, out[path], rtol)
  return out


# --- float32 rounding ----------------------------------------------------------------

# The unit roundoff of float32: a correctly rounded operation (IEEE 754, as on
# every x86 and ARM CPU, and on GPUs for float32 at 'highest' precision) is
# off by at most this much relative to the exact result.
UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2


def sum_error_bound(abs_sum, terms):
  """|computed - exact| of a float32 sum of `terms` products whose absolute
  values add up to `abs_sum`, summed in ANY order (sequential, pairwise,
  blocked, vectorized, with or without FMA): gamma_n * abs_sum with
  gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of Numerical
  Algorithms, 2nd ed., Sec. 3.1: one rounding per product and at most n - 1
  per addition on any path). An order-free worst case, so it holds whatever
  reduction order a CPU's kernels or an accelerator choose; the typical
  error is about sqrt(n) times smaller."""
  n = terms
  return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF) * np.asarray(abs_sum,
                                                                  np.float64)
