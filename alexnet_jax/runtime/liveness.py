"""A lost process must not leave the others of a job waiting: the watchdog.

In a multi-process job a process can vanish without a word (`kill -9`, the
kernel's OOM killer, a host that reboots). The others then wait in the next
collective for an answer that never comes: NCCL waits forever, and JAX's own
heartbeat check (`jax.distributed.initialize(heartbeat_timeout_seconds=...)`)
ends them only with a C++ abort whose message names the process in XLA's
terms, among a stack trace.

So every process runs this watchdog: a daemon thread that writes a heartbeat
into JAX's coordination key-value store every `interval` seconds and reads
everybody's. A process whose heartbeat has not changed for `lost_after`
seconds is lost; one that wrote that it stopped on an error is lost after a
short grace (the others usually meet the same error and say so themselves).
This process then prints one line naming the lost process and exits with
status 75 (EX_TEMPFAIL: try again; rerunning the same command resumes) at
once, wherever its main thread is: it may be blocked in a collective that
will never finish. Nothing needs saving and nothing good is spoiled: orbax
commits a checkpoint only once every process has written its part, and an
uncommitted one is removed at the next start.

A process that ends normally (finished, stopped by a signal after saving)
writes 'done' first and is never flagged. `lost_after` is half of JAX's
heartbeat timeout (runtime/distributed.py), so this line comes before JAX's
abort.

When process 0 (the coordinator, which holds the store) dies, JAX's error
polling aborts the others at once (SIGABRT), before this thread could speak.
A hook on SIGABRT (`_on_abort`) then checks whether the coordinator still
accepts connections: if not, it says in one line that process 0 was lost and
exits 75 too; otherwise the abort goes on as it would have (a genuine fatal
error keeps its core dump and Python's traceback dump). jaxlib's own hook for
replacing that abort, `missed_heartbeat_callback`, cannot be used from
Python in 0.10: the binding fails to convert the status it passes, and the
process terminates.
"""

import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Optional

from alexnet_jax.runtime import csignals

EXIT_LOST = 75
PREFIX = 'alexnet_jax/alive/'
# How long a process that said it stopped on an error may stay quiet about it
# before the others say so for it.
EXITED_GRACE = 10.0


def _exit_lost(line: str):
  """The verdict: one line on stderr, then exit at once (see the docstring)."""
  os.write(2, f'{line}\n'.encode())
  os._exit(EXIT_LOST)  # pylint: disable=protected-access


class Watchdog:
  """Heartbeats through a key-value store; a verdict when a process is lost.

  `store` has JAX's distributed-client methods `key_value_set(key, value,
  allow_overwrite=True)` and `key_value_dir_get(prefix)`; tests pass a dict.
  """

  def __init__(self, store, process_id: int, num_processes: int,
               lost_after: float, interval: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic,
               on_lost: Callable[[str], None] = _exit_lost):
    self.store, self.me, self.n = store, process_id, num_processes
    self.lost_after = float(lost_after)
    self.interval = interval or max(0.5, min(5.0, self.lost_after / 10))
    self.clock, self.on_lost = clock, on_lost
    self._beat = 0
    self._seen = {}  # process -> (its last value, when that value appeared)
    self._store_failing = None  # (since when, the error)
    self._lock = threading.Lock()
    self._stopped = threading.Event()
    self._thread = None

  def _write(self, value: str, final: bool = False) -> bool:
    with self._lock:  # A beat never overwrites a final word.
      if self._stopped.is_set() and not final:
        return False
      if final:
        self._stopped.set()
      self.store.key_value_set(f'{PREFIX}{self.me}', value,
                               allow_overwrite=True)
      return True

  def judging(self) -> bool:
    return not self._stopped.is_set()

  def consequence(self) -> str:
    """What a verdict line goes on to say."""
    return (f'; process {self.me} stops too (exit status {EXIT_LOST}). The '
            'checkpoints in the workdir are intact: rerun the same command '
            'to resume from the last one')

  def poll(self) -> Optional[str]:
    """One heartbeat and one look at the others: the verdict line, if any."""
    now = self.clock()
    self._beat += 1
    try:
      if not self._write(f'beat {self._beat}'):
        return None
      values = {key.rsplit('/', 1)[-1]: value for key, value in
                self.store.key_value_dir_get(PREFIX)}
    except Exception as e:  # pylint: disable=broad-except
      since, _ = self._store_failing or (now, None)
      self._store_failing = (since, e)
      if now - since >= self.lost_after:
        return (f'error: lost contact with the coordinator (process 0 of '
                f'{self.n}, which holds the job\'s heartbeats) for '
                f'{now - since:.0f} s ({type(e).__name__}: '
                f'{" ".join(str(e).split())[:120]})' + self.consequence())
      return None
    self._store_failing = None
    for k in range(self.n):
      if k != self.me:
        verdict = self._judge(k, values.get(str(k)), now)
        if verdict:
          return verdict
    return None

  def _judge(self, k: int, value: Optional[str], now: float) -> Optional[str]:
    last = self._seen.get(k)
    if last is None or last[0] != value:
      self._seen[k] = (value, now)  # News: alive (or just said why not).
      return None
    age = now - last[1]
    if value == 'done':
      return None
    if value is not None and value.startswith('exited') and (
        age >= EXITED_GRACE):
      why = value[len('exited'):].strip(' :') or 'on an error'
      return (f'error: process {k} of {self.n} stopped ({why}) while this '
              'one was still running; see its output' + self.consequence())
    if age >= self.lost_after:
      return (f'error: process {k} of {self.n} was lost: no sign of life for '
              f'{age:.0f} s (killed, crashed, or its host or network '
              'failed)' + self.consequence())
    return None

  def start(self):
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name='alexnet_jax-liveness')
    self._thread.start()
    return self

  def _run(self):
    while not self._stopped.wait(self.interval):
      verdict = self.poll()
      if verdict and not self._stopped.is_set():
        self.on_lost(verdict)
        return

  def finish(self, note: str = 'done'):
    """Stops judging and leaves `note` for the others: 'done' (never
    flagged) or 'exited: why' (flagged after EXITED_GRACE)."""
    try:
      self._write(note, final=True)
    except Exception:  # pylint: disable=broad-except
      pass  # The coordinator is gone; JAX itself ends the others.


_current: Optional[Watchdog] = None
# The status of an exit under way (exit_now): an abort meanwhile exits with it.
_exit_status: Optional[int] = None


def reachable(address: str, timeout: float = 2.0) -> bool:
  """Whether HOST:PORT (or [IPv6]:PORT) accepts a TCP connection."""
  host, _, port = address.rpartition(':')
  try:
    socket.create_connection((host.strip('[]'), int(port)),
                             timeout=timeout).close()
    return True
  except (OSError, ValueError):
    return False


class _AbortHook:
  """On SIGABRT: the coordinator gone means process 0 was lost (see the
  module docstring); anything else aborts as before."""

  def __init__(self, watchdog: Watchdog, coordinator: str):
    self.watchdog, self.coordinator = watchdog, coordinator
    self.previous = csignals.CHandler.current(signal.SIGABRT)  # faulthandler's

  def __call__(self, signum):
    if _exit_status is not None:  # Exiting on purpose; process 0 went first.
      os._exit(_exit_status)  # pylint: disable=protected-access
    if self.watchdog.judging() and not reachable(self.coordinator):
      _exit_lost(
          f'error: process 0 of {self.watchdog.n} (the coordinator at '
          f'{self.coordinator}) was lost: it accepts no connections '
          '(killed, crashed, or its host or network failed)' +
          self.watchdog.consequence())
    if self.previous is not None:
      self.previous.call()
    # Returning lets abort() finish the process as it would have.


def start(lost_after: float) -> Optional[Watchdog]:
  """Starts the watchdog of this process of the multi-process job JAX joined.

  The store is JAX's distributed client (`jax._src.distributed`, the module
  orbax's multi-host code also reads); without one there is no watchdog and
  JAX's own heartbeat check remains.
  """
  global _current
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  state = jax_distributed.global_state
  client = getattr(state, 'client', None)
  if client is None or not hasattr(client, 'key_value_dir_get'):
    print('warning: no lost-process watchdog (this JAX has no distributed '
          'key-value store); JAX\'s own heartbeat check remains',
          file=sys.stderr, flush=True)
    return None
  _current = Watchdog(client, jax.process_index(), jax.process_count(),
                      lost_after).start()
  coordinator = getattr(state, 'coordinator_address', None)
  if coordinator and jax.process_index() != 0:
    csignals.install_hook(signal.SIGABRT, _AbortHook(_current, coordinator))
  return _current


def active() -> bool:
  return _current is not None


def finish(note: str = 'done'):
  if _current is not None:
    _current.finish(note)


def exit_now(status: int, note: str, wait: float = 1.0):
  """Exits this process at once with `status`, having left `note` for the
  others (waiting at most `wait` seconds: the coordinator may be gone). When
  every process of a job is told to exit at once, process 0 may go first;
  JAX then aborts the others, and the SIGABRT hook exits with `status` too."""
  global _exit_status
  _exit_status = status
  if _current is not None:
    writer = threading.Thread(target=_current.finish, args=(note,),
                              daemon=True)
    writer.start()
    writer.join(wait)
  os._exit(status)  # pylint: disable=protected-access


def await_verdict():
  """Waits long enough for the watchdog to name a lost process (it then
  exits this process); returns if none was lost."""
  if _current is not None:
    time.sleep(max(_current.lost_after, EXITED_GRACE) +
               2 * _current.interval + 1)
