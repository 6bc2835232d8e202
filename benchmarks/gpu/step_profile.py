"""Part 3 of the GPU check: where the target step's time goes (the bfloat16
`alexnet_torchvision` step at batch 256): XLA's profile of a few steps, the
costliest ops with what each computes, and their share of the step, so the
next MFU change starts from a measurement (`benchmarks/profile_step.py`)."""

import argparse
import collections
import re

from benchmarks import profile_step
from benchmarks import train_step
from benchmarks.gpu import targets

SHAPES = {'gpu': (targets.TARGET_MODEL, targets.TARGET_BATCH, True, 10),
          'smoke': ('alexnet_tiny', 8, False, 2)}  # model, batch, bf16, steps
TOP = 12


def kind(what: str) -> str:
  """An op's family from its description (`profile_step.describe_ops`):
  convolutions (cuDNN's or XLA's), matmuls (cuBLAS's or a dot), reductions
  (pooling and its gradient, sums), random bits (dropout), the rest
  elementwise (ReLU, bias, the optimizer's update)."""
  low = what.lower()
  ops = set(re.findall(r'[\w-]+', low.split('<', 1)[-1]))
  if 'convolution' in ops or 'cudnn$conv' in low:
    return 'convolution'
  if 'dot' in ops or 'cublas' in low or 'gemm' in low:
    return 'matmul'
  if 'rng-bit-generator' in ops:
    return 'random bits'
  if ops & {'reduce', 'reduce-window', 'select-and-scatter'}:
    return 'reduce'
  return 'elementwise / other'


def measure(mode: str) -> dict:
  model, batch, half, n = SHAPES[mode]
  args = argparse.Namespace(model=model, batch_size=batch, image_size=0,
                            half_precision=half)
  args.image_size = profile_step.alexnet.NATIVE_INPUT_SIZE[model]
  step, _, _, compiled = train_step.jax_step(args, with_compiled=True)
  times = profile_step.op_times(step, compiled, n)
  by_kind = collections.Counter()
  for _, ms, what in times['ops']:
    by_kind[kind(what)] += ms
  total = times['op_ms'] or None
  return {
      'model': model, 'batch_size': batch,
      'dtype': 'bfloat16' if half else 'float32', 'steps_traced': n,
      'xla_ms': times['xla_ms'], 'op_ms': times['op_ms'],
      'by_kind_ms': dict(by_kind.most_common()),
      'top': [{'op': name, 'ms': ms, 'share': ms / total if total else None,
               'what': what[:120]} for name, ms, what in times['ops'][:TOP]]}
