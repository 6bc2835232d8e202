"""Part 2 of the GPU check: our train step (`benchmarks.train_step.run`)
against the PyTorch twin in every mode, float32 and bfloat16 / AMP, with
MFU; each configuration in its own try/except and only while the part's time
budget has room for one more."""

import contextlib
import gc
import io
import sys
import time

import jax

from benchmarks import flops
from benchmarks import train_step as train_step_lib
from benchmarks.gpu import part

# (model, batch, half_precision), the targets' first.
CONFIGS = {
    'gpu': [('alexnet_torchvision', 256, True),
            ('alexnet_torchvision', 256, False),
            ('alexnet_cifar', 512, True), ('alexnet_cifar', 512, False)],
    # Each dtype once, each form once.
    'smoke': [('alexnet_tiny', 8, True), ('alexnet_cifar', 8, False)],
}
STEPS = {'gpu': (20, 3, 0.5), 'smoke': (2, 1, 0.2)}  # steps, warmup, settle
PYTORCH_MODES = {'gpu': 'eager,channels_last,compile,max_autotune',
                 'smoke': 'eager,channels_last'}
# max_autotune autotunes for minutes on a GPU: the target step (the first
# configuration) alone has it; the others' best is among the rest.
SLOW_MODES = ('max_autotune',)


def modes_for(index: int, modes_arg: str) -> str:
  if index == 0:
    return modes_arg
  return ','.join(m for m in modes_arg.split(',') if m not in SLOW_MODES)


def _parse_args(argv):
  """train_step.parse_args, its refusals (parser.error) as ValueError."""
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      return train_step_lib.parse_args(argv)
  except SystemExit:
    lines = err.getvalue().strip().splitlines()
    raise ValueError(lines[-1] if lines else 'refused') from None


def _args_with_pytorch(argv, modes_arg, row):
  """train_step's (args, modes, device): with PyTorch where asked for and
  usable, else ours alone and `row['pytorch_note']` says why."""
  with_torch = bool(modes_arg) and part.installed('torch')
  if not with_torch:
    row['pytorch_note'] = ('PyTorch not installed' if modes_arg else
                           'PyTorch not asked for')
    return _parse_args(argv)
  try:
    return _parse_args(argv + ['--vs_pytorch',
                               f'--pytorch_modes={modes_arg}'])
  except ValueError as e:  # PyTorch without CUDA, say: ours alone.
    row['pytorch_note'] = f'PyTorch left out: {e}'
    return _parse_args(argv)


def _one_config(model, batch, half, mode, modes_arg) -> dict:
  steps, warmup, settle = STEPS[mode]
  argv = [f'--model={model}', f'--batch_size={batch}', f'--steps={steps}',
          f'--warmup={warmup}'] + (['--half_precision'] if half else [])
  row = {}
  args, modes, where = _args_with_pytorch(argv, modes_arg, row)
  failed = {}
  result = train_step_lib.run(args, modes, where, failed=failed,
                              settle_s=settle)
  row.update(result)
  if failed:
    row['pytorch_failed'] = failed
  peak = flops.peak_flops(jax.devices()[0], result['dtype'])
  for r in result.get('vs_pytorch', ()):  # The same step's FLOPs, XLA's count.
    r['mfu'] = (result['flops_per_step'] / (r['step_ms'] / 1e3) / peak
                if result['flops_per_step'] and peak else None)
  return row


def _progress(row) -> str:
  """One line for the console: the step time and each mode's ratio."""
  if 'error' in row:
    return 'error: ' + row['error'].strip().splitlines()[-1]
  return f"{row['step_ms']:.2f} ms/step" + ''.join(
      f", {r['mode']} {r['speedup']:.2f}x" for r in row.get('vs_pytorch', ())
  ) + (f"; best PyTorch ({row['best_pytorch_mode']}) "
       f"{row['speedup_vs_best_pytorch']:.2f}x"
       if row.get('vs_pytorch') else '')


def _free_memory():
  """What one configuration held, given back before the next."""
  gc.collect()
  if 'torch' in sys.modules and sys.modules['torch'].cuda.is_available():
    sys.modules['torch'].cuda.empty_cache()


def measure(mode: str, clock: part.Clock, budget_s: float,
            modes_arg: str) -> dict:
  """Each configuration of `mode` timed while the budget has room for the
  longest one so far."""
  rows, start, longest = [], time.monotonic(), 0.
  for index, (model, batch, half) in enumerate(CONFIGS[mode]):
    dtype = 'bfloat16' if half else 'float32'
    name = f'  {model} b{batch} {dtype}: '
    used = time.monotonic() - start
    if used + longest > budget_s or clock.left() < longest:
      rows.append({'model': model, 'batch_size': batch, 'dtype': dtype,
                   'skipped': f'over the time budget ({used:.0f} s used of '
                              f'{budget_s:.0f}; the last took {longest:.0f} s)'})
      clock.say(name + 'skipped (time budget)')
      continue
    begun = time.monotonic()
    try:
      row = _one_config(model, batch, half, mode, modes_for(index, modes_arg))
    except Exception as e:  # pylint: disable=broad-except
      row = {'model': model, 'batch_size': batch, 'dtype': dtype,
             'error': part.error_text(e)}
    row['seconds'] = time.monotonic() - begun
    longest = max(longest, row['seconds'])
    rows.append(row)
    clock.say(name + _progress(row) + f" ({row['seconds']:.0f} s)")
    _free_memory()
  return {'configs': rows, 'pytorch_modes': modes_arg}
