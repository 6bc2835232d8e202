"""The runtime pieces on their own, in this process (fast): how a signal
becomes a stop request, the checkpoint save cadence orbax decides, the
lost-process watchdog's verdicts, and C-level signal handlers."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import csignals
from alexnet_jax.runtime import liveness
from alexnet_jax.runtime import preemption
from tests.conftest import REPO
from tests.helpers import LineReader


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_becomes_a_stop_at_the_next_step(sig, capfd):
  before = signal.getsignal(sig)
  with preemption.StopRequest(lambda step: False) as stop:
    assert not stop.should_stop(1)
    os.kill(os.getpid(), sig)
    assert stop.should_stop(2) and stop.signum == sig
  assert signal.getsignal(sig) == before  # Handlers restored after the run.
  assert f'{signal.Signals(sig).name} received: finishing the current step' \
      in capfd.readouterr().err


# An XLA call that never returns on its own, inside a run's StopRequest. A
# host callback at its start says 'computing' from inside the call (the main
# thread is then blocked in XLA, not in Python); the loop after it spins
# until the process ends. (block_until_ready lets Python handlers run while
# it waits; np.asarray, like a collective that waits for another process,
# does not.)
_STUCK_IN_XLA = """
import jax, jax.numpy as jnp, numpy as np
from alexnet_jax.runtime import preemption

def say_computing(x):
  print('computing', flush=True)
  return x

@jax.jit
def spin(x):
  x = jax.pure_callback(say_computing, jax.ShapeDtypeStruct(x.shape, x.dtype),
                        x)
  return jax.lax.while_loop(lambda x: jnp.isfinite(x).all(),  # Always.
                            lambda x: jnp.sin(x) * 1.0001, x)

with preemption.StopRequest(lambda step: False):
  np.asarray(spin(jnp.ones(1024)))
  print('computed', flush=True)
"""


def test_signals_are_seen_when_they_arrive_even_inside_an_xla_call():
  """Python runs a handler only after the current XLA call; the first signal
  is still acknowledged at once and the second exits at once (143), which in
  a multi-process job must not wait for a collective with a process that
  has gone. "At once" is an event here, not a time: the call never returns,
  so whatever happens, happens inside it."""
  proc = subprocess.Popen([sys.executable, '-c', _STUCK_IN_XLA],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    out, err = LineReader(proc.stdout), LineReader(proc.stderr)
    out.wait_for('computing', timeout=120)  # Inside the XLA call.
    proc.send_signal(signal.SIGTERM)
    err.wait_for('SIGTERM received', timeout=120)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  finally:
    proc.kill()
  err = err.rest()
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert 'SIGTERM again: exiting at once, without saving' in err
  assert out.rest() == 'computing\n'  # The call never returned.


_FORKED_CHILD_SIGNALLED = """
import os, signal, sys
from alexnet_jax.runtime import preemption
with preemption.StopRequest(lambda step: False) as stop:
  child = os.fork()
  if child == 0:
    os.kill(os.getpid(), signal.SIGTERM)  # Delivered before kill returns.
    os._exit(0)
  os.waitpid(child, 0)
  # A SIGINT to this process goes through the wake-up pipe after whatever
  # the child's SIGTERM left there; the signals thread says which it saw.
  os.kill(os.getpid(), signal.SIGINT)
  sys.stdin.readline()  # The test has read that line.
  print('stop requested by', signal.Signals(stop.signum).name, flush=True)
"""


def test_a_forked_childs_signal_is_not_this_processs():
  """A forked data worker inherits the wake-up fd; a SIGTERM that only it
  receives must not count as the trainer's. Had it counted, the trainer's
  own SIGINT after it would be a second signal: 'SIGINT again', exit 130."""
  proc = subprocess.Popen([sys.executable, '-c', _FORKED_CHILD_SIGNALLED],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    err = LineReader(proc.stderr)
    first = err.wait_for(' received', timeout=120)
    proc.stdin.close()
    out = proc.stdout.read()
    proc.wait(timeout=120)
  finally:
    proc.kill()
  assert first.startswith('SIGINT received'), err.rest()[-2000:]
  assert proc.returncode == 0, err.rest()[-2000:]
  assert out == 'stop requested by SIGINT\n'
  assert 'SIGTERM' not in err.rest()


# What exiting at once does while JAX aborts (process 0 went first): a final
# word that cannot reach the gone coordinator, then abort() in another thread
# once that word is on its way.
_ABORT_WHILE_EXITING = """
import os, threading
from alexnet_jax.runtime import csignals, liveness
writing = threading.Event()
class Gone:  # The coordinator's store, no longer answering.
  def key_value_set(self, *args, **kwargs):
    writing.set()
    threading.Event().wait()  # Never answers.
dog = liveness.Watchdog(Gone(), 1, 2, lost_after=30)
liveness._current = dog
csignals.install_hook(6, liveness._AbortHook(dog, '127.0.0.1:1'))
threading.Thread(target=liveness.exit_now, args=(143, 'exited', 30)).start()
writing.wait()
os.abort()
"""


def test_an_abort_while_exiting_at_once_keeps_the_exit_status():
  """The CI failure this guards against: both processes of a job got a
  second SIGTERM; process 0 exited first, and JAX aborted process 1 while it
  was leaving its final word (exit status -6 instead of 143)."""
  proc = subprocess.run([sys.executable, '-c', _ABORT_WHILE_EXITING],
                        capture_output=True, text=True, timeout=60,
                        check=False)
  assert proc.returncode == 143, proc.stderr[-2000:]


def test_one_cadence_for_logs_evaluations_and_saves():
  """Logs every 3 steps, evaluations every 6 (and at the end), saves every 4,
  at evaluations and at the end; a window of summed metrics opens after
  each log."""
  from tests import cli  # pylint: disable=g-import-not-at-top
  d = dataclasses.replace(cli.durations(10, log_every=3), steps_per_eval=6,
                          checkpoint_every=4)
  steps = range(1, 11)
  assert [s for s in steps if d.logs_at(s)] == [3, 6, 9, 10]
  assert [s for s in steps if d.evaluates_at(s)] == [6, 10]
  assert [s for s in steps if d.saves_at(s)] == [4, 6, 8, 10]
  assert [s for s in steps if d.window_start(s)] == [1, 4, 7, 10]


def test_the_checkpointer_saves_when_told_and_keeps_the_latest(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
  try:
    for step in (4, 6, 8):
      ckpt.save(step, {'w': jnp.zeros(2)})
    ckpt.wait()
  finally:
    ckpt.close()
  assert checkpoints.saved_steps(str(tmp_path)) == [6, 8]


# --- The lost-process watchdog (runtime/liveness.py) ---------------------------


class Store:
  """JAX's distributed key-value store, as far as the watchdog uses it."""

  def __init__(self):
    self.values, self.fail = {}, None

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite
    if self.fail:
      raise self.fail
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.fail:
      raise self.fail
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def watchdog_of_process_0(store, clock):
  return liveness.Watchdog(store, 0, 3, lost_after=30, interval=3,
                           clock=lambda: clock[0])


def beat(store, process, value):
  store.values[f'{liveness.PREFIX}{process}'] = value


def test_a_silent_process_is_lost_after_lost_after_seconds():
  store, clock = Store(), [0.0]
  dog = watchdog_of_process_0(store, clock)
  for t in range(0, 40, 3):
    clock[0] = t
    beat(store, 1, f'beat {t}')  # Process 1 goes on; process 2 never beats.
    verdict = dog.poll()
    if t < 30:
      assert verdict is None, t
  assert verdict.startswith('error: process 2 of 3 was lost: no sign of life '
                            'for 39 s')
  assert 'process 0 stops too (exit status 75)' in verdict
  assert store.values[f'{liveness.PREFIX}0'] == 'beat 14'


def test_done_is_never_lost_and_an_exit_is_named_after_a_grace():
  store, clock = Store(), [0.0]
  dog = watchdog_of_process_0(store, clock)
  beat(store, 1, 'done')
  beat(store, 2, 'exited: error: data_dir is missing')
  assert dog.poll() is None
  clock[0] = liveness.EXITED_GRACE - 1
  assert dog.poll() is None  # It usually says so itself first.
  clock[0] = 100
  verdict = dog.poll()
  assert verdict.startswith('error: process 2 of 3 stopped (error: data_dir '
                            'is missing) while this one was still running')


def test_losing_the_store_is_losing_the_coordinator():
  store, clock = Store(), [0.0]
  dog = watchdog_of_process_0(store, clock)
  store.fail = RuntimeError('UNAVAILABLE: Socket closed')
  assert dog.poll() is None
  clock[0] = 31
  verdict = dog.poll()
  assert verdict.startswith('error: lost contact with the coordinator (process '
                            '0 of 3')
  assert 'UNAVAILABLE: Socket closed' in verdict


def test_the_final_word_is_not_overwritten_by_a_beat():
  store, clock = Store(), [0.0]
  dog = watchdog_of_process_0(store, clock)
  dog.poll()
  dog.finish('done')
  assert dog.poll() is None and not dog.judging()
  assert store.values[f'{liveness.PREFIX}0'] == 'done'


STUCK_SURVIVOR = """
import threading
from alexnet_jax.runtime import liveness

class Store:  # JAX's key-value store, where process 0 never beats.
  def __init__(self):
    self.values = {}
  def key_value_set(self, key, value, allow_overwrite=False):
    self.values[key] = value
  def key_value_dir_get(self, prefix):
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

liveness.Watchdog(Store(), 1, 2, lost_after=0.3, interval=0.05).start()
threading.Event().wait()  # The main thread stuck, as in a collective.
"""


def test_a_lost_process_ends_the_survivor_whatever_its_main_thread_does(
    subprocess_env):
  """The watchdog's real verdict, in a process whose main thread waits
  forever: one line, exit status 75, at once (a verdict that only ended its
  own thread would leave the survivor hanging: the timeout fails the test)."""
  result = subprocess.run([sys.executable, '-c', STUCK_SURVIVOR], cwd=REPO,
                          env=subprocess_env, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == liveness.EXIT_LOST, result.stderr
  [line] = result.stderr.splitlines()
  assert line.startswith('error: process 0 of 2 was lost: no sign of life')
  assert line.endswith('rerun the same command to resume from the last one')


def test_a_c_signal_handler_is_called_and_put_back():
  """csignals: a C-level hook runs at once; CHandler reads it back, calls it
  and reinstalls it after Python's handler replaced it (what preemption.py
  does with XLA's SIGTERM notifier)."""
  seen = []
  before = signal.getsignal(signal.SIGUSR2)
  try:
    assert csignals.install_hook(signal.SIGUSR2, seen.append)
    saved = csignals.CHandler.current(signal.SIGUSR2)
    saved.call()
    assert seen == [signal.SIGUSR2]
    signal.signal(signal.SIGUSR2, lambda *_: seen.append('python'))
    saved.reinstall()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert seen == [signal.SIGUSR2, signal.SIGUSR2]
  finally:
    signal.signal(signal.SIGUSR2, before)
  assert csignals.CHandler.current(signal.SIGUSR2) is None  # SIG_DFL
