"""Where the train step's time goes: XLA's own ops, from a profiler trace.

Builds the step `benchmarks.train_step` times (the project's train step on a
fixed batch), traces a few steps with `jax.profiler`, and prints the time per
step of the costliest XLA operations with what each computes (its output
shape and the ops fused into it). On CPU several ops run at once on the
thread pool, so the rows can add up to more than the step.

  python -m benchmarks.profile_step [--model alexnet_cifar] [--batch_size 128]
      [--image_size 0] [--steps 5] [--top 25]
"""

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile

import jax

from benchmarks import train_step
from alexnet_jax.model import alexnet


def describe_ops(hlo_text: str) -> dict:
  """Op name -> 'shape <ops fused into it>' from a compiled module's text."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      current = line.split()[0].lstrip('%')
      bodies[current] = []
    elif current:
      bodies[current].append(line)
  boring = {'parameter', 'constant', 'broadcast', 'bitcast', 'reshape'}
  described = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w-]+)\((.*)', line)
    if not m:
      continue
    name, shape, op, rest = m.groups()
    if op == 'fusion':
      callee = re.search(r'calls=%([\w.\-]+)', rest)
      inner = {o.group(1) for o in (re.search(r'= \S+ ([\w-]+)\(', l)
                                    for l in bodies.get(callee and
                                                        callee.group(1), []))
               if o} - boring
      described[name] = f"{shape} <{','.join(sorted(inner))}>"
    else:
      target = re.search(r'custom_call_target="([^"]+)"', rest)
      described.setdefault(name, f'{shape} {op}' + (
          f' {target.group(1)}' if target else ''))
  return described


def op_times(step, compiled, steps: int) -> dict:
  """XLA's time per step: the whole (`xla_ms`, where the trace has it) and
  the costliest ops `[(name, ms per step, what it computes)]`, from a
  `jax.profiler` trace of `steps` calls of `step` (warmed up first). On a
  GPU the kernels carry the op they run (`hlo_op`); on the CPU the op is the
  event's own name."""
  ops = describe_ops(compiled.as_text())
  for _ in range(3):
    step()
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        step()
    trace = next(pathlib.Path(tmp).rglob('*.trace.json.gz'))
    events = json.load(gzip.open(trace))
  events = events['traceEvents'] if isinstance(events, dict) else events
  total = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e:
      name = (e.get('args') or {}).get('hlo_op') or e['name']
      total[name] += e['dur'] / 1e3 / steps
  xla = total.get('ThunkExecutor::Execute (wait for completion)')
  rows = [(name, ms, ops[name]) for name, ms in total.most_common()
          if name in ops]
  return {'xla_ms': xla, 'ops': rows, 'op_ms': sum(ms for _, ms, _ in rows)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='alexnet_cifar',
                      choices=tuple(alexnet.MODELS))
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=0)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--top', type=int, default=25)
  args = parser.parse_args()
  args.half_precision = False
  args.image_size = args.image_size or alexnet.NATIVE_INPUT_SIZE[args.model]
  step, _, _, compiled = train_step.jax_step(args, with_compiled=True)
  times = op_times(step, compiled, args.steps)
  xla = times['xla_ms']
  print(f'{args.model} batch {args.batch_size} {args.image_size}x'
        f'{args.image_size} on {jax.devices()[0].device_kind}: '
        + (f'{xla:.1f} ms per step in XLA; ' if xla else '')
        + 'costliest ops (ms per step):')
  for name, ms, what in times['ops'][:args.top]:
    print(f'  {ms:8.2f}  {name:30s} {what[:100]}')


if __name__ == '__main__':
  main()
