"""Multi-process start: JAX's own multi-controller runtime, nothing home-made.

`initialize` calls `jax.distributed.initialize` when the run is multi-process:
with explicit --coordinator_address/--num_processes/--process_id, with JAX's
standard environment variables, or by JAX's own cluster detection (Cloud TPU
pods, SLURM, ...), which also tells a plain single-process run apart.
`check_shared_workdir` then makes sure every process sees the same workdir,
since orbax checkpoints need shared storage.
"""

import os
import socket
import sys
import time
import uuid

import jax

from alexnet_jax.errors import DistributedError

# Environment that means "this process is one of several".
_JAX_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def _wait_for_coordinator(address: str, timeout_seconds: float):
  """Polls HOST:PORT until it accepts a connection; the reason if it never does.

  JAX aborts the whole process (a C++ fatal error, no Python exception) when
  it cannot reach the coordinator, so a non-coordinator process checks first.
  """
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_seconds
  while True:
    try:
      socket.create_connection((host.strip('[]'), int(port)), timeout=2).close()
      return None
    except (OSError, ValueError) as e:
      if time.monotonic() >= deadline or isinstance(e, ValueError):
        return f'{type(e).__name__}: {e}'
    time.sleep(0.5)


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               timeout_seconds: int = 300) -> bool:
  """Joins the multi-process job if there is one; returns whether it did."""
  explicit = any(v is not None for v in (coordinator_address, num_processes,
                                         process_id))
  if not (explicit or any(os.environ.get(k) for k in _JAX_ENV)):
    # Let JAX's own cluster detection (Cloud TPU VMs and GKE, SLURM, Open
    # MPI, ...) decide; with no cluster it says so at once, and the run is a
    # single process.
    try:
      jax.distributed.initialize(initialization_timeout=timeout_seconds)
      return True
    except ValueError as e:
      if 'coordinator_address' in str(e):  # No cluster found.
        return False
      raise DistributedError(f'multi-process start failed: {e}') from None
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  pid = process_id if process_id is not None else os.environ.get(
      'JAX_PROCESS_ID')
  if address and pid is not None and int(pid) != 0:
    reason = _wait_for_coordinator(address, timeout_seconds)
    if reason:
      raise DistributedError(
          f'process {pid} could not reach the coordinator at {address} within '
          f'{timeout_seconds} s ({reason}); start process 0 there first, or '
          'fix --coordinator_address')
  if pid is not None and int(pid) == 0 and num_processes:
    # If the others never arrive, JAX aborts after the timeout with a C++
    # error; this line says what it was waiting for.
    print(f'process 0: coordinator at {address}, waiting up to '
          f'{timeout_seconds} s for {num_processes} processes', file=sys.stderr,
          flush=True)
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=timeout_seconds)
  except Exception as e:  # XLA runtime errors carry no stable type.
    detail = ' '.join(str(e).split())[:300]
    raise DistributedError(
        f'process {process_id if process_id is not None else "?"} could not '
        f'join the job through the coordinator at {address or "(auto)"} '
        f'within {timeout_seconds} s: {detail}') from None
  return True


def check_shared_workdir(workdir: str):
  """Fails on every process unless all of them see one and the same workdir.

  Process 0 writes a fresh token into the workdir; every process reads it
  back. A process that cannot (local disks, a different --workdir) makes the
  whole job stop before anything else is written.
  """
  if jax.process_count() == 1:
    return
  from etils import epath  # orbax's path library: local, GCS, ...
  from jax.experimental import multihost_utils
  import numpy as np

  path = epath.Path(workdir) / '.process_check'
  token = uuid.uuid4().int % (2 ** 31) if jax.process_index() == 0 else 0
  token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(token))
  multihost_utils.sync_global_devices('alexnet_jax:workdir_written')
  try:
    seen = path.read_text().strip() == str(token)
  except OSError:
    seen = False
  all_seen = multihost_utils.process_allgather(np.int32(seen))
  if not np.all(all_seen):
    missing = [i for i, ok in enumerate(np.ravel(all_seen)) if not ok]
    raise DistributedError(
        f'workdir {workdir!r} is not shared by all processes: process(es) '
        f'{missing} cannot read what process 0 wrote there. Multi-host runs '
        'need a workdir on shared storage (a gs:// path or a shared '
        'filesystem), the same on every process')
