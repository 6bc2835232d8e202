"""One command for a GPU: every GPU figure BENCHMARKS.md asks for, in one run.

  python -m benchmarks.gpu_check [--cifar_dir DIR] [--out DIR] [--smoke]

On a machine with one GPU, in at most 8 minutes (installs excluded), in
order, each part in its own time budget and its own try/except (a part that
fails records its error and loses none of the others):
  1. device: the device, the driver, the versions, the peak FLOP/s used;
  2. train_step: our step (`benchmarks.train_step.run`) against the PyTorch
     twin in every mode (eager, channels_last, torch.compile), float32 (TF32
     matmuls on both sides) and bfloat16 / AMP, for `alexnet_torchvision` at
     batch 256 and the CIFAR form at batch 512, with MFU;
  3. cifar_main: the main job to the end, as its own process, the real
     command (`python -m alexnet_jax.main --config=configs/cifar10.py`):
     wall time, the train epoch's time at the run's rate, test top-1. On the
     CIFAR-10 pickles of `--cifar_dir` (the full set, or the subset: then the
     top-1 is the subset's); without it on fake data of CIFAR's shape
     (`--main_epochs`, default 3: epoch time, no accuracy);
  4. input_pipeline: `benchmarks/image_pipeline.py`'s input paths (folder,
     store JPEG/raw; DALI CPU and GPU where DALI is installed, tf.data where
     TensorFlow is), images/s;
then checks the GPU targets (BENCHMARKS.md, "Targets") into met / not met /
not measured, and writes OUT/gpu_check.json (everything) and OUT/gpu_check.md
(the tables for BENCHMARKS.md), after every part, so a run cut short keeps
what it measured. `--out` defaults to a new directory, printed at the end.
`--smoke` runs every part tiny on the CPU (what CI runs; about a minute):
the targets then read "not measured".

On the lent GPU machine (the device tool; BENCHMARKS.md "GPU" has the
whole recipe). It lacks ml_collections, clu, grain (with array_record and
portpicker) and simplejpeg, which the training path imports, and
TensorFlow, which it does without (no TensorBoard events, one line in the
log). Here, once, from the checkout's root (Python 3.12 wheels, x86-64):

  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
      --implementation cp --platform manylinux_2_28_x86_64 \\
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \\
      ml-collections==1.1.0 clu==0.0.12 grain==0.2.18 array-record==0.8.6 \\
      portpicker==1.6.0 simplejpeg==1.9.0
  mkdir -p .gpu_data && cp -r ../shared/data/cifar10-subset/cifar-10-batches-py .gpu_data/

(.whl/ and .gpu_data/ are git-ignored; together about 23 MB; .gpu_data is
a temporary copy for the device call only: `rm -rf .gpu_data` after it.)
Then `run` with carry [".whl", ".gpu_data"], timeout_s 600, and the command

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 timeout 560 python3 -m benchmarks.gpu_check --cifar_dir .gpu_data/cifar-10-batches-py --out $OUT/gpu_check 2>&1 | tee $OUT/gpu_check.log
"""

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

# Before JAX starts its backend: PyTorch shares the GPU in this process, and
# the main job's own process takes its share later.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]

# The GPU form and the smoke form of each part.
TRAIN_CONFIGS = {  # (model, batch, half_precision), the targets' first.
    'gpu': [('alexnet_torchvision', 256, True),
            ('alexnet_torchvision', 256, False),
            ('alexnet_cifar', 512, True), ('alexnet_cifar', 512, False)],
    # Each dtype once, each form once.
    'smoke': [('alexnet_tiny', 8, True), ('alexnet_cifar', 8, False)],
}
TRAIN_STEPS = {'gpu': (20, 3, 0.5), 'smoke': (2, 1, 0.2)}  # steps, warmup, settle
PYTORCH_MODES = {'gpu': 'eager,channels_last,compile',
                 'smoke': 'eager,channels_last'}
PIPELINE = {  # image_pipeline's arguments
    'gpu': dict(images=384, batch=32, epochs=2, repeats=2,
                workers=min(8, max((os.cpu_count() or 2) - 2, 2))),
    'smoke': dict(images=32, batch=8, epochs=1, repeats=1, workers=0),
}
# Seconds per part; a part is not started past the whole run's budget, and
# the train step starts no configuration it has no time left for.
BUDGETS = {
    'gpu': {'device': 20, 'train_step': 210, 'cifar_main': 150,
            'input_pipeline': 60},
    'smoke': {'device': 60, 'train_step': 300, 'cifar_main': 300,
              'input_pipeline': 120},
}
FULL_CIFAR_TRAIN = 45_000  # CIFAR-10's 50,000 less the 10% held out (val).

TARGET_MODEL, TARGET_BATCH = 'alexnet_torchvision', 256
TARGETS = (  # (key, what, threshold, higher is better)
    ('bf16_vs_amp_eager', 'bfloat16 step ≥ 1.3× PyTorch AMP eager '
     f'(`{TARGET_MODEL}`, batch {TARGET_BATCH})', 1.3, True),
    ('bf16_vs_compile', 'bfloat16 step ≥ 1.0× `torch.compile` (AMP) '
     f'(`{TARGET_MODEL}`, batch {TARGET_BATCH})', 1.0, True),
    ('mfu', f'MFU ≥ 40% (bfloat16 step, `{TARGET_MODEL}`, batch '
     f'{TARGET_BATCH})', 0.40, True),
    ('cifar_epoch', 'CIFAR epoch ≤ 1 s (the main job\'s train epoch: 45,000 '
     'images at its measured rate)', 1.0, False),
)

PACKAGES = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax',
            'optax', 'orbax-checkpoint', 'chex', 'numpy', 'ml-collections',
            'clu', 'grain', 'array-record', 'etils', 'absl-py', 'pillow',
            'simplejpeg', 'torch', 'triton', 'nvidia-dali-cuda130',
            'tensorflow', 'tensorflow-cpu', 'tensorboard', 'matplotlib',
            'scikit-image')


class Clock:
  """The run's clock and its progress lines."""

  def __init__(self, budget_s: float):
    self.start, self.budget_s = time.monotonic(), budget_s

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def say(self, message: str):
    print(f'[gpu_check {self.elapsed():5.0f} s] {message}', flush=True)


def _version(dist: str):
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def _error(e: BaseException) -> str:
  return ''.join(traceback.format_exception(type(e), e, e.__traceback__)
                 )[-3000:]


# --- 1. The device -----------------------------------------------------------

def device_facts(mode: str, clock: Clock) -> dict:
  del mode, clock
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  stats = (device.memory_stats() or {}) if hasattr(device,
                                                    'memory_stats') else {}
  facts = {
      'platform': device.platform, 'device_kind': device.device_kind,
      'devices': [str(d) for d in jax.devices()],
      'device_count': jax.device_count(),
      'memory_bytes_limit': stats.get('bytes_limit'),
      'peak_flops': {dtype: flops_lib.peak_flops(device, dtype)
                     for dtype in ('bfloat16', 'float32')},
      'python': platform.python_version(), 'cpu_count': os.cpu_count(),
      'machine': platform.machine(),
      'versions': {p: _version(p) for p in PACKAGES if _version(p)},
      'not_installed': [p for p in PACKAGES if not _version(p)],
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  if shutil.which('nvidia-smi'):
    out = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,driver_version,memory.total,'
         'clocks.max.sm,clocks.max.mem,power.limit', '--format=csv,noheader'],
        capture_output=True, text=True, timeout=30, check=False)
    facts['nvidia_smi'] = (out.stdout or out.stderr).strip()
  if _installed('torch'):
    import torch  # pylint: disable=g-import-not-at-top
    facts['torch'] = {'version': torch.__version__, 'cuda': torch.version.cuda,
                      'cuda_available': torch.cuda.is_available()}
    if torch.cuda.is_available():
      facts['torch'].update(device=torch.cuda.get_device_name(0),
                            cudnn=torch.backends.cudnn.version())
  return facts


# --- 2. The train step against PyTorch -----------------------------------------

def _benchmark_args(argv):
  """train_step_lib.parse_args, its refusals (parser.error) as ValueError."""
  from benchmarks import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      return train_step_lib.parse_args(argv)
  except SystemExit:
    lines = err.getvalue().strip().splitlines()
    raise ValueError(lines[-1] if lines else 'refused') from None


def _one_config(model, batch, half, mode, modes_arg) -> dict:
  from benchmarks import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  steps, warmup, settle = TRAIN_STEPS[mode]
  argv = [f'--model={model}', f'--batch_size={batch}', f'--steps={steps}',
          f'--warmup={warmup}'] + (['--half_precision'] if half else [])
  row = {}
  with_torch = bool(modes_arg) and _installed('torch')
  if not with_torch:
    row['pytorch_note'] = ('PyTorch not installed' if modes_arg else
                           'PyTorch not asked for')
  try:
    args, modes, where = _benchmark_args(
        argv + (['--vs_pytorch', f'--pytorch_modes={modes_arg}']
                if with_torch else []))
  except ValueError as e:  # PyTorch without CUDA, say: ours alone.
    if not with_torch:
      raise
    row['pytorch_note'] = f'PyTorch left out: {e}'
    args, modes, where = _benchmark_args(argv)
  failed = {}
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  result = train_step_lib.run(args, modes, where, failed=failed, settle_s=settle)
  row.update(result)
  if failed:
    row['pytorch_failed'] = failed
  peak = flops_lib.peak_flops(jax.devices()[0], result['dtype'])
  for r in result.get('vs_pytorch', ()):  # The same step's FLOPs, XLA's count.
    r['mfu'] = (result['flops_per_step'] / (r['step_ms'] / 1e3) / peak
                if result['flops_per_step'] and peak else None)
  return row


def train_step(mode: str, clock: Clock, budget_s: float,
               modes_arg: str) -> dict:
  rows, start, longest = [], time.monotonic(), 0.
  for model, batch, half in TRAIN_CONFIGS[mode]:
    dtype = 'bfloat16' if half else 'float32'
    used = time.monotonic() - start
    if used + longest > budget_s or clock.left() < longest:
      rows.append({'model': model, 'batch_size': batch, 'dtype': dtype,
                   'skipped': f'over the time budget ({used:.0f} s used of '
                              f'{budget_s:.0f}; the last took {longest:.0f} s)'})
      clock.say(f'  {model} b{batch} {dtype}: skipped (time budget)')
      continue
    begun = time.monotonic()
    try:
      row = _one_config(model, batch, half, mode, modes_arg)
    except Exception as e:  # pylint: disable=broad-except
      row = {'model': model, 'batch_size': batch, 'dtype': dtype,
             'error': _error(e)}
    row['seconds'] = time.monotonic() - begun
    longest = max(longest, row['seconds'])
    rows.append(row)
    clock.say(f'  {model} b{batch} {dtype}: ' + (
        'error: ' + row['error'].strip().splitlines()[-1] if 'error' in row
        else f"{row['step_ms']:.2f} ms/step" + ''.join(
            f", {r['mode']} {r['speedup']:.2f}x"
            for r in row.get('vs_pytorch', ()))) + f" ({row['seconds']:.0f} s)")
    gc.collect()
    if 'torch' in sys.modules and sys.modules['torch'].cuda.is_available():
      sys.modules['torch'].cuda.empty_cache()
  return {'configs': rows, 'pytorch_modes': modes_arg}


# --- 3. The CIFAR main job ------------------------------------------------------

def _main_command(workdir, cifar_dir, mode, epochs):
  cmd = [sys.executable, '-m', 'alexnet_jax.main',
         '--config=configs/cifar10.py', f'--workdir={workdir}']
  if cifar_dir:
    cmd.append(f'--config.data_dir={cifar_dir}')
  else:
    small = mode == 'smoke'
    cmd += ['--config.dataset=fake', '--config.fake_image_size=32',
            '--config.num_classes=10',
            f'--config.fake_num_train={256 if small else 50_000}',
            f'--config.fake_num_test={64 if small else 10_000}']
  if mode == 'smoke':
    cmd += ['--config.num_steps=4', '--config.log_every_steps=2']
  elif epochs:
    cmd.append(f'--config.num_epochs={epochs}')
  return cmd


def _read_run(workdir: pathlib.Path, log: str, wall_s: float) -> dict:
  """What the run's own files and log say: sizes, rates, epoch times,
  top-1."""
  out = {}
  header = re.search(r'(\d+) train / (\d+) val / (\d+) test \| global batch '
                     r'(\d+) .*\| (\d+) steps \((\d+)/epoch\)', log)
  if header:
    (out['train_images'], out['val_images'], out['test_images'],
     out['batch_size'], out['total_steps'], out['steps_per_epoch']) = map(
         int, header.groups())
  records = []
  if (workdir / 'metrics.jsonl').is_file():
    records = [json.loads(l) for l in
               (workdir / 'metrics.jsonl').read_text().splitlines() if l]
  rates = [r['images_per_sec'] for r in records
           if r.get('split') == 'train' and r.get('images_per_sec')]
  if rates:
    out['train_images_per_sec'] = statistics.median(rates)
    out['train_rate_windows'] = len(rates)
  if rates and header:
    epoch_images = out['steps_per_epoch'] * out['batch_size']
    out['train_epoch_s'] = epoch_images / out['train_images_per_sec']
    out['full_cifar_epoch_s'] = (
        FULL_CIFAR_TRAIN // out['batch_size'] * out['batch_size'] /
        out['train_images_per_sec'])
  steps_done = max((r.get('step', 0) for r in records), default=0)
  if header and steps_done:
    out['epochs_done'] = steps_done / out['steps_per_epoch']
    out['wall_per_epoch_s'] = wall_s / out['epochs_done']
  final = workdir / 'final_metrics.json'
  if final.is_file():
    f = json.loads(final.read_text())
    out['test_top1'] = f['test']['top1']
    out['final_step'] = f['step']
    if f.get('best_val_test'):
      out['best_val_step'] = f['best_val_step']
      out['best_val_test_top1'] = f['best_val_test']['top1']
  return out


def cifar_main(mode: str, clock: Clock, budget_s: float, cifar_dir: str,
               epochs: int, out_dir: pathlib.Path) -> dict:
  if not cifar_dir and mode != 'smoke':
    epochs = epochs or 3
  elif cifar_dir and not os.path.exists(cifar_dir):
    raise ValueError(f'--cifar_dir {cifar_dir} does not exist (the '
                     'cifar-10-batches-py folder, or cifar-10-python.tar.gz)')
  timeout = max(min(budget_s, clock.left()), 10.)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / 'run'
    cmd = _main_command(workdir, cifar_dir and os.path.abspath(cifar_dir),
                        mode, epochs)
    result = {'command': ' '.join(cmd[1:]).replace(str(workdir), 'WORKDIR'),
              'data': (f'CIFAR-10 pickles at {cifar_dir}' if cifar_dir else
                       'fake, CIFAR-shaped (random images and labels: epoch '
                       'time only, the accuracy means nothing)'),
              'timeout_s': timeout}
    clock.say(f'  {result["command"]} (timeout {timeout:.0f} s)')
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
    env.pop('XLA_PYTHON_CLIENT_PREALLOCATE', None)  # Its own default, as run.
    log_path = out_dir / 'cifar_main.log'
    begun = time.monotonic()
    with open(log_path, 'w') as log_file:
      try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log_file,
                              stderr=subprocess.STDOUT, timeout=timeout,
                              check=False)
        result['returncode'] = proc.returncode
      except subprocess.TimeoutExpired:
        result['returncode'] = None
        result['timed_out'] = True
    result['wall_s'] = time.monotonic() - begun
    log = log_path.read_text(errors='replace')
    result['log_tail'] = log[-2500:]
    result.update(_read_run(workdir, log, result['wall_s']))
  if result.get('train_images', FULL_CIFAR_TRAIN) < FULL_CIFAR_TRAIN:
    result['note'] = (f"{result['train_images']:,} train images, not "
                      f'{FULL_CIFAR_TRAIN:,}: a subset, so the top-1 is not '
                      "the full dataset's; the epoch time at 45,000 images "
                      '(full_cifar_epoch_s) is the measured rate applied to '
                      'the full split')
  if not cifar_dir:
    result.pop('test_top1', None)
    result.pop('best_val_test_top1', None)
    result['note'] = ('no --cifar_dir: fake data of CIFAR\'s shape, so no '
                      'accuracy; the step is the same, so the epoch time is')
  if result.get('timed_out') or result['returncode'] != 0:
    why = ('timed out' if result.get('timed_out') else
           f"exited {result['returncode']}")
    raise PartFailed(f'the main job {why}; its log: {log_path}', result)
  return result


class PartFailed(Exception):
  """A part that failed with results worth keeping."""

  def __init__(self, message, partial):
    super().__init__(message)
    self.partial = partial


# --- 4. The input paths ---------------------------------------------------------

def input_pipeline(mode: str, clock: Clock) -> dict:
  del clock
  from absl import flags  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import store  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import streaming  # pylint: disable=g-import-not-at-top
  from benchmarks import image_pipeline  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.
  dali = _installed('nvidia.dali')
  gpu = jax.devices()[0].platform == 'gpu'
  args = argparse.Namespace(
      **PIPELINE[mode], dali=dali, dali_gpu=dali and gpu,
      vs_tfdata=_installed('tensorflow') and mode != 'smoke')
  with tempfile.TemporaryDirectory() as root:
    folder = os.path.join(root, 'folder')
    image_pipeline.write_jpegs(folder, args.images)
    source = streaming.ImageFolderSource.scan(folder)
    roots = image_pipeline.write_stores(root, source)
    sources = {'folder': source, **{
        k: store.StoreSource(v, 'train') for k, v in roots.items()}}
    rates = image_pipeline.measure(sources, roots, args)
  notes = []
  if not dali:
    notes.append('DALI not installed: no DALI rows (the GPU decoder is '
                 'measured where nvidia-dali is installed)')
  elif not gpu:
    notes.append('no GPU: DALI\'s CPU decoder only')
  if not args.vs_tfdata:
    notes.append('tf.data left out (' + ('--smoke' if mode == 'smoke' else
                                         'TensorFlow not installed') + ')')
  return {'images_per_sec': rates, **vars(args), 'cores': os.cpu_count(),
          'notes': notes}


# --- Targets and the report -----------------------------------------------------

def _target_row(report):
  rows = report['sections'].get('train_step', {}).get('configs', [])
  for row in rows:
    if (row.get('model'), row.get('batch_size'), row.get('dtype')) == (
        TARGET_MODEL, TARGET_BATCH, 'bfloat16') and 'step_ms' in row:
      return row
  return None


def _speedup(row, mode):
  for r in (row or {}).get('vs_pytorch', ()):
    if r['mode'] == mode:
      return r['speedup']
  return None


def evaluate_targets(report: dict) -> list:
  """Each GPU target: met / not met / not measured (and why)."""
  device = report['sections'].get('device', {})
  row = _target_row(report)
  main = report['sections'].get('cifar_main', {})
  values = {'bf16_vs_amp_eager': _speedup(row, 'eager+amp'),
            'bf16_vs_compile': _speedup(row, 'compile+amp'),
            'mfu': (row or {}).get('mfu'),
            'cifar_epoch': main.get('full_cifar_epoch_s')}
  why_none = None
  if report['smoke']:
    why_none = '--smoke (tiny shapes)'
  elif device.get('platform', (row or {}).get('device', '')[:3]) != 'gpu':
    why_none = ('not on a GPU ('
                f"{device.get('platform') or (row or {}).get('device', '?')})")
  out = []
  for key, what, threshold, higher in TARGETS:
    value = values[key]
    if why_none or value is None:
      status, note = 'not measured', why_none or 'no figure (see its part)'
    else:
      met = value >= threshold if higher else value <= threshold
      status, note = ('met' if met else 'not met'), ''
    out.append({'key': key, 'target': what, 'threshold': threshold,
                'value': value, 'status': status, 'note': note})
  return out


def _ms(x):
  return '—' if x is None else f'{x:.2f} ms'


def _pct(x):
  return '—' if x is None else f'{100 * x:.1f}%'


def _value(key, value):
  if value is None:
    return '—'
  if key == 'mfu':
    return _pct(value)
  if key == 'cifar_epoch':
    return f'{value:.2f} s'
  return f'{value:.2f}×'


def markdown(report: dict) -> str:
  """The tables for BENCHMARKS.md."""
  s, lines = report['sections'], []
  d = s.get('device', {})
  versions = d.get('versions', {})
  lines += [f"### GPU check, {report['started'][:10]}"
            + (' (--smoke, CPU: shapes too small to mean anything)'
               if report['smoke'] else ''), '',
            f"Device: {d.get('device_kind', '?')} ({d.get('platform', '?')}, "
            f"{d.get('device_count', '?')} visible), "
            f"{d.get('nvidia_smi', 'no nvidia-smi')}; {d.get('cpu_count')} "
            f"CPU cores; Python {d.get('python')}, JAX {versions.get('jax')}, "
            f"flax {versions.get('flax')}, PyTorch {versions.get('torch')}, "
            f"DALI {versions.get('nvidia-dali-cuda130', 'not installed')}. "
            f"`{report['command']}`, {report['wall_s']:.0f} s in all.", '']
  for name, part in s.items():
    if part.get('status') in ('error', 'skipped'):
      lines += [f"**{name}: {part['status']}**: " + (
          part.get('error', part.get('reason', '')).strip().splitlines()
          or [''])[-1], '']
  configs = s.get('train_step', {}).get('configs', [])
  if configs:
    modes = []
    for c in configs:
      for r in c.get('vs_pytorch', ()):
        base = r['mode'].replace('+amp', '')
        if base not in modes:
          modes.append(base)
    lines += ['| model, batch, dtype | alexnet_jax | MFU | '
              + ' | '.join(f'PyTorch {m}' for m in modes) + ' |',
              '| --- | --- | --- |' + ' --- |' * len(modes)]
    for c in configs:
      head = f"`{c['model']}` {c['batch_size']}, {c['dtype']}"
      if 'step_ms' not in c:
        why = c.get('skipped') or c.get('error', '').strip().splitlines()[-1]
        lines.append(f'| {head} | {why} |' + ' |' * (1 + len(modes)))
        continue
      cells = []
      by_mode = {r['mode'].replace('+amp', ''): r
                 for r in c.get('vs_pytorch', ())}
      for m in modes:
        r = by_mode.get(m)
        cells.append('—' if r is None else
                     f"{_ms(r['step_ms'])} (**{r['speedup']:.2f}×**, MFU "
                     f"{_pct(r.get('mfu'))})")
      lines.append(f"| {head} | {_ms(c['step_ms'])} "
                   f"({c['images_per_sec']:,.0f} img/s) | {_pct(c['mfu'])} | "
                   + ' | '.join(cells) + ' |')
    lines += ['', 'Ratios: PyTorch\'s step time / ours (> 1: ours is faster), '
              'medians of interleaved steps; MFU: XLA\'s FLOP count of our '
              'step / step time / the datasheet peak (TF32 for float32); '
              'bfloat16 rows run PyTorch under AMP.', '']
  main = s.get('cifar_main', {})
  if 'wall_s' in main:
    top1 = main.get('test_top1')
    lines += ['| CIFAR main job | data | wall | train epoch (this data) | '
              'train epoch at 45,000 images | test top-1 |',
              '| --- | --- | --- | --- | --- | --- |',
              f"| `configs/cifar10.py`, {main.get('epochs_done', 0):.1f} "
              f"epochs | {main['data']} | {main['wall_s']:.0f} s | "
              + ' | '.join('—' if main.get(k) is None else
                           f'{main[k]:.2f} s' for k in
                           ('train_epoch_s', 'full_cifar_epoch_s'))
              + f" | {'—' if top1 is None else _pct(top1)} |", '']
    if main.get('note'):
      lines += [main['note'] + '.', '']
  pipe = s.get('input_pipeline', {})
  if pipe.get('images_per_sec'):
    lines += ['| input path | images/s |', '| --- | --- |']
    lines += [f'| {k} | {v:,.0f} |' for k, v in pipe['images_per_sec'].items()]
    lines += [''] + [f'{n}.' for n in pipe.get('notes', ())] + ['']
  lines += ['| GPU target | value | status |', '| --- | --- | --- |']
  for t in report.get('targets', ()):
    lines.append(f"| {t['target']} | {_value(t['key'], t['value'])} | "
                 f"**{t['status']}**" + (f" ({t['note']})" if t['note'] else '')
                 + ' |')
  return '\n'.join(lines) + '\n'


def write(report: dict, out: pathlib.Path):
  report['wall_s'] = time.monotonic() - report['_start']
  report['targets'] = evaluate_targets(report)
  clean = {k: v for k, v in report.items() if not k.startswith('_')}
  (out / 'gpu_check.json').write_text(json.dumps(clean, indent=2,
                                                 default=str) + '\n')
  (out / 'gpu_check.md').write_text(markdown(report))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--smoke', action='store_true',
                      help='every part tiny, on the CPU (what CI runs)')
  parser.add_argument('--cifar_dir', default='',
                      help='CIFAR-10 pickles (cifar-10-batches-py) for the '
                      'main job; without: fake data of CIFAR\'s shape')
  parser.add_argument('--main_epochs', type=int, default=0,
                      help='epochs of the main job (0: the config\'s 45 on '
                      'real data, 3 on fake data)')
  parser.add_argument('--pytorch_modes', default='',
                      help='PyTorch modes (default: all three on a GPU, '
                      'eager,channels_last with --smoke); "none" leaves '
                      'PyTorch out')
  parser.add_argument('--budget_s', type=float, default=0,
                      help='the whole run\'s budget (default: 450 s, 900 '
                      'with --smoke)')
  parser.add_argument('--parts', default='device,train_step,cifar_main,'
                      'input_pipeline', help='a comma list of the parts')
  parser.add_argument('--out', default='',
                      help='directory for gpu_check.json and gpu_check.md '
                      '(default: a new one)')
  args = parser.parse_args(argv)
  mode = 'smoke' if args.smoke else 'gpu'
  parts = [p.strip() for p in args.parts.split(',') if p.strip()]
  bad = [p for p in parts if p not in BUDGETS['gpu']]
  if bad:
    parser.error(f'--parts: {", ".join(bad)} is not one of '
                 f'{", ".join(BUDGETS["gpu"])}')
  if args.main_epochs < 0:
    parser.error(f'--main_epochs must be >= 0, got {args.main_epochs}')
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix='gpu_check_'))
  out.mkdir(parents=True, exist_ok=True)
  clock = Clock(args.budget_s or (900 if args.smoke else 450))
  modes_arg = args.pytorch_modes or PYTORCH_MODES[mode]
  modes_arg = '' if modes_arg == 'none' else modes_arg
  budgets = BUDGETS[mode]
  runners = {
      'device': lambda b: device_facts(mode, clock),
      'train_step': lambda b: train_step(mode, clock, b, modes_arg),
      'cifar_main': lambda b: cifar_main(mode, clock, b, args.cifar_dir,
                                         args.main_epochs, out),
      'input_pipeline': lambda b: input_pipeline(mode, clock),
  }
  report = {'command': 'python -m benchmarks.gpu_check ' + ' '.join(
      sys.argv[1:] if argv is None else argv),
            'smoke': args.smoke, 'budget_s': clock.budget_s,
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'),
            'sections': {}, '_start': clock.start}
  for name in runners:
    if name not in parts:
      continue
    if clock.left() <= 0:
      report['sections'][name] = {'status': 'skipped',
                                  'reason': 'the run\'s time budget is spent'}
      clock.say(f'{name}: skipped (time budget)')
      continue
    clock.say(f'{name} (budget {budgets[name]} s)')
    begun = time.monotonic()
    try:
      part = {'status': 'ok', **runners[name](budgets[name])}
    except PartFailed as e:
      part = {'status': 'error', 'error': str(e), **e.partial}
    except Exception as e:  # pylint: disable=broad-except
      part = {'status': 'error', 'error': _error(e)}
    part['seconds'] = time.monotonic() - begun
    report['sections'][name] = part
    clock.say(f'{name}: {part["status"]} in {part["seconds"]:.0f} s'
              + (': ' + part['error'].strip().splitlines()[-1]
                 if part['status'] == 'error' else ''))
    write(report, out)
  write(report, out)
  for t in report['targets']:
    clock.say(f"target {t['key']}: {t['status']} "
              f"({_value(t['key'], t['value'])})")
  clock.say(f'wrote {out / "gpu_check.json"} and {out / "gpu_check.md"}')
  print(out)


if __name__ == '__main__':
  main()
