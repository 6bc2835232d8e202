"""What a run tells people: the console, metrics.jsonl, TensorBoard, curves.png.

The libraries keep the books: clu's `create_default_writer` writes the
TensorBoard scalars on process 0 (the others only log), clu's
`ReportProgress` measures steps/s and the ETA, and clu's `Profile` writes an
XLA trace of a few steps into the workdir when asked (`profile_steps`).
What is ours: the console line, and `metrics.jsonl`, one JSON record per
(step, split), rewritten whole (temporary file, then rename) since object
stores cannot append; on resume the records after the restored step are
dropped, so the log never holds what the restored state did not do. Every
path goes through `etils.epath`, so the workdir may be `gs://...`. Where
TensorFlow (which clu's writers import) is not installed, the run trains all
the same, without TensorBoard events, and says so in one line.
"""

import concurrent.futures
import contextlib
import json
import math
import time
from typing import Optional

import jax
from etils import epath

from alexnet_jax.errors import WorkdirError
from alexnet_jax.runtime import curves
from alexnet_jax.runtime.layout import Layout

# metrics.jsonl is rewritten at most this often between forced flushes
# (evaluations, checkpoints, the end of the run).
_FLUSH_SECONDS = 30.


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


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


def prepare_workdir(workdir):
  """Creates the workdir and proves it writable, before anything depends on it.

  Process 0 writes and removes a probe file, so a read-only or full disk is
  one clear line now rather than a library's error later.
  """
  if jax.process_index() != 0:
    return
  path = Layout.of(workdir).root
  if path.exists() and not path.is_dir():
    raise WorkdirError(f'workdir {path} is a file, not a directory; pass '
                       'a directory (new, or one a run wrote) as --workdir')
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / '.write_probe'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise _workdir_error(path, 'write', e) from None


def _progress_action(total_steps: int, every_steps: int, writer):
  """clu's ReportProgress (steps/s and uptime to TensorBoard, the ETA in its
  notes), keeping the rate it measured for the console line: clu computes it
  in `_apply` and does not hand it out."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  class Progress(periodic_actions.ReportProgress):
    steps_per_sec = None

    def _apply(self, step, t):
      self.steps_per_sec = (step - self._previous_step) / (
          t - self._previous_time)
      super()._apply(step, t)

  return Progress(num_train_steps=total_steps, writer=writer,
                  every_steps=every_steps, every_secs=None)


class _LogOnlyWriter:
  """Where clu's writers cannot load (no TensorFlow): no TensorBoard events;
  metrics.jsonl and curves.png are written as always."""

  def write_scalars(self, step, scalars):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class _StepRate:
  """clu's ReportProgress trigger without clu: the steps/s over the window
  closed every `every_steps` steps and at the last step (never on the first
  call)."""

  def __init__(self, total_steps: int, every_steps: int):
    self.total_steps, self.every_steps = total_steps, every_steps
    self.steps_per_sec = None
    self._previous = None

  def __call__(self, step: int, t: float) -> bool:
    if self._previous is None:
      self._previous = (step, t)
      return False
    due = step % self.every_steps == 0 or step == self.total_steps
    if not due or step == self._previous[0]:
      return False
    self.steps_per_sec = (step - self._previous[0]) / (t - self._previous[1])
    self._previous = (step, t)
    return True


def _writers(workdir, enabled: bool, total_steps: int, every_steps: int):
  """(writer, progress action, None) from clu; without TensorFlow, which
  clu's writers import, (log-only writer, _StepRate, the missing module)."""
  from alexnet_jax.runtime import tf_cpu  # pylint: disable=g-import-not-at-top
  try:
    tf_cpu.tensorflow()  # Before clu pulls TensorFlow in: CPU only.
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return _LogOnlyWriter(), _StepRate(total_steps, every_steps), e.name
  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=not enabled, asynchronous=True)
  return writer, _progress_action(total_steps, every_steps, writer), None


class Reporter:
  """The run's console, metrics.jsonl, TensorBoard, curves.png and profile.

  `durations` gives the run's length and when train metrics are logged
  (`Durations.log_every`: clu measures steps/s over the same windows);
  `title` names the run on its pictures (model, dataset), never a path.
  """

  def __init__(self, workdir, durations, resume_step: int = 0,
               profile_steps: int = 0, title: str = ''):
    self.enabled = jax.process_index() == 0
    self.total_steps = durations.total_steps
    self.layout = Layout.of(workdir)
    self.workdir = self.layout.root
    self.title = title
    self._dirty = False
    self._last_flush = time.monotonic()
    self._paused_s = 0.  # Evaluations and saves, kept off the step clock.
    self._records = []
    self._last_step = resume_step
    self._painter = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix='alexnet_jax-curves')
    self._drawing = None  # The redraw under way, if any.
    if self.enabled:  # On resume, drop what came after the checkpoint.
      old = curves.read_records(self.layout, missing_ok=True)
      self._records = [r for r in old if r.get('step', 0) <= resume_step]
      self._dirty = len(self._records) != len(old)
    self._writer, self._progress, missing = _writers(
        self.workdir, self.enabled, durations.total_steps, durations.log_every)
    if missing:
      self.log(f'TensorBoard events off: {missing} is not installed '
               '(metrics.jsonl and curves.png are written as always)')
    self._profile = None
    if profile_steps and self.enabled and missing:
      self.log(f'profile_steps ignored: clu\'s profiler needs {missing}')
    elif profile_steps and self.enabled:
      from clu import periodic_actions  # pylint: disable=g-import-not-at-top
      self._profile = periodic_actions.Profile(
          logdir=str(self.workdir), num_profile_steps=profile_steps,
          profile_duration_ms=None, first_profile=resume_step + 5,
          every_secs=None)

  def _guard(self, fn, what: str):
    """OS errors on the workdir (full disk, permissions) as one clear line."""
    try:
      return fn()
    except OSError as e:
      raise _workdir_error(self.workdir, what, e) from None

  def log(self, message: str):
    if self.enabled:
      print(message, flush=True)

  def after_step(self, step: int, taken: int = 1) -> Optional[float]:
    """The periodic actions, after the `taken` steps that ended at `step`
    (a chunk: clu's actions want every step, and a chunk ends wherever one
    of theirs is due); the steps/s measured over the window just closed, on
    the steps where clu measured one (every `log_every`, and the last)."""
    clock = time.monotonic() - self._paused_s
    measured = False
    for s in range(step - taken + 1, step + 1):
      if self._profile is not None:
        self._profile(s)
      measured = self._progress(s, clock)
    return self._progress.steps_per_sec if measured else None

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside is left out of steps/s and the ETA: they measure
    training, as evaluations and checkpoints come at their own cadence."""
    start = time.monotonic()
    try:
      yield
    finally:
      self._paused_s += time.monotonic() - start

  def write(self, step: int, split: str, run: Optional[int] = None,
            values: Optional[dict] = None, **metrics):
    """One metrics.jsonl record (replacing one of the same step, split and
    run) and TensorBoard scalars `split/name` (`runI/split/name` for run I
    of a stack, whose swept `values` the record carries too)."""
    prefix = '' if run is None else f'run{run}/'
    self._writer.write_scalars(step, {
        f'{prefix}{split}/{k}': float(v) for k, v in metrics.items()
        if k != 'epoch' and v is not None and math.isfinite(float(v))})
    if not self.enabled:
      return
    self._last_step = max(self._last_step, step)
    record = {'step': step, 'split': split}
    if run is not None:
      record['run'] = run
      record.update(values or {})
    record.update({k: (float(v) if v is not None else None)
                   for k, v in metrics.items()})
    key = (step, split, run)
    self._records = [r for r in self._records
                     if (r.get('step'), r.get('split'), r.get('run')) != key]
    self._records.append(record)
    self._dirty = True

  def records(self) -> list:
    """The metrics.jsonl records so far (the resumed run's included)."""
    return list(self._records)

  def flush(self, force: bool = False):
    """Writes what was added: always when forced, else at most every 30 s."""
    if not (self.enabled and self._dirty):
      return
    if not force and time.monotonic() - self._last_flush < _FLUSH_SECONDS:
      return
    text = ''.join(json.dumps(r) + '\n' for r in self._records)
    path = self.layout.metrics
    self._guard(lambda: write_text_atomically(path, text),
                f'write {path.name}')
    self._guard(self._writer.flush, 'write TensorBoard events')
    self._dirty = False
    self._last_flush = time.monotonic()

  def write_curves(self, wait: bool = False):
    """WORKDIR/curves.png from metrics.jsonl (after a forced flush), drawn
    off the training thread: a redraw asked for while one is drawing is
    left to the next (the run's last one, `wait=True`, is drawn whole before
    it returns). A failure to write is raised here, at the next call."""
    if not self.enabled:
      return
    self.flush(force=True)
    if self._drawing is not None and self._drawing.done():
      done, self._drawing = self._drawing, None
      done.result()  # A WorkdirError from the last redraw, if any.
    if self._drawing is not None and not wait:
      return
    if self._drawing is not None:
      self._drawing.result()
    title = f'{self.title}, step {self._last_step}'
    self._drawing = self._painter.submit(
        self._guard, lambda: curves.write_run_curves(self.layout, title),
        'write curves.png')
    if wait:
      done, self._drawing = self._drawing, None
      done.result()

  def write_json(self, path: epath.Path, value):
    """A JSON file of the workdir (a `Layout` path), replaced whole."""
    if self.enabled:
      self._guard(lambda: write_text_atomically(
          path, json.dumps(value, indent=2) + '\n'), f'write {path.name}')

  def progress(self, step: int, epoch: float, loss: float, top1: float,
               lr: float, images_per_sec: Optional[float]):
    """The console line; the ETA at the pace clu just measured."""
    speed = ('      - img/s' if images_per_sec is None
             else f'{images_per_sec:7.1f} img/s')
    rate = self._progress.steps_per_sec
    eta = '-' if not rate else _format_duration(
        (self.total_steps - step) / rate)
    width = len(str(self.total_steps))
    self.log(f'step {step:>{width}}/{self.total_steps} | epoch {epoch:6.2f} | '
             f'loss {loss:.4f} | top1 {100 * top1:5.1f}% | lr {lr:.4g} | '
             f'{speed} | ETA {eta}')

  def close(self):
    try:
      self.flush(force=True)
    finally:
      self._painter.shutdown(wait=True)  # A redraw under way completes.
      self._writer.close()
