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

Python runs a signal's handler when the main thread is back in Python, so
"at once" means at the end of the current XLA call: within a step.
"""

import os
import signal
from typing import Callable, Optional

import jax

from alexnet_jax.runtime import liveness
from alexnet_jax.runtime.csignals import CHandler

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Installed for the duration of a run (a context manager)."""

  def __init__(self, reached_preemption: Callable[[int], bool]):
    """`reached_preemption(step)`: the multi-process agreement (orbax's)."""
    self._reached_preemption = reached_preemption
    self.signum: Optional[int] = None
    self._previous = {}
    self._multi = False
    self._notifier: Optional[CHandler] = None

  def __enter__(self):
    self._multi = jax.process_count() > 1
    if self._multi:
      self._notifier = CHandler.current(signal.SIGTERM)
    for sig in _SIGNALS:
      if self._multi and sig == signal.SIGTERM and self._notifier is None:
        continue  # No notifier to call: leave SIGTERM to whatever owns it.
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      if sig == signal.SIGTERM and self._notifier is not None:
        self._notifier.reinstall()  # XLA's, as it was.
      else:
        signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:
      os.write(2, f'\n{name} again: exiting at once, without saving '
                  '(the last checkpoint is intact)\n'.encode())
      liveness.finish(f'exited: {name} again, at once')
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum
    os.write(2, f'\n{name} received: finishing the current step, saving a '
                f'checkpoint, then exiting ({name} again exits at once)\n'
                .encode())
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
