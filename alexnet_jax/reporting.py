"""What a run tells people: console progress, metrics.jsonl, TensorBoard, curves.png.

Only process 0 writes. Every workdir path goes through `etils.epath`, so the
workdir may be local or `gs://...`. `metrics.jsonl` is rewritten whole
(temporary file, then rename) when records were added, since object stores
cannot append; on resume the records after the restored step are dropped, so
the log never holds what the restored state did not do. TensorBoard goes
through clu's metric writers and `curves.png` through matplotlib when they are
installed; without them (a bare accelerator image) the run keeps
metrics.jsonl and the console, and says so once.
"""

import json
import math
import time
from typing import Optional

import jax
from etils import epath

from alexnet_jax.errors import WorkdirError

# metrics.jsonl is rewritten at most this often between forced flushes
# (evaluations, checkpoints, the end of the run).
_FLUSH_SECONDS = 30.


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def read_records(workdir) -> list:
  """The records of WORKDIR/metrics.jsonl; a line torn by kill -9 is skipped."""
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def write_text_atomically(path: epath.Path, text: str):
  """Readers see the old file or the new one, never half of it."""
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_text(text)
  tmp.replace(path)


def _workdir_error(workdir, what: str, e: Exception) -> WorkdirError:
  return WorkdirError(
      f'cannot {what} in workdir {workdir} ({type(e).__name__}: {e}); free '
      'space or fix permissions, then rerun the same command to resume from '
      'the last checkpoint')


def prepare_workdir(workdir: str):
  """Creates the workdir and proves it writable, before anything depends on it.

  Process 0 writes and removes a probe file, so a read-only or full disk is
  one clear line now rather than a library's error later.
  """
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / '.write_probe'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise _workdir_error(path, 'write', e) from None


class Reporter:

  def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.workdir = epath.Path(workdir)
    self.jsonl_path = self.workdir / 'metrics.jsonl'
    self._tb = None
    self._plot = None
    self._dirty = False
    self._last_flush = time.monotonic()
    self._clock = None  # (time, step) when timing started, for the ETA.
    if not self.enabled:
      return
    # On resume, drop what the interrupted run did after its checkpoint.
    old = read_records(self.workdir)
    self._records = [r for r in old if r.get('step', 0) <= resume_step]
    self._dirty = len(self._records) != len(old)
    try:
      from alexnet_jax import tf_cpu  # pylint: disable=g-import-not-at-top
      tf_cpu.tensorflow()  # Before clu pulls TensorFlow in: CPU only.
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._tb = metric_writers.AsyncWriter(
          metric_writers.SummaryWriter(str(self.workdir)))
    except ImportError as e:
      self.log(f'TensorBoard disabled ({e}); metrics go to {self.jsonl_path}')
    try:
      from alexnet_jax import plot  # Lazy: matplotlib.
      self._plot = plot
    except ImportError as e:
      self.log(f'curves.png disabled ({e}); `pip install matplotlib` for it')

  def _guard(self, fn, what: str):
    """OS errors on the workdir (full disk, permissions) as one clear line."""
    try:
      return fn()
    except OSError as e:
      raise _workdir_error(self.workdir, what, e) from None

  def log(self, message: str):
    if self.enabled:
      print(message, flush=True)

  def write(self, step: int, split: str, **metrics):
    """One metrics.jsonl record (replacing one of the same step and split)
    and TensorBoard scalars `split/name`."""
    if not self.enabled:
      return
    record = {'step': step, 'split': split}
    record.update({k: (float(v) if v is not None else None)
                   for k, v in metrics.items()})
    self._records = [r for r in self._records
                     if (r.get('step'), r.get('split')) != (step, split)]
    self._records.append(record)
    self._dirty = True
    if self._tb is not None:
      self._tb.write_scalars(step, {
          f'{split}/{k}': float(v) for k, v in metrics.items()
          if k != 'epoch' and v is not None and math.isfinite(float(v))})

  def flush(self, force: bool = False):
    """Writes what was added: always when forced, else at most every 30 s."""
    if not (self.enabled and self._dirty):
      return
    if not force and time.monotonic() - self._last_flush < _FLUSH_SECONDS:
      return
    text = ''.join(json.dumps(r) + '\n' for r in self._records)
    self._guard(lambda: write_text_atomically(self.jsonl_path, text),
                f'write {self.jsonl_path.name}')
    if self._tb is not None:
      self._guard(self._tb.flush, 'write TensorBoard events')
    self._dirty = False
    self._last_flush = time.monotonic()

  def write_curves(self):
    """WORKDIR/curves.png from metrics.jsonl (after a forced flush)."""
    if self.enabled and self._plot is not None:
      self.flush(force=True)
      self._guard(lambda: self._plot.write_run_curves(str(self.workdir)),
                  'write curves.png')

  def write_json(self, name: str, value):
    if self.enabled:
      self._guard(lambda: write_text_atomically(
          self.workdir / name, json.dumps(value, indent=2) + '\n'),
                  f'write {name}')

  # --- Console -----------------------------------------------------------------

  def start_clock(self, step: int):
    """Starts the ETA's clock (after compilation, which it should not count)."""
    self._clock = (time.perf_counter(), step)

  def eta(self, step: int) -> Optional[float]:
    """Seconds left at the run's average pace so far, evaluations included.

    The whole-run average does not jump with each window's speed, and the
    time spent evaluating is in it, as it will be in the remaining steps.
    """
    if self._clock is None or step <= self._clock[1]:
      return None
    t0, step0 = self._clock
    return (time.perf_counter() - t0) / (step - step0) * (
        self.total_steps - step)

  def progress(self, step: int, epoch: float, loss: float, top1: float,
               lr: float, images_per_sec: Optional[float]):
    speed = ('      - img/s' if images_per_sec is None
             else f'{images_per_sec:7.1f} img/s')
    eta = self.eta(step)
    width = len(str(self.total_steps))
    self.log(f'step {step:>{width}}/{self.total_steps} | epoch {epoch:6.2f} | '
             f'loss {loss:.4f} | top1 {100 * top1:5.1f}% | lr {lr:.4g} | '
             f'{speed} | ETA {"-" if eta is None else _format_duration(eta)}')

  def close(self):
    if not self.enabled:
      return
    try:
      self.flush(force=True)
    finally:
      if self._tb is not None:
        self._tb.close()


class Stopwatch:
  """Seconds per step over a window, leaving compilation out of the first one."""

  def __init__(self):
    self.reset(0)

  def reset(self, step: int):
    self._t0, self._step0 = time.perf_counter(), step

  def rate(self, step: int) -> float:
    steps = step - self._step0
    return (time.perf_counter() - self._t0) / steps if steps > 0 else math.nan
