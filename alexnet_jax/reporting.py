"""What a run tells people: TensorBoard scalars, metrics.jsonl, console progress.

Only process 0 writes. TensorBoard goes through clu's metric writers when clu
(and so TensorFlow) is installed; without them (e.g. a bare accelerator image
running the fake-data benchmark) the run keeps metrics.jsonl and the console.
"""

import json
import math
import os
import sys
import time

import jax


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Reporter:

  def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_jsonl_after(resume_step)
    self._jsonl = open(self.jsonl_path, 'a')
    try:
      from clu import metric_writers  # Lazy: pulls in TensorFlow.
      self._tb = metric_writers.AsyncWriter(
          metric_writers.SummaryWriter(workdir))
    except ImportError as e:
      self.log(f'TensorBoard disabled ({e}); metrics go to {self.jsonl_path}')

  def _truncate_jsonl_after(self, step: int):
    """On resume, drop records the interrupted run wrote after its last checkpoint."""
    if not os.path.exists(self.jsonl_path):
      return
    kept = []
    with open(self.jsonl_path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # A line cut short by kill -9.
          continue
        if record.get('step', 0) <= step:
          kept.append(line if line.endswith('\n') else line + '\n')
    tmp = self.jsonl_path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, self.jsonl_path)

  def log(self, message: str):
    if self.enabled:
      print(message, flush=True)

  def write(self, step: int, split: str, **metrics):
    """One metrics.jsonl record and TensorBoard scalars `split/name`."""
    if not self.enabled:
      return
    record = {'step': step, 'split': split}
    record.update({k: (float(v) if v is not None else None)
                   for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.write_scalars(step, {
          f'{split}/{k}': float(v) for k, v in metrics.items()
          if k != 'epoch' and v is not None and math.isfinite(float(v))})

  def progress(self, step: int, epoch: float, loss: float, top1: float,
               lr: float, images_per_sec, seconds_per_step: float):
    if images_per_sec is None:  # No timed step yet (just compiled).
      speed, eta = '      - img/s', '-'
    else:
      speed = f'{images_per_sec:7.1f} img/s'
      eta = _format_duration((self.total_steps - step) * seconds_per_step)
    width = len(str(self.total_steps))
    self.log(f'step {step:>{width}}/{self.total_steps} | epoch {epoch:6.2f} | '
             f'loss {loss:.4f} | top1 {100 * top1:5.1f}% | lr {lr:.4g} | '
             f'{speed} | ETA {eta}')

  def flush(self):
    if self.enabled and self._tb is not None:
      self._tb.flush()

  def close(self):
    if self.enabled:
      if self._tb is not None:
        self._tb.close()
      self._jsonl.close()


class Stopwatch:
  """Seconds per step over a window, leaving compilation out of the first one."""

  def __init__(self):
    self.reset(0)

  def reset(self, step: int):
    self._t0, self._step0 = time.perf_counter(), step

  def rate(self, step: int) -> float:
    steps = step - self._step0
    return (time.perf_counter() - self._t0) / steps if steps > 0 else math.nan
