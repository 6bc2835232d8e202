"""SIGTERM / SIGINT: finish the step, save it, say so, exit; a second one exits now.

Several processes must save the same step, so there the decision is orbax's
`reached_preemption` (JAX's preemption sync point): after
`jax.distributed.initialize`, XLA's preemption notifier has a C signal
handler on SIGTERM that sets a flag, and every process reaches the same
answer at the same step. That handler takes every SIGTERM and only ever sets
the flag, so a second SIGTERM would be swallowed. Hence, with several
processes, this module takes SIGTERM over with a Python handler that keeps
XLA's handler (read with sigaction(2) through ctypes: runtime/csignals.py)
and calls it on the first signal, which is all XLA's handler would have
done; the second signal then exits at once, as with one process. SIGINT
(Ctrl-C) goes the same way.
One process is hand-written: Python handlers set a flag that the loop reads
after each step, because JAX's preemption notifier exists only after
`jax.distributed.initialize` (orbax's `reached_preemption` is always False
without it).

Python runs a signal's handler only once the main thread is back in Python:
after the current XLA call, which in a multi-process job may be a collective
with a process that has already exited. So the second signal is not left to
the handler: `signal.set_wakeup_fd` makes Python's C-level handler write each
signal's number to a pipe the moment it arrives, and a daemon thread that
reads the pipe (`_Arrivals`) says at once that the signal came and, on the
second, exits the process at once, in the middle of a step if need be
(runtime/liveness.py `exit_now`); the handler itself only records the stop.
"""

import os
import signal
import threading
from typing import Callable, Optional

import jax

from alexnet_jax.runtime import liveness
from alexnet_jax.runtime.csignals import CHandler

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_watching = False  # Whether an _Arrivals holds the wake-up fd.


def _forget_in_a_forked_child():
  """A forked child (a data worker) inherits the wake-up fd: its signals
  would count as this process's."""
  if _watching:
    try:
      signal.set_wakeup_fd(-1)
    except ValueError:  # Forked from a thread that is not its main thread.
      pass


os.register_at_fork(after_in_child=_forget_in_a_forked_child)


class _Arrivals:
  """Sees SIGTERM/SIGINT as they arrive, whatever the main thread is doing:
  says so on the first, exits at once on the second (from its own thread)."""

  def __init__(self):
    self._count = 0
    self._previous_fd = None
    self._read_fd = self._write_fd = None
    self._thread = None

  def start(self) -> '_Arrivals':
    global _watching
    self._read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)  # Python's handler must not block.
    self._previous_fd = signal.set_wakeup_fd(self._write_fd,
                                             warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name='alexnet_jax-signals')
    self._thread.start()
    _watching = True
    return self

  def _run(self):
    while True:
      try:
        data = os.read(self._read_fd, 64)
      except OSError:
        return
      if not data:
        return  # stop() closed the pipe.
      for signum in data:
        if signum in _SIGNALS:
          self._count += 1
          if self._count == 1:
            _say_received(signum)
          else:
            _exit_at_once(signum)

  def stop(self):
    """Restores the previous wake-up fd; the thread reads what is left."""
    global _watching
    _watching = False
    signal.set_wakeup_fd(self._previous_fd)
    os.close(self._write_fd)
    self._thread.join(timeout=5)
    os.close(self._read_fd)


def _say_received(signum: int):
  name = signal.Signals(signum).name
  os.write(2, f'\n{name} received: finishing the current step, saving a '
              f'checkpoint, then exiting ({name} again exits at once)\n'
              .encode())


_exiting = threading.Lock()


def _exit_at_once(signum: int):
  """The second signal: say so, tell the other processes, exit 128 + signum."""
  with _exiting:  # The handler and _Arrivals may both get here.
    name = signal.Signals(signum).name
    os.write(2, f'\n{name} again: exiting at once, without saving '
                '(the last checkpoint is intact)\n'.encode())
    liveness.exit_now(128 + signum, f'exited: {name} again, at once')


class StopRequest:
  """Installed for the duration of a run (a context manager)."""

  def __init__(self, reached_preemption: Callable[[int], bool]):
    """`reached_preemption(step)`: the multi-process agreement (orbax's)."""
    self._reached_preemption = reached_preemption
    self.signum: Optional[int] = None
    self._previous = {}
    self._multi = False
    self._notifier: Optional[CHandler] = None
    self._arrivals: Optional[_Arrivals] = None

  def __enter__(self):
    self._multi = jax.process_count() > 1
    if self._multi:
      self._notifier = CHandler.current(signal.SIGTERM)
    for sig in _SIGNALS:
      if self._multi and sig == signal.SIGTERM and self._notifier is None:
        continue  # No notifier to call: leave SIGTERM to whatever owns it.
      self._previous[sig] = signal.signal(sig, self._handle)
    self._arrivals = _Arrivals().start()
    return self

  def __exit__(self, *exc):
    self._arrivals.stop()
    for sig, handler in self._previous.items():
      if sig == signal.SIGTERM and self._notifier is not None:
        self._notifier.reinstall()  # XLA's, as it was.
      else:
        signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame):
    del frame  # _Arrivals has said so already (and exits on a second one).
    if self.signum is not None:
      _exit_at_once(signum)
    self.signum = signum
    if self._multi:  # Let JAX's preemption sync point decide the step.
      self.signum = signal.SIGTERM
      if self._notifier is not None:
        self._notifier.call()
      else:
        os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Called by every process after every step (a collective when multi)."""
    if not self._multi:
      return self.signum is not None
    if self._reached_preemption(step):
      self.signum = self.signum or signal.SIGTERM
      return True
    return False


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name
