"""SIGTERM / SIGINT: finish the step, save it, say so, exit; a second one exits now.

Several processes must save the same step, so there the decision is orbax's
`reached_preemption` (JAX's preemption sync point): after
`jax.distributed.initialize`, XLA's preemption notifier owns SIGTERM, and
every process reaches the same answer at the same step. SIGINT (Ctrl-C) is
forwarded to that notifier as a SIGTERM, so it agrees across processes too.
One process is hand-written: Python handlers set a flag that the loop reads
after each step, because JAX's preemption notifier exists only after
`jax.distributed.initialize` (orbax's `reached_preemption` is always False
without it).
"""

import os
import signal
from typing import Callable, Optional

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Installed for the duration of a run (a context manager)."""

  def __init__(self, reached_preemption: Callable[[int], bool]):
    """`reached_preemption(step)`: the multi-process agreement (orbax's)."""
    self._reached_preemption = reached_preemption
    self.signum: Optional[int] = None
    self._previous = {}
    self._multi = False

  def __enter__(self):
    self._multi = jax.process_count() > 1
    for sig in _SIGNALS:
      if self._multi and sig == signal.SIGTERM:
        continue  # XLA's preemption notifier owns it.
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:
      os.write(2, f'\n{name} again: exiting at once, without saving '
                  '(the last checkpoint is intact)\n'.encode())
      os._exit(128 + signum)
    self.signum = signum
    os.write(2, f'\n{name} received: finishing the current step, saving a '
                f'checkpoint, then exiting ({name} again exits at once)\n'
                .encode())
    if self._multi:  # Let JAX's preemption sync point decide the step.
      self.signum = signal.SIGTERM
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
