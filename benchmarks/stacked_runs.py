"""N runs trained together (`--config.runs=N`) against the same N runs one
after another, each a whole `alexnet_jax.main` process: wall time, and each
run's test top-1 both ways.

  python -m benchmarks.stacked_runs --data_dir=DIR [--runs=4] [--epochs=2]
      [--config=configs/cifar10.py] [--set FIELD=VALUE ...]

Run i of the stack has seed i; the separate run i is the same config with
`--config.seed=i`. Prints one line per way and the ratio, then a JSON
object (`--json_out` writes it to a file too).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _main_job(config, workdir, data_dir, epochs, extra):
  args = [sys.executable, '-m', 'alexnet_jax.main', f'--config={config}',
          f'--workdir={workdir}', f'--config.num_epochs={epochs}']
  if data_dir:
    args.append(f'--config.data_dir={data_dir}')
  args += [f'--config.{kv}' for kv in extra]
  start = time.monotonic()
  done = subprocess.run(args, capture_output=True, text=True, check=False)
  wall = time.monotonic() - start
  if done.returncode != 0:
    sys.exit(f'error: {" ".join(args[2:])} failed:\n{done.stderr[-3000:]}')
  with open(f'{workdir}/final_metrics.json') as f:
    return wall, json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--config', default='configs/cifar10.py')
  parser.add_argument('--runs', type=int, default=4)
  parser.add_argument('--epochs', type=float, default=2)
  parser.add_argument('--set', action='append', default=[],
                      metavar='FIELD=VALUE')
  parser.add_argument('--json_out', default='')
  args = parser.parse_args()
  if args.runs < 2:
    parser.error(f'--runs {args.runs}: compare at least 2 runs')
  with tempfile.TemporaryDirectory() as tmp:
    stack_wall, stack = _main_job(args.config, f'{tmp}/stack', args.data_dir,
                                  args.epochs, args.set + [f'runs={args.runs}'])
    print(f'{args.runs} runs in one process: {stack_wall:.1f} s', flush=True)
    separate = []
    for i in range(args.runs):
      separate.append(_main_job(args.config, f'{tmp}/seed{i}', args.data_dir,
                                args.epochs, args.set + [f'seed={i}']))
      print(f'  separate run {i}: {separate[-1][0]:.1f} s', flush=True)
  separate_wall = sum(w for w, _ in separate)
  print(f'{args.runs} separate runs: {separate_wall:.1f} s | the stack takes '
        f'{stack_wall / separate_wall:.2f}x their time', flush=True)
  result = {
      'runs': args.runs, 'epochs': args.epochs, 'config': args.config,
      'set': args.set, 'stack_wall_s': stack_wall,
      'separate_wall_s': [w for w, _ in separate],
      'stack_over_separate': stack_wall / separate_wall,
      'stack_test_top1': [r['test']['top1'] for r in stack['runs']],
      'separate_test_top1': [f['test']['top1'] for _, f in separate],
      'stack_summary_test_top1': stack['summary'][0]['test']['top1'],
  }
  print(json.dumps(result))
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
