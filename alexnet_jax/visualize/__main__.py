"""`python -m alexnet_jax.visualize filters|neighbours|errors WORKDIR ...`:
the command line of `alexnet_jax.visualize` (its docstring has the usage)."""

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax.runtime import cli
from alexnet_jax.visualize import EVAL_SPLITS
from alexnet_jax.visualize import errors
from alexnet_jax.visualize import filters
from alexnet_jax.visualize import inspection
from alexnet_jax.visualize import neighbours


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(prog='python -m alexnet_jax.visualize',
                   description='What a trained network learned, as the '
                   "paper showed it: conv1's kernels, nearest neighbours by "
                   'fc7 features, and where it errs.')
  commands = parser.add_subparsers(dest='command', required=True,
                                   metavar='filters|neighbours|errors')
  helps = {'filters': "conv1's kernels (Fig. 3)",
           'neighbours': 'nearest training images by fc7 features (Fig. 4)',
           'errors': 'confusion matrix and confident mistakes'}
  for name, text in helps.items():
    sub = commands.add_parser(name, help=text, description=text)
    sub.add_argument('workdir', metavar='WORKDIR',
                     help='a workdir of alexnet_jax.main or '
                     'alexnet_jax.convert')
    sub.add_argument('--out', metavar='FILE.png', help='default: in WORKDIR')
    sub.add_argument('--step', type=int, help='checkpoint (default: latest)')
    sub.add_argument('--run', type=int,
                     help='which run of a workdir that trained several '
                     'together (--config.runs / sweep)')
    sub.add_argument('--verbose', action='store_true',
                     help='the traceback of user errors too')
    if name == 'filters':
      continue
    sub.add_argument('--split', default='test', choices=EVAL_SPLITS)
    sub.add_argument('--batch_size', type=int,
                     help="images per pass (default: the run's eval batch)")
    sub.add_argument('--dataset', help="override the workdir's dataset "
                     '(e.g. image_folder for converted torchvision weights)')
    sub.add_argument('--data_dir', help="override the workdir's data_dir")
    if name == 'neighbours':
      sub.add_argument('--count', type=int, default=8, help='query images')
      sub.add_argument('--k', type=int, default=6,
                       help='neighbours per query')
      sub.add_argument('--sample', type=int, metavar='M',
                       help='search a fixed random M training images')
    else:
      sub.add_argument('--mistakes', type=int, default=12,
                       help='most confident mistakes shown')
  return parser


def _report_errors(path, p, accuracy, names):
  right = int((p.predicted == p.labels).sum())
  print(f'top-1 {right}/{len(p.labels)} = {100 * right / len(p.labels):.2f}%')
  order = range(len(names))
  if len(names) > 30:
    order = np.argsort(np.nan_to_num(accuracy, nan=2.), kind='stable')[:10]
    print('the 10 worst classes:')
  for c in order:
    print(f'  {names[c]:>20s}: {100 * np.nan_to_num(accuracy[c]):6.2f}%')
  print(path)


def _run(args):
  kwargs = dict(out=args.out, step=args.step, run=args.run)
  if args.command == 'filters':
    path, towers = filters(args.workdir, **kwargs)
    for tower in towers:
      print(inspection.chroma_line(tower))
    print(path)
    return
  kwargs.update(split=args.split, batch_size=args.batch_size,
                dataset=args.dataset, data_dir=args.data_dir)
  if args.command == 'neighbours':
    png, json_path, _ = neighbours(
        args.workdir, count=args.count, k=args.k, sample=args.sample,
        log=lambda line: print(line, flush=True), **kwargs)
    print(png)
    print(json_path)
  else:
    path, p, _, accuracy, names = errors(args.workdir,
                                         mistakes=args.mistakes, **kwargs)
    _report_errors(path, p, accuracy, names)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # orbax's warnings on every restore.
  try:
    _run(args)
  except UserError as e:
    cli.exit_with_error(e, args.verbose)
  except OSError as e:  # Most often --out in a missing or read-only folder.
    cli.exit_with_error(f'cannot read or write {e.filename or "a file"} '
                        f'({type(e).__name__}: {e.strerror or e})',
                        args.verbose)
  return 0


if __name__ == '__main__':
  sys.exit(main())
