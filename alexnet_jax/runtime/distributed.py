"""Multi-process start: JAX's own multi-controller runtime, nothing home-made.

`plan_start` decides, from flags and environment alone, how this process
starts: by hand (--coordinator_address/--num_processes/--process_id, or the
JAX_* variables, which JAX itself only partly reads), under SLURM (JAX's
reading of srun's variables, with every local GPU in use), or by JAX's own
cluster detection (Cloud TPU, Open MPI, ...), which also tells a plain
single-process run apart. `initialize` then calls `jax.distributed.initialize`
and turns every way it can fail into one DistributedError line.
`check_shared_workdir` then makes sure every process sees the same workdir,
since orbax checkpoints need shared storage.
"""

import dataclasses
import os
import re
import socket
import sys
import time
from typing import Mapping, Optional, Sequence
import uuid

import jax

from alexnet_jax.errors import DistributedError

# The variables the README documents for a hand-made start. JAX itself reads
# only the first (and JAX_LOCAL_DEVICE_IDS), so the other two are read here.
_JAX_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
# What srun sets for every task of a job step (JAX's own SLURM detection).
_SLURM_ENV = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
              'SLURM_PROCID', 'SLURM_LOCALID')
_HOW_BY_HAND = ('pass --coordinator_address=HOST:PORT --num_processes=N '
                '--process_id=I (or set JAX_COORDINATOR_ADDRESS, '
                'JAX_NUM_PROCESSES, JAX_PROCESS_ID); --num_processes=1 runs '
                'one process without cluster detection')


@dataclasses.dataclass(frozen=True)
class Start:
  """How this process starts: alone, or as one of `num_processes`.

  `how` is 'single', 'explicit' (flags or JAX_* variables), 'slurm' or
  'auto' (JAX's own detection decides: Cloud TPU, Open MPI, Kubernetes...).
  `local_device_ids` None lets JAX decide; [] means every visible device.
  """
  how: str
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Sequence[int]] = None


def _env_int(environ, name, minimum):
  value = environ.get(name)
  if value is None or value == '':
    return None
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < minimum:
    raise DistributedError(
        f'{name}={value!r} is not an integer >= {minimum}')
  return number


def _explicit(coordinator_address, num_processes, process_id, environ):
  address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS') or None
  if num_processes is None:
    num_processes = _env_int(environ, 'JAX_NUM_PROCESSES', 1)
  if process_id is None:
    process_id = _env_int(environ, 'JAX_PROCESS_ID', 0)
  if num_processes == 1 and process_id in (None, 0):
    return Start('single')
  missing = [name for name, value in (
      ('--coordinator_address (JAX_COORDINATOR_ADDRESS)', address),
      ('--num_processes (JAX_NUM_PROCESSES)', num_processes),
      ('--process_id (JAX_PROCESS_ID)', process_id)) if value is None]
  if missing:
    raise DistributedError(
        'a multi-process start needs all three of --coordinator_address, '
        '--num_processes and --process_id (or the JAX_* variables); missing: '
        + ', '.join(missing))
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise DistributedError(
        f'process id {process_id} is not in 0..{num_processes - 1} '
        f'(--num_processes={num_processes})')
  if address.count(':') < 1 or not address.rpartition(':')[2].isdigit():
    raise DistributedError(
        f'coordinator address {address!r} is not HOST:PORT')
  return Start('explicit', address, num_processes, process_id)


def _visible_gpus(environ) -> Optional[list]:
  visible = environ.get('CUDA_VISIBLE_DEVICES')
  if visible is None:
    return None
  return [i for i, d in enumerate(visible.split(',')) if d.strip()]


def _slurm(environ) -> Start:
  """JAX's SLURM mode (task i on a node drives GPU i), made to use every GPU.

  One task in all (`srun --pty python ...`) is a plain single process on
  every local GPU; one task per node drives all of that node's GPUs
  (JAX alone would give each such task only GPU 0: jax#16788); a task that
  SLURM bound to a single GPU (--gpus-per-task) drives that one.
  """
  ntasks = _env_int(environ, 'SLURM_NTASKS', 1)
  if ntasks == 1:
    return Start('single')
  nodes = (_env_int(environ, 'SLURM_STEP_NUM_NODES', 1) or
           _env_int(environ, 'SLURM_NNODES', 1) or 1)
  gpus = _visible_gpus(environ)
  if environ.get('JAX_LOCAL_DEVICE_IDS'):
    local = None  # The user's choice; JAX reads it.
  elif ntasks == nodes:
    local = gpus if gpus else []
  elif gpus is not None and len(gpus) == 1:
    local = [0]
  else:
    local = [_env_int(environ, 'SLURM_LOCALID', 0)]
  return Start('slurm', slurm_coordinator(environ), ntasks,
               _env_int(environ, 'SLURM_PROCID', 0), local)


def slurm_coordinator(environ) -> str:
  """JAX's SLURM rule: the step's first node, a port from the job id.

  The same address JAX's own SLURM detection computes (tested against it),
  so processes started either way meet.
  """
  nodes = environ['SLURM_STEP_NODELIST']
  port = environ.get('JAX_COORDINATOR_PORT') or str(
      int(environ['SLURM_JOB_ID']) % 2 ** 12 + 65536 - 2 ** 12)
  # 'node001', 'node001,host2', 'node[001-015],host2', 'node[001,007-015]'.
  head = re.match(r'[^,\[]*', nodes).group(0)
  rest = nodes[len(head):]
  if rest.startswith('['):
    head += re.match(r'[^,\-\]]*', rest[1:]).group(0)
  return f'{head}:{port}'


def plan_start(coordinator_address=None, num_processes=None, process_id=None,
               environ: Mapping[str, str] = os.environ) -> Start:
  """Decides how this process starts, from flags and environment only."""
  if (coordinator_address is not None or num_processes is not None or
      process_id is not None or any(environ.get(k) for k in _JAX_ENV)):
    return _explicit(coordinator_address, num_processes, process_id, environ)
  if all(k in environ for k in _SLURM_ENV):
    return _slurm(environ)
  return Start('auto')


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


def _one_line(e: BaseException) -> str:
  return ' '.join(f'{type(e).__name__}: {e}'.split())[:300]


def _auto(timeout_seconds: int) -> bool:
  """JAX's cluster detection; no cluster found means a single process."""
  try:
    jax.distributed.initialize(initialization_timeout=timeout_seconds)
    return True
  except ValueError as e:
    if 'coordinator_address' in str(e):  # No cluster found.
      return False
    detail = _one_line(e)
  except Exception as e:  # pylint: disable=broad-except
    # A metadata server that does not answer, a malformed launcher
    # environment, a timeout: XLA's errors carry no stable type.
    detail = _one_line(e)
  raise DistributedError(
      f'JAX found a cluster environment but could not start from it '
      f'({detail}); to start by hand, {_HOW_BY_HAND}')


def _join(start: Start, timeout_seconds: int):
  address, pid, n = start.coordinator_address, start.process_id, start.num_processes
  if pid != 0:
    reason = _wait_for_coordinator(address, timeout_seconds)
    if reason:
      raise DistributedError(
          f'process {pid} could not reach the coordinator at {address} within '
          f'{timeout_seconds} s ({reason}); start process 0 there first, or '
          'fix --coordinator_address')
  else:
    # If the others never arrive, JAX aborts after the timeout with a C++
    # error; this line says what it was waiting for.
    print(f'process 0: coordinator at {address} ({start.how} start), waiting '
          f'up to {timeout_seconds} s for {n} processes', file=sys.stderr,
          flush=True)
  try:
    jax.distributed.initialize(
        coordinator_address=address, num_processes=n, process_id=pid,
        local_device_ids=start.local_device_ids,
        initialization_timeout=timeout_seconds)
  except Exception as e:  # XLA runtime errors carry no stable type.
    raise DistributedError(
        f'process {pid} could not join the job through the coordinator at '
        f'{address} within {timeout_seconds} s: {_one_line(e)}') from None


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               timeout_seconds: int = 300) -> bool:
  """Joins the multi-process job if there is one; returns whether it did."""
  start = plan_start(coordinator_address, num_processes, process_id)
  if start.how == 'single':
    return False
  if start.how == 'auto':
    return _auto(timeout_seconds)
  _join(start, timeout_seconds)
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
