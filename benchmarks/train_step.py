"""How fast alexnet_jax trains here: the project's own train step, timed.

  python -m benchmarks.train_step --model=alexnet_torchvision --batch_size=32 \\
      [--image_size=224] [--half_precision] [--steps=20] [--json] \\
      [--vs_pytorch [--pytorch_modes=eager,channels_last,compile]]

Builds the step training uses (`alexnet_jax/task/steps.py`: the paper's
SGD, on-device normalization, donated state) for `--model` on a fixed uint8
batch of random images, compiles it (timed), warms it up, then times
`--steps` steps one by one. Reports the median step time and images/s, the
compile time, peak device memory where the backend reports it, and MFU: XLA's
FLOP count of the step (`flops.step_flops`) / step time / the device's peak
(`flops.PEAK_FLOPS`; none on CPU). `--vs_pytorch` times a PyTorch twin
(`pytorch_step.py`: `alexnet_jax/model/torch_twin.py`, same layers, same SGD
and batch) interleaved with ours, round by round (`timing.py`), and reports
the ratio: eager on CPU, and on accelerators also channels_last and
torch.compile (`--pytorch_modes`; "compile" is torch.compile of the
channels_last model), all under AMP with `--half_precision`; on GPUs with
TF32 matmuls and cuDNN autotuning, as XLA does by default.
`--eval_images=N` also times the project's evaluation over N images.
`--json` prints one JSON object per configuration as the last line.
"""

import json
import os
import statistics
import time

import jax
import numpy as np

from alexnet_jax import build
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import alexnet
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import evaluation
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps
from alexnet_jax.task import validation
from benchmarks import flops
from benchmarks import pytorch_step
from benchmarks import timing


def _config(args):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model, c.batch_size = args.model, args.batch_size
  c.image_size = args.image_size
  c.half_precision = args.half_precision
  c.dataset, c.crop_padding, c.random_flip = 'fake', 0, False
  c.schedule, c.num_classes = 'constant', 1000
  return c


def _setup(args):
  """(config, mesh, model, train state, input spec) as training builds them."""
  config = _config(args)
  mesh = mesh_lib.make_mesh()
  model = build.model(config, config.num_classes)
  side = args.image_size
  tx, _ = build.optimizer(config, build.durations(config, 100))
  state, _ = state_lib.create_train_state(model, tx, (side, side, 3), 0, mesh)
  spec = build.input_spec(config, build.dataset(config), side)
  return config, mesh, model, state, spec


def jax_step(args, with_compiled=False):
  """(run_one_step, compile_s, flops_per_step[, compiled]) for our step."""
  config, mesh, model, state, spec = _setup(args)
  side = args.image_size
  step = steps.make_train_step(spec, config.num_classes,
                               log_every=config.log_every_steps)
  rng = np.random.default_rng(0)
  batch_sharding = mesh_lib.batch(mesh)
  images = jax.device_put(rng.integers(
      0, 256, (args.batch_size, side, side, 3), dtype=np.uint8), batch_sharding)
  labels = jax.device_put(rng.integers(
      0, config.num_classes, (args.batch_size,), dtype=np.int32),
      batch_sharding)
  start = time.perf_counter()
  batch = {'images': images, 'labels': labels}
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  step_flops = flops.step_flops(model, args.batch_size, side)
  holder = {'state': state}

  def one():
    holder['state'] = compiled(holder['state'], batch)
    jax.block_until_ready(holder['state'])

  if with_compiled:
    return one, compile_s, step_flops, compiled
  return one, compile_s, step_flops


def eval_rate(args) -> dict:
  """The project's evaluation (the scan over a whole on-device split, padded
  and masked, each image and its reflection as every epoch's val pass),
  over `--eval_images` random images: median of 5 passes."""
  config, mesh, model, state, spec = _setup(args)
  side = args.image_size
  evaluate = evaluation.Evaluator(
      evaluation.make_logits_fn(spec, model.apply), config.eval_batch_size,
      mesh, config.num_classes).over_arrays
  rng = np.random.default_rng(1)
  n = args.eval_images
  # Replicated, as training keeps its val and test splits.
  images = mesh_lib.put_replicated(
      rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), mesh)
  labels = mesh_lib.put_replicated(
      rng.integers(0, config.num_classes, (n,), dtype=np.int32), mesh)
  start = time.perf_counter()
  variables = state_lib.eval_variables(state)
  compiled = evaluate.lower(variables, images, labels).compile()
  compile_s = time.perf_counter() - start
  run_once = lambda: jax.block_until_ready(compiled(variables, images,
                                                    labels))
  run_once()
  eval_s = statistics.median(timing.timed(run_once, 5))
  return {'eval_images': n, 'eval_batch_size': config.eval_batch_size,
          'eval_ms': 1e3 * eval_s, 'eval_images_per_sec': n / eval_s,
          'eval_compile_s': compile_s,
          'eval_views': (10 if config.ten_crop else 1) * (
              2 if config.eval_flip else 1)}


def _first_step(fn):
  """Seconds of a step's first call (torch.compile compiles in it)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _pytorch_steps(args, modes, where, failed):
  """({mode: run_one_step}, {mode: its first call's seconds}) of the twin.

  With a dict `failed`, a mode whose build or first step raises is left out
  and its error kept there, {mode: 'Type: message'}, so one failing mode
  (torch.compile, say) loses none of the others."""
  model = alexnet.create_model(args.model, num_classes=1000)
  fns, first_s = {}, {}
  for mode in modes:
    if failed is None:
      fns[mode] = pytorch_step.torch_step(args, model, mode, where)
      continue
    try:
      fn = pytorch_step.torch_step(args, model, mode, where)
      first_s[mode] = _first_step(fn)
      fns[mode] = fn
    except Exception as e:  # pylint: disable=broad-except
      failed[mode] = f'{type(e).__name__}: {e}'[:2000]
  return fns, first_s


def _peak_memory(device):
  """Peak bytes in use on the device, where its backend reports it."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  return (stats or {}).get('peak_bytes_in_use')


def run(args, modes=(), where=None, failed=None, settle_s=0.5) -> dict:
  """Times our step, and the PyTorch twin in each of `modes` on `where`
  (`failed`: see _pytorch_steps)."""
  args.image_size = args.image_size or alexnet.NATIVE_INPUT_SIZE[args.model]
  device = jax.devices()[0]
  ours, compile_s, step_flops = jax_step(args)
  theirs, first_s = _pytorch_steps(args, modes, where, failed)
  times, warmup_s = timing.interleaved_times(
      {'alexnet_jax': ours, **theirs}, args, settle_s)
  for mode, seconds in first_s.items():  # Its first call was warm-up too.
    warmup_s[mode] += seconds
  dtype = 'bfloat16' if args.half_precision else 'float32'
  step_s = statistics.median(times['alexnet_jax'])
  peak = flops.peak_flops(device, dtype)
  result = {
      'model': args.model, 'batch_size': args.batch_size,
      'image_size': args.image_size, 'dtype': dtype,
      'images_per_sec': args.batch_size / step_s, 'step_ms': 1e3 * step_s,
      'compile_s': compile_s, 'flops_per_step': step_flops,
      'mfu': step_flops / step_s / peak if (step_flops and peak) else None,
      'peak_memory_bytes': _peak_memory(device),
      'device': f'{device.platform}:{device.device_kind}',
      'devices': jax.device_count(), 'jax': jax.__version__,
      'steps': len(times['alexnet_jax']),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  if theirs:
    result.update(pytorch_step.pytorch_fields(args, times, warmup_s, step_s,
                                              where))
  if args.eval_images:
    result.update(eval_rate(args))
  return result


def _parser():
  parser = cli.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='alexnet_torchvision',
                      choices=tuple(alexnet.MODELS))
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--image_size', type=int, default=0,
                      help="input side (0: the preset's own)")
  parser.add_argument('--half_precision', action='store_true')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--vs_pytorch', action='store_true')
  parser.add_argument(
      '--pytorch_modes', default='',
      help='with --vs_pytorch, a comma list of '
      f'{", ".join(pytorch_step.PYTORCH_MODES)} '
      '(default: eager on CPU, all on accelerators); AMP with '
      '--half_precision')
  parser.add_argument('--eval_images', type=int, default=0,
                      help='also time evaluation over this many images')
  parser.add_argument('--json', action='store_true')
  return parser


def parse_args(argv=None):
  """(args, PyTorch modes, PyTorch's device); bad input is parser.error."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.pytorch_modes and not args.vs_pytorch:
    parser.error('--pytorch_modes needs --vs_pytorch')
  if args.vs_pytorch:  # Leave PyTorch the accelerator memory it needs.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  try:
    validation.validate_config(_config(args))
  except ConfigError as e:
    parser.error(str(e))
  if args.steps < 1:
    parser.error(f'--steps must be >= 1, got {args.steps}')
  if args.eval_images < 0:
    parser.error(f'--eval_images must be >= 0, got {args.eval_images}')
  if not args.vs_pytorch:
    return args, (), None
  if jax.device_count() > 1:
    parser.error(f'--vs_pytorch compares one device with one device, and '
                 f'JAX sees {jax.device_count()}: make one visible (e.g. '
                 'CUDA_VISIBLE_DEVICES=0)')
  try:
    platform = jax.devices()[0].platform
    return (args, pytorch_step.pytorch_modes(args.pytorch_modes, platform),
            pytorch_step.torch_device(platform))
  except ConfigError as e:
    parser.error(str(e))


def report(r: dict):
  line = (f"{r['model']} batch {r['batch_size']} {r['image_size']}x"
          f"{r['image_size']} {r['dtype']} on {r['device']}: "
          f"{r['step_ms']:.1f} ms/step, {r['images_per_sec']:.1f} img/s, "
          f"compile {r['compile_s']:.1f} s, "
          f"{(r['flops_per_step'] or 0) / 1e9:.1f} GFLOP/step")
  if r['mfu'] is not None:
    line += f", MFU {100 * r['mfu']:.1f}%"
  print(line)
  if 'eval_ms' in r:
    print(f"evaluation of {r['eval_images']} images (and their reflections): "
          f"{r['eval_ms']:.1f} ms, {r['eval_images_per_sec']:.1f} img/s, "
          f"compile {r['eval_compile_s']:.1f} s")
  for row in r.get('vs_pytorch', ()):
    print(f"PyTorch {r['pytorch']} {row['mode']}: {row['step_ms']:.1f} "
          f"ms/step, {row['images_per_sec']:.1f} img/s; alexnet_jax is "
          f"{row['speedup']:.2f}x")
  if r.get('vs_pytorch'):
    print(f"against PyTorch at its best here ({r['best_pytorch_mode']}): "
          f"{r['speedup_vs_best_pytorch']:.2f}x")


def main(argv=None):
  args, modes, where = parse_args(argv)
  r = run(args, modes, where)
  report(r)
  if args.json:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
