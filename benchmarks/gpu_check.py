"""One command for a GPU: every GPU figure BENCHMARKS.md asks for, in one run.

  python -m benchmarks.gpu_check [--cifar_dir DIR] [--out DIR] [--smoke]

On a machine with one GPU, in about 8.5 minutes (installs excluded), in
order, each part in its own time budget and its own try/except (a part that
fails, even to import, records its error and loses none of the others). Each
part is a module of `benchmarks/gpu/`; this one runs them:
  1. device (`device.py`): the device, the driver, the versions, the peak
     FLOP/s used;
  2. train_step (`step_vs_pytorch.py`): our step (`benchmarks.train_step`)
     against the PyTorch twin in every mode (eager, channels_last,
     torch.compile, and PyTorch at its best: max_autotune, the whole step
     compiled with CUDA graphs and fused SGD, for the target step only),
     float32 (TF32 matmuls on both sides) and bfloat16 / AMP, for
     `alexnet_torchvision` at batch 256 and the CIFAR form at batch 512,
     with MFU and the ratio to the best PyTorch mode;
  3. step_profile (`step_profile.py`): XLA's profile of the target step
     (bfloat16 `alexnet_torchvision`, batch 256): the costliest ops, what
     each computes, the time by kind (convolution, matmul, reduce, ...);
  4. cifar_main (`cifar_main.py`): the main job to the end, twice, as its
     own process, the real command (`python -m alexnet_jax.main
     --config=configs/cifar10.py`, its steps in chunks per call on a GPU):
     with an empty compilation cache (cold) and with the one the first run
     filled (warm); wall times, the train epoch's time at the run's rate,
     test top-1. On the CIFAR-10 pickles of `--cifar_dir` (the full set, or
     the subset: then the top-1 is the subset's); without it on fake data
     of CIFAR's shape (`--main_epochs`, default 3: epoch time, no accuracy);
  5. stacked_runs (`stacked_runs.py`): the main job for one epoch with
     `--config.runs=8` (issue 25) against one run, each its own process:
     wall times and their ratio, the train rates;
  6. store_training (`store_training.py`): the real command on the
     paper's 256x256 store, JPEG and raw, of photos written on the machine:
     the run's images/s against the step alone's;
  7. input_pipeline (`input_pipeline.py`): `benchmarks/image_pipeline.py`'s
     input paths (folder, store JPEG/raw; DALI CPU and GPU where DALI is
     installed, tf.data where TensorFlow is), images/s;
then checks the GPU targets (BENCHMARKS.md, "Targets"; `targets.py`) into
met / not met / not measured, and writes OUT/gpu_check.json (everything) and
OUT/gpu_check.md (the tables for BENCHMARKS.md; `report.py`) after every
part, so a run cut short keeps what it measured. `--out` defaults to a new
directory, printed at the end. `--smoke` runs every part tiny on the CPU
(what CI runs; about two minutes): the targets then read "not measured".

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
import datetime
import importlib
import os
import pathlib
import sys
import tempfile
import time

from benchmarks.gpu import part as part_lib
from benchmarks.gpu import report as report_lib
from benchmarks.gpu import targets as targets_lib

# Before JAX starts its backend (only the parts import it, as each starts):
# PyTorch shares the GPU in this process, and the main job's own process
# takes its share later.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Seconds per part, in the order they run; a part is not started past the
# whole run's budget, and the train step starts no configuration it has no
# time left for.
BUDGETS = {
    'gpu': {'device': 15, 'train_step': 180, 'step_profile': 25,
            'cifar_main': 120, 'stacked_runs': 80, 'store_training': 60,
            'input_pipeline': 25},
    'smoke': {'device': 60, 'train_step': 300, 'step_profile': 120,
              'cifar_main': 300, 'stacked_runs': 300, 'store_training': 300,
              'input_pipeline': 120},
}
# Each part's module in benchmarks/gpu/, imported when the part starts, so
# that one which cannot import fails alone.
MODULES = {'device': 'device', 'train_step': 'step_vs_pytorch',
           'step_profile': 'step_profile', 'cifar_main': 'cifar_main',
           'stacked_runs': 'stacked_runs', 'store_training': 'store_training',
           'input_pipeline': 'input_pipeline'}


def _parser():
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
                      help='PyTorch modes (default: all four on a GPU, '
                      'max_autotune for the first configuration only; '
                      'eager,channels_last with --smoke); "none" leaves '
                      'PyTorch out')
  parser.add_argument('--budget_s', type=float, default=0,
                      help='the whole run\'s budget (default: 505 s, 1200 '
                      'with --smoke)')
  parser.add_argument('--parts', default=','.join(BUDGETS['gpu']),
                      help='a comma list of the parts')
  parser.add_argument('--out', default='',
                      help='directory for gpu_check.json and gpu_check.md '
                      '(default: a new one)')
  return parser


def parse_args(argv):
  """(args, the parts asked for); bad input is parser.error."""
  parser = _parser()
  args = parser.parse_args(argv)
  parts = [p.strip() for p in args.parts.split(',') if p.strip()]
  bad = [p for p in parts if p not in BUDGETS['gpu']]
  if bad:
    parser.error(f'--parts: {", ".join(bad)} is not one of '
                 f'{", ".join(BUDGETS["gpu"])}')
  if args.main_epochs < 0:
    parser.error(f'--main_epochs must be >= 0, got {args.main_epochs}')
  return args, parts


def _measure(name, args, clock, out, budget_s) -> dict:
  """The part's results; its module is imported here, inside the part."""
  mode = 'smoke' if args.smoke else 'gpu'
  module = importlib.import_module(f'benchmarks.gpu.{MODULES[name]}')
  if name == 'device':
    return module.facts()
  if name == 'train_step':
    modes_arg = args.pytorch_modes or module.PYTORCH_MODES[mode]
    modes_arg = '' if modes_arg == 'none' else modes_arg
    return module.measure(mode, clock, budget_s, modes_arg)
  if name == 'cifar_main':
    return module.measure(mode, clock, budget_s, args.cifar_dir,
                          args.main_epochs, out)
  if name == 'stacked_runs':
    return module.measure(mode, clock, budget_s, args.cifar_dir, out)
  if name == 'store_training':
    return module.measure(mode, clock, budget_s, out)
  return module.measure(mode)


def run_part(name, args, clock, out) -> dict:
  """One part in its own try/except: {'status': 'ok' | 'error', ...}."""
  budget_s = BUDGETS['smoke' if args.smoke else 'gpu'][name]
  clock.say(f'{name} (budget {budget_s} s)')
  begun = time.monotonic()
  try:
    part = {'status': 'ok', **_measure(name, args, clock, out, budget_s)}
  except part_lib.PartFailed as e:
    part = {'status': 'error', 'error': str(e), **e.partial}
  except Exception as e:  # pylint: disable=broad-except
    part = {'status': 'error', 'error': part_lib.error_text(e)}
  part['seconds'] = time.monotonic() - begun
  clock.say(f'{name}: {part["status"]} in {part["seconds"]:.0f} s'
            + (': ' + part['error'].strip().splitlines()[-1]
               if part['status'] == 'error' else ''))
  return part


def main(argv=None):
  args, parts = parse_args(argv)
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix='gpu_check_'))
  out.mkdir(parents=True, exist_ok=True)
  clock = part_lib.Clock(args.budget_s or (1200 if args.smoke else 505))
  report = {'command': 'python -m benchmarks.gpu_check ' + ' '.join(
      sys.argv[1:] if argv is None else argv),
            'smoke': args.smoke, 'budget_s': clock.budget_s,
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'),
            'sections': {}, '_start': clock.start}
  for name in [p for p in BUDGETS['gpu'] if p in parts]:
    if clock.left() <= 0:
      report['sections'][name] = {'status': 'skipped',
                                  'reason': 'the run\'s time budget is spent'}
      clock.say(f'{name}: skipped (time budget)')
      continue
    report['sections'][name] = run_part(name, args, clock, out)
    report_lib.write(report, out)
  report_lib.write(report, out)
  for t in report['targets']:
    clock.say(f"target {t['key']}: {t['status']} "
              f"({targets_lib.value_text(t['key'], t['value'])})")
  clock.say(f'wrote {out / "gpu_check.json"} and {out / "gpu_check.md"}')
  print(out)


if __name__ == '__main__':
  main()
