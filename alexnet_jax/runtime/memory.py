"""Will a stack of runs fit? Sized before anything of it is allocated.

A stack of N runs (`task/runs.py`) holds N train states and runs N steps'
activations at once; too many runs is an out-of-memory error deep in XLA
after minutes of set-up. So the stack's train program is compiled first
from the abstract state (`jax.eval_shape`: nothing allocated) and its
memory analysis (arguments + outputs - donated + temporaries, per device)
is added to the data the feed holds on the device, against the device's
memory (`memory_stats()['bytes_limit']` on GPUs and TPUs; on CPUs the
host's available memory shared by its devices; or `--config.memory_limit_gib`).
A stack that does not fit is refused with the largest N that does, by the
line through the program's bytes at a small stack and at N: a fixed part
and a part per run (states, gradients, activations, batches). Only the
train program is sized: evaluation runs one run at a time, a fraction of
it.
"""

import dataclasses
import math
import os
from typing import Optional

import jax
import numpy as np

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Budget:
  bytes: int
  source: str  # Where the figure comes from, for the refusal's line.


def budget(device, limit_gib: float = 0., held: int = 0) -> Optional[Budget]:
  """The bytes a stack may take on `device` (None: unknown, not sized).
  `held`: bytes of the stack's own already on the device (the feed's data),
  which a measure of free memory no longer counts."""
  if limit_gib:
    return Budget(int(limit_gib * GIB), '--config.memory_limit_gib')
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return Budget(int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
                  + held, f'free on {device.device_kind}')
  available = _host_available()
  if available is None:
    return None
  local = max(1, jax.local_device_count())
  return Budget(available // local + held, 'host memory available'
                + (f' / {local} devices' if local > 1 else ''))


def least(room: Budget) -> Budget:
  """The smallest budget over the processes: every process decides alike."""
  if jax.process_count() == 1:
    return room
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  every = multihost_utils.process_allgather(np.int64(room.bytes))
  return Budget(int(np.min(every)), room.source + ', the least over processes')


def _host_available() -> Optional[int]:
  """MemAvailable of /proc/meminfo (Linux), else the free pages, in bytes."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of arrays or abstract arrays with
  shardings (a replicated leaf whole, a split one its shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.shape
    sharding = getattr(leaf, 'sharding', None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def program_bytes(compiled) -> Optional[int]:
  """Peak bytes per device of a compiled program, by XLA's analysis."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes + m.temp_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class StackSize:
  runs: int
  program: int  # The train program's peak, the data passed to it excluded.
  resident: int  # The feed's arrays on the device.

  @property
  def total(self) -> int:
    return self.program + self.resident


def largest(small: StackSize, many: StackSize, limit: int,
            multiple: int = 1) -> int:
  """The most runs (a multiple of `multiple`) that fit in `limit` bytes, by
  the line through the programs of a small stack and of `many`: a fixed
  part and a part per run (states, gradients, activations, batches)."""
  if many.runs > small.runs:
    per_run = (many.program - small.program) / (many.runs - small.runs)
  else:
    per_run = many.program / many.runs
  per_run = max(per_run, 1.)
  fixed = max(0., small.program - per_run * small.runs)
  n = max(0, int((limit - small.resident - fixed) // per_run))
  return n - n % multiple


def refusal(size: StackSize, room: Budget, largest_fit,
            points: int = 1) -> Optional[str]:
  """The one line refusing a stack that does not fit, or None.
  `largest_fit()`: the most runs that fit (computed only when refusing);
  `points`: the sweep's points, each taking `--config.runs` of the runs."""
  if size.total <= room.bytes:
    return None
  n = largest_fit()
  per_point = n // points
  if per_point:
    fits = (f'the largest that fits: {per_point * points} runs, '
            f'--config.runs={per_point}'
            + (f' for each of the {points} sweep points' if points > 1
               else ''))
  else:
    fits = ('not even one run fits' if points == 1 else
            f'not even one run for each of the {points} sweep points fits')
  what = (f'{size.runs} runs' if points == 1 else
          f'{size.runs} runs ({size.runs // points} for each of {points} '
          'sweep points)')
  return (f'a stack of {what} needs about {_amount(size.total)} '
          f'per device (train step {_amount(size.program)}, data '
          f'{_amount(size.resident)}), more than the {_amount(room.bytes)} '
          f'of {room.source}; {fits} (or a smaller batch)')


def fits(size: StackSize, room: Budget, seconds: float) -> str:
  """The log's line for a stack that fits."""
  return (f'memory: the stack needs about {_amount(size.total)} per device '
          f'(train step {_amount(size.program)}, data '
          f'{_amount(size.resident)}) of the {_amount(room.bytes)} of '
          f'{room.source} (sized in {seconds:.1f} s)')


def _amount(n: int) -> str:
  return f'{n / GIB:.2f} GiB' if n >= GIB else f'{n / 2 ** 20:.1f} MiB'
