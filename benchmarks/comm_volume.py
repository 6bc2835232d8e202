"""Communication per train step, measured from the compiled step's HLO.

For each simulated device count N (a subprocess per N, started with
XLA_FLAGS=--xla_force_host_platform_device_count=N, since JAX reads the flag
at import), each model and each layout, builds the train step exactly as
training does (`benchmarks/lowering.py`, through training's builders:
the mesh, the model, the optimizer, the train state and step), lowers and
compiles it for abstract inputs (the state's shapes and shardings from
`jax.eval_shape`, the batch as a ShapeDtypeStruct: nothing is allocated and
the step is never run), and reads every collective in the optimized HLO
(`compiled.as_text()`).

What is counted, per collective kind (all-reduce, all-gather, reduce-scatter,
all-to-all, collective-permute; their async `-start` forms count once, `-done`
never):
  * ops: how many such instructions the per-device program holds;
  * bytes: the sum of the op's operand sizes in that per-device program, i.e.
    the data each device hands to the collective per step (for an all-reduce
    the local gradient, for an all-gather the local shard);
  * wire: what a ring algorithm then sends per device, from the replica-group
    size n: all-reduce 2(n-1)/n x bytes, all-gather (n-1) x bytes,
    reduce-scatter and all-to-all (n-1)/n x bytes, collective-permute bytes.
    An estimate of the algorithm, not a measurement of a network.

Layouts: 'dp' (pure data parallelism), 'fc_model' (fc6-fc8 split over a
'model' axis of size --model_parallelism, `mesh.state_shardings`) and
'towers' (the paper's two towers on a 'tower' device pair,
config.tower_parallelism = 2), which is skipped with a note while the code
base's config has no `tower_parallelism`.

  python -m benchmarks.comm_volume [--devices 8,64]
      [--models alexnet_paper,alexnet_torchvision] [--layouts dp,fc_model]
      [--batch 128] [--model_parallelism 8] [--dtypes f32] [--json]

--batch is the global batch (split over all devices). The CPU compiler's
collective passes (combiners, async conversion) differ from the GPU's, so the
op counts may differ on a GPU; the bytes are fixed by the sharding.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
         'collective-permute')
DTYPE_BYTES = {
    'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
    's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8,
    'c128': 16, 'f8e4m3fn': 1, 'f8e5m2': 1, 's4': 0.5, 'u4': 0.5,
}
# Each layout as config overrides: adding one is one line here.
LAYOUTS = {
    'dp': lambda args: {},
    'fc_model': lambda args: {'model_parallelism': args.model_parallelism},
    'towers': lambda args: {'tower_parallelism': 2},
}

_SHAPE = re.compile(r'\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]')
_OP = re.compile(r'\s(' + '|'.join(KINDS) + r')(-start)?\(')


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in `text` ('f32[4096,9216]{1,0}', tuples
  '(bf16[2,3]{1,0}, s32[])' alike); token/unknown types count 0."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype not in DTYPE_BYTES:
      continue
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * DTYPE_BYTES[dtype]
  return int(total)


def _operands(line: str, start: int) -> str:
  """The text inside the parentheses opening at line[start]."""
  depth = 0
  for i in range(start, len(line)):
    if line[i] == '(':
      depth += 1
    elif line[i] == ')':
      depth -= 1
      if depth == 0:
        return line[start + 1:i]
  return line[start + 1:]


def group_size(line: str, n_devices: int) -> int:
  """Devices per replica group: '{{0,1},{2,3}}', iota '[2,4]<=[8]', the
  mesh form "mesh['axis_0'=2,'axis_1'=4] {'axis_1'}", or none (all)."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    n = 1
    for axis in re.findall(r"'([^']+)'", m.group(2)):
      n *= sizes[axis]
    return n
  m = re.search(r'replica_groups=\[([0-9,]+)\]<=', line)
  if m:
    return int(m.group(1).split(',')[-1])
  m = re.search(r'replica_groups=\{\{([0-9,]*)\}', line)
  if m:
    return len(m.group(1).split(','))
  return n_devices


def _wire(kind: str, nbytes: int, n: int) -> float:
  if n <= 1:
    return 0.
  return {'all-reduce': 2 * (n - 1) / n * nbytes,
          'all-gather': (n - 1) * nbytes,
          'reduce-scatter': (n - 1) / n * nbytes,
          'all-to-all': (n - 1) / n * nbytes,
          'collective-permute': nbytes}[kind]


_DEF = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?) [a-z][a-z0-9\-]*\(')


def _operand_bytes(args: str, types: dict):
  """Bytes of an operand list: typed ('f32[2]{0} %x') or by name ('%x')."""
  typed = shape_bytes(args)
  if typed:
    return typed
  names = re.findall(r'%([\w.\-]+)', args)
  if not names or any(n not in types for n in names):
    return None
  return sum(shape_bytes(types[n]) for n in names)


def collectives(hlo: str, n_devices: int) -> dict:
  """{kind: {'ops', 'bytes', 'wire'}} over the collectives in an HLO module
  (operand bytes per device; see the module docstring)."""
  types = {}  # Instruction names are unique in a module.
  for line in hlo.splitlines():
    m = _DEF.match(line)
    if m:
      types[m.group(1)] = m.group(2)
  out = {k: {'ops': 0, 'bytes': 0, 'wire': 0.} for k in KINDS}
  for line in hlo.splitlines():
    if ' = ' not in line:
      continue
    m = _OP.search(line, line.index(' = '))
    if not m:
      continue
    kind, start = m.group(1), m.group(2)
    n = group_size(line, n_devices)
    nbytes = _operand_bytes(_operands(line, m.end() - 1), types)
    if nbytes is None:  # From the result: the gathered / scattered size.
      result = shape_bytes(line[line.index(' = ') + 3:m.start()])
      if start:  # (operands, results[, contexts]) in an async start.
        raise ValueError(f'operands of an async collective unknown: {line}')
      nbytes = {'all-gather': result // max(n, 1),
                'reduce-scatter': result * n}.get(kind, result)
    out[kind]['ops'] += 1
    out[kind]['bytes'] += nbytes
    out[kind]['wire'] += _wire(kind, nbytes, n)
  return out


def _config(model, batch, half_precision, overrides):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model, c.batch_size, c.half_precision = model, batch, half_precision
  c.dataset, c.crop_padding, c.random_flip = 'fake', 0, False
  c.schedule, c.num_classes = 'constant', 1000
  for key, value in overrides.items():
    if key not in c:
      return None
    setattr(c, key, value)
  return c


def compiled_step(config, side: int):
  """The train step as training builds it (`lowering.lower_train_step`),
  compiled for abstract inputs; (compiled, mesh, parameter bytes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from benchmarks import lowering  # pylint: disable=g-import-not-at-top
  lowered = lowering.lower_train_step(config, num_classes=config.num_classes,
                                      side=side)
  state = lowered.args_info[0][0]  # The train state's abstract arguments.
  params = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(state.params))
  mesh = mesh_lib.make_mesh(config.model_parallelism,
                            config.tower_parallelism)
  return lowered.compile(), mesh, params


def _worker(args):
  """In a process that sees --worker devices: one JSON line per case."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.model import alexnet  # pylint: disable=g-import-not-at-top
  n = jax.device_count()
  assert n == args.worker, (n, args.worker)
  for model in args.models.split(','):
    side = args.image_size or alexnet.NATIVE_INPUT_SIZE[model]
    for layout in args.layouts.split(','):
      for dtype in args.dtypes.split(','):
        row = {'devices': n, 'model': model, 'layout': layout, 'dtype': dtype,
               'batch': args.batch, 'side': side}
        config = _config(model, args.batch, dtype == 'bf16',
                         LAYOUTS[layout](args))
        if config is None:
          row['skipped'] = (f"layout {layout!r}: this code base's config has "
                            'no ' + ', '.join(LAYOUTS[layout](args)))
          print(json.dumps(row), flush=True)
          continue
        start = time.perf_counter()
        try:
          compiled, mesh, params = compiled_step(config, side)
        except ValueError as e:  # e.g. a parallelism that does not divide N
          row['skipped'] = str(e)
          print(json.dumps(row), flush=True)
          continue
        row['compile_s'] = round(time.perf_counter() - start, 1)
        row['mesh'] = dict(mesh.shape)
        row['param_bytes'] = params
        row['collectives'] = collectives(compiled.as_text(), n)
        if args.dump_hlo:
          path = os.path.join(args.dump_hlo, f'{model}_{layout}_{dtype}_{n}.hlo')
          with open(path, 'w') as f:
            f.write(compiled.as_text())
        print(json.dumps(row), flush=True)


def run_devices(n: int, args) -> list:
  """The rows for N simulated devices, from a subprocess."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={n}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, [repo, env.get('PYTHONPATH', '')]))
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  cmd = [sys.executable, '-m', 'benchmarks.comm_volume', '--worker', str(n),
         '--models', args.models, '--layouts', args.layouts, '--dtypes',
         args.dtypes, '--batch', str(args.batch), '--model_parallelism',
         str(args.model_parallelism), '--image_size', str(args.image_size)]
  if args.dump_hlo:
    cmd += ['--dump_hlo', args.dump_hlo]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f'{n} devices failed:\n{proc.stderr[-4000:]}')
  return [json.loads(line) for line in proc.stdout.splitlines()
          if line.startswith('{')]


def _mb(x) -> str:
  return f'{x / 1e6:.1f}'


def table(rows) -> str:
  """A markdown table: per-device MB per step and op counts by kind."""
  lines = [
      '| devices | model | layout (mesh) | dtype | all-reduce MB (ops) | '
      'all-gather MB (ops) | reduce-scatter MB (ops) | all-to-all MB (ops) | '
      'permute MB (ops) | total MB | ring wire MB | compile s |',
      '|' + '---|' * 12]
  for r in rows:
    if 'skipped' in r:
      lines.append(f"| {r['devices']} | {r['model']} | {r['layout']} | "
                   f"{r['dtype']} | skipped: {r['skipped']} |" + ' |' * 7)
      continue
    c = r['collectives']
    mesh = 'x'.join(f'{k}={v}' for k, v in r['mesh'].items() if v > 1) or '-'
    cells = [f"{_mb(c[k]['bytes'])} ({c[k]['ops']})" for k in KINDS]
    total = sum(c[k]['bytes'] for k in KINDS)
    wire = sum(c[k]['wire'] for k in KINDS)
    lines.append(f"| {r['devices']} | {r['model']} | {r['layout']} ({mesh}) | "
                 f"{r['dtype']} | " + ' | '.join(cells) +
                 f' | {_mb(total)} | {_mb(wire)} | {r["compile_s"]} |')
  return '\n'.join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--devices', default='8,64')
  p.add_argument('--models', default='alexnet_paper,alexnet_torchvision')
  p.add_argument('--layouts', default='dp,fc_model,towers')
  p.add_argument('--dtypes', default='f32',
                 help="comma list of 'f32' and 'bf16' (half_precision)")
  p.add_argument('--batch', type=int, default=128,
                 help='the global batch, split over all devices')
  p.add_argument('--model_parallelism', type=int, default=8,
                 help="the 'model' axis of the fc_model layout")
  p.add_argument('--image_size', type=int, default=0,
                 help="0: each model's native side")
  p.add_argument('--dump_hlo', default='',
                 help='a folder to write each compiled HLO into')
  p.add_argument('--json', action='store_true')
  p.add_argument('--worker', type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return _worker(args)
  for layout in args.layouts.split(','):
    if layout not in LAYOUTS:
      p.error(f'unknown layout {layout!r}: one of {sorted(LAYOUTS)}')
  rows = []
  for n in map(int, args.devices.split(',')):
    start = time.perf_counter()
    got = run_devices(n, args)
    print(f'# {n} devices: {time.perf_counter() - start:.0f} s', file=sys.stderr)
    for r in got:
      if 'skipped' in r:
        print(f"# note: {r['devices']} devices, {r['model']}, {r['layout']}: "
              f"skipped ({r['skipped']})", file=sys.stderr)
    rows += got
  if args.json:
    print(json.dumps(rows, indent=1))
  else:
    print(f'global batch {args.batch}; MB = 1e6 bytes per device per step')
    print(table(rows))
  return rows


if __name__ == '__main__':
  main()
