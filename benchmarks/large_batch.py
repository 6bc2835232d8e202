"""Large batches on CIFAR: SGD with the linear-scaling rule against LARS, for
the CIFAR form and its AlexNet-BN twin, each run the real main job.

  python -m benchmarks.large_batch --cifar_dir DIR --out DIR \\
      [--batch 1024] [--epochs 45] [--parallel 1] [--runs a,b]

The main job's recipe (`configs/cifar10.py`: batch 32, lr 0.01, cosine) is
the baseline; at `--batch` B the SGD runs scale its rate linearly (0.01 *
B / 32) after a 5-epoch warmup, as Goyal et al. do, and the LARS runs take
the poly schedule (power 2) with the same warmup. Each run writes its own
workdir OUT/NAME (metrics.jsonl, curves); the summary (test top-1 at the
end and of the best-val checkpoint, wall time) goes to OUT/summary.json and
OUT/summary.md; `python -m alexnet_jax.plot OUT/*/ --out curves.png` draws
them side by side. `--parallel` runs several at once (a GPU has room for
them; on two CPU cores keep 1).
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE_BATCH, BASE_LR = 32, 0.01  # configs/cifar10.py


def runs(batch: int) -> dict:
  """{name: overrides}: SGD and LARS, the CIFAR form and AlexNet-BN."""
  sgd = [f'--config.learning_rate={BASE_LR * batch / BASE_BATCH:g}']
  lars = ['--config.optimizer=lars', '--config.schedule=poly',
          '--config.learning_rate=2.0']
  bn = ['--config.model=alexnet_cifar_bn']
  return {f'sgd_b{batch}': sgd, f'lars_b{batch}': lars,
          f'sgd_bn_b{batch}': sgd + bn, f'lars_bn_b{batch}': lars + bn}


def run_one(name, overrides, args) -> dict:
  workdir = pathlib.Path(args.out) / name
  cmd = [sys.executable, '-m', 'alexnet_jax.main',
         '--config=configs/cifar10.py', f'--workdir={workdir}',
         f'--config.data_dir={os.path.abspath(args.cifar_dir)}',
         f'--config.batch_size={args.batch}',
         f'--config.num_epochs={args.epochs}', '--config.warmup_epochs=5',
         '--config.log_every_steps=2', '--config.eval_every_epochs=1',
         *overrides]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  start = time.monotonic()
  with open(pathlib.Path(args.out) / f'{name}.log', 'w') as log:
    try:
      code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=args.timeout_s,
                            check=False).returncode
    except subprocess.TimeoutExpired:
      code = 'timeout'
  out = {'name': name, 'overrides': ' '.join(overrides), 'exit': code,
         'wall_s': round(time.monotonic() - start, 1)}
  final = workdir / 'final_metrics.json'
  if final.is_file():
    f = json.loads(final.read_text())
    out['test_top1'] = f['test']['top1']
    if f.get('best_val_test'):
      out['best_val_test_top1'] = f['best_val_test']['top1']
  print(json.dumps(out), flush=True)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cifar_dir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--batch', type=int, default=1024)
  parser.add_argument('--epochs', type=float, default=45)
  parser.add_argument('--parallel', type=int, default=1)
  parser.add_argument('--timeout_s', type=float, default=3600)
  parser.add_argument('--runs', default='', help='a comma list of run names '
                      '(default: all four)')
  args = parser.parse_args(argv)
  todo = runs(args.batch)
  if args.runs:
    bad = sorted(set(args.runs.split(',')) - set(todo))
    if bad:
      parser.error(f'--runs: {", ".join(bad)} is not one of '
                   f'{", ".join(todo)}')
    todo = {k: v for k, v in todo.items() if k in args.runs.split(',')}
  if args.batch < 1 or args.parallel < 1 or args.epochs <= 0:
    parser.error('--batch, --parallel and --epochs must be positive')
  pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    results = list(pool.map(lambda kv: run_one(*kv, args), todo.items()))
  pathlib.Path(args.out, 'summary.json').write_text(
      json.dumps(results, indent=1))
  rows = ['| run | overrides | test top-1 | best-val test top-1 | wall |',
          '| --- | --- | --- | --- | --- |']
  for r in results:
    pct = lambda k: f'{r[k]:.2%}' if k in r else f'— (exit {r["exit"]})'
    rows.append(f"| {r['name']} | `{r['overrides']}` | {pct('test_top1')} | "
                f"{pct('best_val_test_top1')} | {r['wall_s']:.0f} s |")
  pathlib.Path(args.out, 'summary.md').write_text('\n'.join(rows) + '\n')
  print('\n'.join(rows))
  return 0 if all(r['exit'] == 0 for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())
