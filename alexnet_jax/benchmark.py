"""How fast alexnet_jax trains here: the project's own train step, timed.

  python -m alexnet_jax.benchmark --model=alexnet_torchvision --batch_size=32 \\
      [--image_size=224] [--half_precision] [--steps=20] [--json] \\
      [--vs_pytorch [--pytorch_modes=eager,channels_last,compile]]

Builds the step training uses (`task/steps.py`: the paper's SGD,
on-device normalization, donated state) for `--model` on a fixed uint8 batch
of random images, compiles it (timed), warms it up, then times `--steps`
steps one by one. Reports the median step time and images/s, the compile
time, peak device memory where the backend reports it, and MFU: the compiled
step's FLOPs (XLA's cost analysis) / step time / the device's peak
(`PEAK_FLOPS`; none on CPU). `--vs_pytorch` times a PyTorch twin
(`model/torch_twin.py`, same layers, same SGD and batch) interleaved
with ours, round by round, and reports the ratio: eager on CPU, and on
accelerators also channels_last and torch.compile (`--pytorch_modes`;
"compile" is torch.compile of the channels_last model), all under AMP with
`--half_precision`; on GPUs with TF32 matmuls and cuDNN autotuning, as XLA
does by default. `--eval_images=N` also times the
project's evaluation over N images. `--json` prints one JSON
object per configuration as the last line.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import registry
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import alexnet
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import config as config_lib
from alexnet_jax.task import evaluation
from alexnet_jax.task import optim
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps

# Dense peak FLOP/s per device by (device_kind prefix, dtype). float32
# matmuls on NVIDIA GPUs run as TF32 under XLA's default precision, so their
# float32 peak is the TF32 one. Vendor datasheets (SXM parts for NVIDIA).
PEAK_FLOPS = {
    ('NVIDIA H100', 'bfloat16'): 989e12, ('NVIDIA H100', 'float32'): 494e12,
    ('NVIDIA H200', 'bfloat16'): 989e12, ('NVIDIA H200', 'float32'): 494e12,
    ('NVIDIA A100', 'bfloat16'): 312e12, ('NVIDIA A100', 'float32'): 156e12,
    ('TPU v4', 'bfloat16'): 275e12, ('TPU v5 lite', 'bfloat16'): 197e12,
    ('TPU v5e', 'bfloat16'): 197e12, ('TPU v5p', 'bfloat16'): 459e12,
    ('TPU v6', 'bfloat16'): 918e12,
}


def peak_flops(device, dtype: str):
  for (prefix, kind), flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(prefix) and kind == dtype:
      return flops
  return None


def _config(args):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model, c.batch_size = args.model, args.batch_size
  c.image_size = args.image_size
  c.half_precision = args.half_precision
  c.dataset, c.crop_padding, c.random_flip = 'fake', 0, False
  c.schedule, c.num_classes = 'constant', 1000
  return c


def step_flops(model, batch_size: int, side: int) -> float:
  """XLA's FLOP count of the step's forward and backward pass (the
  optimizer's few FLOPs aside), lowered for the CPU whatever runs the step:
  on GPU the step's convolutions are cuDNN custom calls that its cost
  analysis counts as nothing (7.6 GFLOP for a 990 GFLOP step on an H200)."""
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  on_cpu = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu)
  images = jax.ShapeDtypeStruct((batch_size, side, side, 3), jnp.float32,
                                sharding=cpu)
  variables = jax.tree.map(on_cpu, jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)))))

  def loss(params, rest, x):  # Dropout and batch statistics aside.
    return model.apply({**rest, 'params': params}, x).astype(
        jnp.float32).sum()

  rest = {k: v for k, v in variables.items() if k != 'params'}
  analysis = jax.jit(jax.grad(loss)).lower(
      variables['params'], rest, images).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float(analysis.get('flops', 0.)) if analysis else None


IMAGENET_MEAN_STD = (registry.IMAGENET_MEAN, registry.IMAGENET_STD)


def _setup(args):
  """(config, mesh, model, train state) as training builds them."""
  config = _config(args)
  mesh = mesh_lib.make_mesh()
  model = state_lib.make_model(config, config.num_classes)
  side = args.image_size
  tx, _ = optim.make_optimizer(
      config, config_lib.Durations.from_steps_per_epoch(config, 100))
  state, _ = state_lib.create_train_state(model, tx, (side, side, 3), 0, mesh)
  return config, mesh, model, state


def jax_step(args, with_compiled=False):
  """(run_one_step, compile_s, flops_per_step[, compiled]) for our step."""
  config, mesh, model, state = _setup(args)
  side = args.image_size
  step = steps.make_train_step(config, model, config.num_classes,
                               *IMAGENET_MEAN_STD, side)
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
  flops = step_flops(model, args.batch_size, side)
  holder = {'state': state}

  def one():
    holder['state'] = compiled(holder['state'], batch)
    jax.block_until_ready(holder['state'])

  if with_compiled:
    return one, compile_s, flops, compiled
  return one, compile_s, flops


def eval_rate(args) -> dict:
  """The project's evaluation (the scan over a whole on-device split, padded
  and masked, each image and its reflection as every epoch's val pass),
  over `--eval_images` random images: median of 5 passes."""
  config, mesh, model, state = _setup(args)
  side = args.image_size
  evaluate = evaluation.scan_evaluator(
      evaluation.make_logits_fn(config, model, *IMAGENET_MEAN_STD, side),
      config.eval_batch_size, mesh, config.num_classes)
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
  eval_s = statistics.median(timed(run_once, 5))
  return {'eval_images': n, 'eval_batch_size': config.eval_batch_size,
          'eval_ms': 1e3 * eval_s, 'eval_images_per_sec': n / eval_s,
          'eval_compile_s': compile_s,
          'eval_views': (10 if config.ten_crop else 1) * (
              2 if config.eval_flip else 1)}


PYTORCH_MODES = ('eager', 'channels_last', 'compile')


def pytorch_modes(arg: str, platform: str) -> tuple:
  """The PyTorch variants to time: `arg` (comma list), or by default eager
  alone on CPU and every variant on accelerators."""
  if not arg:
    return ('eager',) if platform == 'cpu' else PYTORCH_MODES
  modes = tuple(m.strip() for m in arg.split(','))
  bad = [m for m in modes if m not in PYTORCH_MODES]
  if bad or not modes:
    raise ConfigError(f'--pytorch_modes {arg!r}: {", ".join(bad) or "empty"} '
                     f'is not one of {", ".join(PYTORCH_MODES)}')
  return modes


def torch_device(platform: str) -> str:
  """Where the twin runs: JAX's device, one of it (see main)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError('--vs_pytorch needs PyTorch: pip install -r '
                      'requirements-parity.txt') from None
  if platform == 'gpu':
    if not torch.cuda.is_available():
      raise ConfigError(f'JAX runs on the GPU but PyTorch {torch.__version__} '
                        'has no CUDA: install a CUDA build of torch==2.13.0 '
                        'to compare on the same device')
    # What XLA does by default on GPUs: TF32 matmuls, tuned convolutions.
    torch.set_float32_matmul_precision('high')
    torch.backends.cudnn.benchmark = True
    return 'cuda'
  if platform != 'cpu':
    raise ConfigError(f'--vs_pytorch compares on the same device; PyTorch '
                      f'does not run on {platform}')
  return 'cpu'


def torch_step(args, model, mode: str, device: str):
  """run_one_step for the PyTorch twin in `mode`; AMP (bf16 autocast) with
  --half_precision, as ours computes in bf16 then."""
  import torch  # pylint: disable=g-import-not-at-top
  from alexnet_jax.model import torch_twin  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  side = args.image_size
  step, _ = torch_twin.make_step(
      model, args.batch_size, side, channels_last=mode != 'eager',
      compile_model=mode == 'compile', amp=args.half_precision,
      device=device)
  images = torch.randint(0, 256, (args.batch_size, 3, side, side),
                         dtype=torch.uint8, device=device)
  labels = torch.randint(0, 1000, (args.batch_size,), device=device)
  return lambda: step(images, labels).item()  # .item() waits for the device.


def timed(fn, n):
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def interleaved_times(steps: dict, args, settle_s: float = 0.5):
  """({name: [seconds per step]}, {name: warm-up seconds}): each step warmed
  up, then timed in interleaved rounds, so drift hits all alike."""
  warmup_s = {}
  for name, fn in steps.items():  # torch.compile compiles on the first call.
    start = time.perf_counter()
    timed(fn, args.warmup)
    warmup_s[name] = time.perf_counter() - start
  times = {name: [] for name in steps}
  rounds = 4 if len(steps) > 1 else 1
  per_round = -(-args.steps // rounds)
  for _ in range(rounds):
    for name, fn in steps.items():
      # The other framework's thread pool spins for a while after its last
      # step; let it go idle, and leave the first step of a round untimed.
      time.sleep(settle_s if len(steps) > 1 else 0.)
      fn()
      times[name] += timed(fn, per_round)
  return times, warmup_s


def pytorch_fields(args, times, warmup_s, step_s, where) -> dict:
  """The PyTorch rows (one per mode) and the flat fields of the first."""
  import torch  # pylint: disable=g-import-not-at-top
  rows = []
  for mode in list(times)[1:]:
    torch_s = statistics.median(times[mode])
    rows.append({'mode': mode + ('+amp' if args.half_precision else ''),
                 'step_ms': 1e3 * torch_s,
                 'images_per_sec': args.batch_size / torch_s,
                 'speedup': torch_s / step_s, 'warmup_s': warmup_s[mode]})
  first = rows[0]  # Flat fields: the first mode (eager by default).
  return dict(pytorch_images_per_sec=first['images_per_sec'],
              pytorch_step_ms=first['step_ms'],
              speedup_vs_pytorch=first['speedup'],
              pytorch=torch.__version__, pytorch_mode=first['mode'],
              pytorch_device=where,
              pytorch_float32_matmul_precision=(
                  torch.get_float32_matmul_precision()),
              vs_pytorch=rows)


def _first_step(fn):
  """Seconds of a step's first call (torch.compile compiles in it)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(args, modes=(), where=None, failed=None, settle_s=0.5) -> dict:
  """Times our step, and the PyTorch twin in each of `modes` on `where`.

  With a dict `failed`, a PyTorch mode whose build or first step raises is
  left out and its error kept there, {mode: 'Type: message'}, so one
  failing mode (torch.compile, say) loses none of the others."""
  model = alexnet.create_model(args.model, num_classes=1000)
  args.image_size = args.image_size or alexnet.NATIVE_INPUT_SIZE[args.model]
  device = jax.devices()[0]
  ours, compile_s, flops = jax_step(args)
  steps, first_s = {'alexnet_jax': ours}, {}
  for mode in modes:
    if failed is None:
      steps[mode] = torch_step(args, model, mode, where)
      continue
    try:
      fn = torch_step(args, model, mode, where)
      first_s[mode] = _first_step(fn)
      steps[mode] = fn
    except Exception as e:  # pylint: disable=broad-except
      failed[mode] = f'{type(e).__name__}: {e}'[:2000]
  times, warmup_s = interleaved_times(steps, args, settle_s)
  for mode, seconds in first_s.items():  # Its first call was warm-up too.
    warmup_s[mode] += seconds
  dtype = 'bfloat16' if args.half_precision else 'float32'
  step_s = statistics.median(times['alexnet_jax'])
  peak = peak_flops(device, dtype)
  memory = (device.memory_stats() or {}).get('peak_bytes_in_use') if hasattr(
      device, 'memory_stats') else None
  result = {
      'model': args.model, 'batch_size': args.batch_size,
      'image_size': args.image_size, 'dtype': dtype,
      'images_per_sec': args.batch_size / step_s, 'step_ms': 1e3 * step_s,
      'compile_s': compile_s, 'flops_per_step': flops,
      'mfu': flops / step_s / peak if (flops and peak) else None,
      'peak_memory_bytes': memory,
      'device': f'{device.platform}:{device.device_kind}',
      'devices': jax.device_count(), 'jax': jax.__version__,
      'steps': len(times['alexnet_jax']),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  if len(steps) > 1:
    result.update(pytorch_fields(args, times, warmup_s, step_s, where))
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
      help=f'with --vs_pytorch, a comma list of {", ".join(PYTORCH_MODES)} '
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
    config_lib.validate_config(_config(args))
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
    return (args, pytorch_modes(args.pytorch_modes, platform),
            torch_device(platform))
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


def main(argv=None):
  args, modes, where = parse_args(argv)
  r = run(args, modes, where)
  report(r)
  if args.json:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
