"""Multi-process start: JAX's own multi-controller runtime, nothing home-made.

`plan_start` decides, from flags and environment alone, how this process
starts: by hand (--coordinator_address/--num_processes/--process_id, or the
JAX_* variables, which JAX itself only partly reads), under SLURM (JAX's
reading of srun's variables, with every local GPU in use), or by JAX's own
cluster detection (Cloud TPU, Open MPI, ...), which also tells a plain
single-process run apart. A start by hand inside srun gets the GPUs the SLURM
start would give it, and never JAX's detection: a detector that half-applies
(JAX's SLURM one pins one GPU per task; its Kubernetes one needs a package
this project does not install) would contradict what the user said.
`initialize` then calls `jax.distributed.initialize` with the heartbeat and
shutdown timeouts set deliberately (they bound how long the others wait for a
lost process: runtime/liveness.py), turns every way it can fail into one
DistributedError line, and starts the lost-process watchdog.
`check_shared_workdir` then makes sure every process sees the same workdir,
since orbax checkpoints need shared storage.
"""

import dataclasses
import inspect
import os
import re
import socket
import sys
import time
from typing import Mapping, Optional, Sequence
import uuid

import jax

from alexnet_jax.errors import DistributedError
from alexnet_jax.runtime import liveness

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
  host, _, port = address.rpartition(':')
  if not host.strip('[]') or not port.isdigit():
    # No host: ':8476' is what a Kubernetes pod gets from
    # $(COORDINATOR_HOST):8476 when no coordinator annotation was set.
    raise DistributedError(
        f'coordinator address {address!r} is not HOST:PORT')
  # Inside srun the GPUs follow the SLURM rule; elsewhere every visible GPU
  # (or JAX_LOCAL_DEVICE_IDS, which JAX reads itself).
  local = _slurm_local_devices(environ) if _in_srun(environ) else None
  return Start('explicit', address, num_processes, process_id, local)


def _visible_gpus(environ) -> Optional[list]:
  visible = environ.get('CUDA_VISIBLE_DEVICES')
  if visible is None:
    return None
  return [i for i, d in enumerate(visible.split(',')) if d.strip()]


def _in_srun(environ) -> bool:
  return all(k in environ for k in _SLURM_ENV)


def _slurm_local_devices(environ) -> Optional[list]:
  """The GPUs a task of an srun step drives: JAX's SLURM rule (task i on a
  node drives GPU i), made to use every GPU.

  One task per node drives all of that node's GPUs (JAX alone would give
  each such task only GPU 0: jax#16788); a task that SLURM bound to a single
  GPU (--gpus-per-task) drives that one; JAX_LOCAL_DEVICE_IDS, the user's
  choice, is left for JAX to read (None).
  """
  ntasks = _env_int(environ, 'SLURM_NTASKS', 1) or 1
  nodes = (_env_int(environ, 'SLURM_STEP_NUM_NODES', 1) or
           _env_int(environ, 'SLURM_NNODES', 1) or 1)
  gpus = _visible_gpus(environ)
  if environ.get('JAX_LOCAL_DEVICE_IDS'):
    return None
  if ntasks == nodes:
    return gpus if gpus else []
  if gpus is not None and len(gpus) == 1:
    return [0]
  return [_env_int(environ, 'SLURM_LOCALID', 0)]


def _slurm(environ) -> Start:
  """JAX's SLURM mode with `_slurm_local_devices`; one task in all
  (`srun --pty python ...`) is a plain single process on every local GPU."""
  ntasks = _env_int(environ, 'SLURM_NTASKS', 1)
  if ntasks == 1:
    return Start('single')
  return Start('slurm', slurm_coordinator(environ), ntasks,
               _env_int(environ, 'SLURM_PROCID', 0),
               _slurm_local_devices(environ))


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
  if _in_srun(environ):
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


@dataclasses.dataclass(frozen=True)
class Timeouts:
  """How long a process waits, in seconds; the defaults are the documented ones.

  `start`: for every process to reach the coordinator. `heartbeat`: JAX's
  heartbeat timeout, after which JAX itself ends every process of a job that
  lost one; the watchdog (runtime/liveness.py) declares a silent process lost
  after half of it, so that its one line comes first. `shutdown`: how long a
  process that finished waits at exit for the others to finish too (process
  0 writes the final metrics and curves after the others are done).
  """
  start: int = 300
  heartbeat: int = 60
  shutdown: int = 300

  def lost_after(self) -> float:
    return self.heartbeat / 2


def timeout_kwargs(timeouts: Timeouts, initialize_fn=None) -> dict:
  """`jax.distributed.initialize`'s timeout arguments, for the JAX installed.

  JAX 0.10 and 0.11 take all three; one that lacks one is not given it (it
  keeps JAX's default) rather than failing to start.
  """
  params = inspect.signature(
      initialize_fn or jax.distributed.initialize).parameters
  wanted = {'initialization_timeout': timeouts.start,
            'heartbeat_timeout_seconds': timeouts.heartbeat,
            'shutdown_timeout_seconds': timeouts.shutdown}
  return {k: v for k, v in wanted.items() if k in params}


def _auto(timeouts: Timeouts) -> bool:
  """JAX's cluster detection; no cluster found means a single process."""
  try:
    jax.distributed.initialize(**timeout_kwargs(timeouts))
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


def _join(start: Start, timeouts: Timeouts):
  address, pid, n = start.coordinator_address, start.process_id, start.num_processes
  wait = timeouts.start
  if pid != 0:
    reason = _wait_for_coordinator(address, wait)
    if reason:
      raise DistributedError(
          f'process {pid} could not reach the coordinator at {address} within '
          f'{wait} s ({reason}); start process 0 there first, or fix '
          '--coordinator_address')
  else:
    # If the others never arrive, JAX aborts after the timeout with a C++
    # error; this line says what it was waiting for.
    print(f'process 0: coordinator at {address} ({start.how} start), waiting '
          f'up to {wait} s for {n} processes', file=sys.stderr, flush=True)
  try:
    # Everything is given, so no detector may second-guess it.
    jax.distributed.initialize(
        coordinator_address=address, num_processes=n, process_id=pid,
        local_device_ids=start.local_device_ids,
        cluster_detection_method='deactivate', **timeout_kwargs(timeouts))
  except Exception as e:  # XLA runtime errors carry no stable type.
    raise DistributedError(
        f'process {pid} could not join the job through the coordinator at '
        f'{address} within {wait} s: {_one_line(e)}') from None


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               timeouts: Timeouts = Timeouts()) -> bool:
  """Joins the multi-process job if there is one; returns whether it did.

  A joined process also starts the lost-process watchdog.
  """
  start = plan_start(coordinator_address, num_processes, process_id)
  if start.how == 'single':
    return False
  if start.how == 'auto':
    if not _auto(timeouts):
      return False
  else:
    _join(start, timeouts)
  if jax.process_count() > 1:
    liveness.start(timeouts.lost_after())
  return True


def check_shared_workdir(workdir: str):
  """Fails on every process unless all of them see one and the same workdir.

  Process 0 writes a fresh token into the workdir; every process reads it
  back. A process that cannot (local disks, a different --workdir) makes the
  whole job stop before anything else is written.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  import numpy as np
  from alexnet_jax.runtime.layout import Layout

  path = Layout.of(workdir).process_check
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
