"""C-level signal handlers from Python, through sigaction(2) and ctypes.

Python's `signal` module only knows handlers that Python installed. Two
parts of this package must deal with handlers that native code installed:
preemption.py takes SIGTERM over from XLA's preemption notifier and still
calls it, and liveness.py puts a hook in front of SIGABRT, which JAX raises
when the coordinator of a multi-process job is gone.
"""

import ctypes
import signal
from typing import Callable, Optional

_SA_SIGINFO = 4  # Linux, every architecture JAX runs on.
_HOOKS = []  # ctypes callbacks must outlive their installation.


class _Sigaction(ctypes.Structure):
  """glibc's and musl's `struct sigaction` on Linux (x86-64, aarch64)."""
  _fields_ = [('handler', ctypes.c_void_p),
              ('mask', ctypes.c_ulong * (128 // ctypes.sizeof(ctypes.c_ulong))),
              ('flags', ctypes.c_int),
              ('restorer', ctypes.c_void_p)]


def _libc():
  return ctypes.CDLL(None, use_errno=True)


class CHandler:
  """A C signal handler as installed now, kept so that it can be called and
  put back after another handler has replaced it."""

  def __init__(self, signum: int, action: _Sigaction):
    self.signum, self._action = signum, action

  @classmethod
  def current(cls, signum: int) -> Optional['CHandler']:
    """The handler installed now, if it is a function (not default/ignore)."""
    action = _Sigaction()
    try:
      if _libc().sigaction(signum, None, ctypes.byref(action)) != 0:
        return None
    except (OSError, AttributeError):
      return None
    if action.handler in (None, signal.SIG_DFL, signal.SIG_IGN):
      return None
    return cls(signum, action)

  def call(self):
    """Does what the kernel would: calls the handler with the signal number."""
    if self._action.flags & _SA_SIGINFO:
      ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(
          self._action.handler)(self.signum, None, None)
    else:
      ctypes.CFUNCTYPE(None, ctypes.c_int)(self._action.handler)(self.signum)

  def reinstall(self):
    _libc().sigaction(self.signum, ctypes.byref(self._action), None)


def install_hook(signum: int, hook: Callable[[int], None]) -> bool:
  """Runs `hook(signum)` in the thread the signal is delivered to, at once.

  Unlike `signal.signal`, whose handlers wait for the main thread to come
  back to Python (never, if the process is aborting), this is a C handler
  (a ctypes callback that takes the GIL itself). For synchronous signals
  such as the SIGABRT of abort(), raised in the aborting thread.
  """
  callback = ctypes.CFUNCTYPE(None, ctypes.c_int)(hook)
  _HOOKS.append(callback)
  action = _Sigaction()
  action.handler = ctypes.cast(callback, ctypes.c_void_p).value
  try:
    return _libc().sigaction(signum, ctypes.byref(action), None) == 0
  except (OSError, AttributeError):
    return False
