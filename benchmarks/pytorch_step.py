"""The PyTorch twin's step (`alexnet_jax/model/torch_twin.py`), built to be
timed beside ours (`python -m benchmarks.train_step --vs_pytorch`): which
modes, on which device, and the rows it reports."""

import statistics

from alexnet_jax.errors import ConfigError

# eager; eager on channels_last tensors; torch.compile of the channels_last
# model; and PyTorch at its best: channels_last, the normalization compiled
# with the model by torch.compile(mode='max-autotune') (with CUDA graphs on
# GPUs; 'max-autotune-no-cudagraphs' on CPUs), and the fused SGD kernel.
PYTORCH_MODES = ('eager', 'channels_last', 'compile', 'max_autotune')
# The default on CPUs: eager and its fastest eager form (channels_last is
# 1.1-1.3x eager there); max_autotune compiles for minutes on two cores.
CPU_MODES = ('eager', 'channels_last')


def pytorch_modes(arg: str, platform: str) -> tuple:
  """The PyTorch variants to time: `arg` (comma list), or by default
  CPU_MODES on CPU and every variant on accelerators."""
  if not arg:
    return CPU_MODES if platform == 'cpu' else PYTORCH_MODES
  modes = tuple(m.strip() for m in arg.split(','))
  bad = [m for m in modes if m not in PYTORCH_MODES]
  if bad or not modes:
    raise ConfigError(f'--pytorch_modes {arg!r}: {", ".join(bad) or "empty"} '
                     f'is not one of {", ".join(PYTORCH_MODES)}')
  return modes


def torch_device(platform: str) -> str:
  """Where the twin runs: JAX's device, the one device it sees (see
  train_step.parse_args)."""
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
  autotune = mode == 'max_autotune'
  step, _ = torch_twin.make_step(
      model, args.batch_size, side, channels_last=mode != 'eager',
      compile_model=mode == 'compile', amp=args.half_precision,
      device=device, fused=autotune, compile_mode=(
          ('max-autotune' if device == 'cuda' else
           'max-autotune-no-cudagraphs') if autotune else None))
  images = torch.randint(0, 256, (args.batch_size, 3, side, side),
                         dtype=torch.uint8, device=device)
  labels = torch.randint(0, 1000, (args.batch_size,), device=device)
  return lambda: step(images, labels).item()  # .item() waits for the device.

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
  best = min(rows, key=lambda r: r['step_ms'])  # PyTorch at its best here.
  return dict(pytorch_images_per_sec=first['images_per_sec'],
              pytorch_step_ms=first['step_ms'],
              speedup_vs_pytorch=first['speedup'],
              best_pytorch_mode=best['mode'],
              speedup_vs_best_pytorch=best['speedup'],
              pytorch=torch.__version__, pytorch_mode=first['mode'],
              pytorch_device=where,
              pytorch_float32_matmul_precision=(
                  torch.get_float32_matmul_precision()),
              vs_pytorch=rows)
