"""What a trained network learned, as the paper showed it, from any workdir.

  python -m alexnet_jax.visualize filters WORKDIR [--out F.png]
  python -m alexnet_jax.visualize neighbours WORKDIR [--split=test]
      [--count N] [--k K] [--sample M] [--out F.png]
  python -m alexnet_jax.visualize errors WORKDIR [--split=test]
      [--mistakes M] [--out F.png]

filters: conv1's kernels as a grid, each normalised to its own range (the
paper's Fig. 3); a two-tower net's in two labelled blocks, with one line per
tower saying how colour-specific its kernels are. neighbours: N images of
the evaluation split beside the K training images nearest to them by fc7's
output (the paper's Fig. 4), as a PNG and as JSON. errors: the confusion
matrix and per-class top-1 of the trainer's own evaluation, and the most
confident mistakes. Pictures go to the workdir (filters.png,
neighbours_SPLIT.png and .json, errors_SPLIT.png) unless --out says where;
each path is printed. The same functions (`filters`, `neighbours`,
`errors`) work from Python; the computing is `task/inspection.py`, the
drawing `runtime/pictures.py`. Bad input is one `error:` line, exit status
2, and nothing written.
"""

import argparse
import json
import os
import sys
from typing import Callable, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
from etils import epath

from alexnet_jax.data import registry
from alexnet_jax.errors import DataError
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import pictures
from alexnet_jax.task import config as config_lib
from alexnet_jax.task import inspection
from alexnet_jax.task import workdir as workdir_lib

EVAL_SPLITS = ('test', 'val')


def _load(workdir: str, step=None, dataset=None, data_dir=None):
  """(config, step, model, numpy variables); `dataset`/`data_dir` override the
  workdir's (converted torchvision weights know no ImageNet folder)."""
  config = workdir_lib.load_config(workdir)
  if dataset is not None:
    config.dataset = dataset
  if data_dir is not None:
    config.data_dir = data_dir
  spec = registry.get(config.dataset)
  step, model, params = workdir_lib.load_model(config, workdir, step,
                                               spec.classes(config))
  return config, step, model, params


def _out(out, workdir: str, name: str) -> epath.Path:
  """The picture's path (`out`, else WORKDIR/name), checked before any
  work: a missing folder is an error naming --out, not a temporary file."""
  path = epath.Path(out) if out else epath.Path(workdir) / name
  if out and not path.parent.is_dir():
    raise DataError(f'--out {out}: folder {path.parent} does not exist')
  return path


def _positive(value, flag: str):
  if value is not None and (not isinstance(value, int) or value < 1):
    raise DataError(f'{flag} {value!r} must be a positive integer')


def filters(workdir: str, out=None, step=None):
  """Draws conv1's kernels; (path written, [inspection.Tower])."""
  out = _out(out, workdir, 'filters.png')
  config, step, model, params = _load(workdir, step)
  towers = inspection.conv1_towers(params['params'], model.groups)
  blocks = [(f'{t.title}  |  mean chroma {t.chroma.mean():.3f}',
             pictures.kernel_grid(t.kernels)) for t in towers]
  title = (f'{workdir}: {config.model}, step {step}, conv1 (each kernel '
           'scaled to its own min..max)')
  path = pictures.write(out, pictures.filters_png(blocks, title))
  return path, towers


def _eval_split(splits: dict, split: str, config):
  if split not in EVAL_SPLITS:
    raise DataError(f'unknown split {split!r}; valid: '
                    f'{", ".join(EVAL_SPLITS)}')
  if splits[split] is None:
    raise DataError(f'split {split!r} is empty: this run held out no '
                    f'validation images (val_fraction {config.val_fraction}, '
                    f'val_examples {config.val_examples}); use --split=test')
  return splits[split]


def _neighbours_json(nb, names, workdir, step, split, sample) -> dict:
  return {'workdir': str(workdir), 'step': step, 'split': split,
          'feature': 'fc7 after ReLU, evaluation view', 'distance': 'euclidean',
          'searched': nb.searched, 'sample': sample,
          'seconds': round(nb.seconds, 3), 'queries': [
              {'index': int(q), 'label': int(ql), 'class': names[ql],
               'neighbours': [
                   {'index': int(i), 'label': int(l), 'class': names[l],
                    'distance': float(d)}
                   for i, l, d in zip(ids, labels, dists)]}
              for q, ql, ids, labels, dists in zip(
                  nb.queries, nb.query_labels, nb.indices, nb.labels,
                  nb.distances)]}


def neighbours(workdir: str, split: str = 'test', count: int = 8, k: int = 6,
               sample: Optional[int] = None, out=None, step=None,
               batch_size: Optional[int] = None, dataset=None, data_dir=None,
               log: Callable = print):
  """Fig. 4: `count` images of `split` (a fixed-seed random choice) and the
  `k` training images nearest to each by fc7 features.

  Returns (PNG path, JSON path, inspection.Neighbours).
  """
  for value, flag in ((count, '--count'), (k, '--k'), (sample, '--sample'),
                      (batch_size, '--batch_size')):
    _positive(value, flag)
  png = _out(out, workdir, f'neighbours_{split}.png')
  config, step, model, params = _load(workdir, step, dataset, data_dir)
  splits = inspection.open_splits(config, config_lib.input_side(config))
  reader = _eval_split(splits, split, config)
  if count > len(reader):
    raise DataError(f'--count {count} is more than the {len(reader)} images '
                    f'of split {split!r}')
  net = inspection.Network(config, model, params,
                           batch_size or config.eval_batch_size)
  queries = inspection.sample_indices(len(reader), count)
  nb = inspection.nearest_neighbours(net, splits, split, queries, k, sample,
                                     log)
  names = registry.get(config.dataset).class_names(config, model.num_classes)
  title = (f'{workdir}, step {step}: {split} images (left) and the {k} '
           f'nearest of {nb.searched} training images by fc7 features')
  pictures.write(png, pictures.neighbours_png(nb, names, title))
  record = _neighbours_json(nb, names, workdir, step, split, sample)
  json_path = png.with_suffix('.json')
  pictures.write(json_path, (json.dumps(record, indent=1) + '\n').encode())
  return str(png), str(json_path), nb


def errors(workdir: str, split: str = 'test', mistakes: int = 12, out=None,
           step=None, batch_size: Optional[int] = None, dataset=None,
           data_dir=None):
  """The trainer's evaluation of `split`, one top-1 per image: the confusion
  matrix, per-class top-1 and the `mistakes` most confident mistakes.

  Returns (path, inspection.Predictions, confusion, per-class top-1, names).
  """
  _positive(batch_size, '--batch_size')
  if not isinstance(mistakes, int) or mistakes < 0:
    raise DataError(f'--mistakes {mistakes!r} must be an integer >= 0')
  out = _out(out, workdir, f'errors_{split}.png')
  config, step, model, params = _load(workdir, step, dataset, data_dir)
  splits = inspection.open_splits(config, config_lib.input_side(config))
  reader = _eval_split(splits, split, config)
  net = inspection.Network(config, model, params,
                           batch_size or config.eval_batch_size)
  p = inspection.predict_split(net, reader)
  confusion = inspection.confusion_matrix(p.labels, p.predicted,
                                          model.num_classes)
  accuracy = inspection.per_class_accuracy(confusion)
  names = registry.get(config.dataset).class_names(config, model.num_classes)
  worst = inspection.confident_mistakes(p, mistakes)
  images = reader.examples(worst)[0] if len(worst) else []
  strip = [(img, int(p.labels[i]), int(p.predicted[i]),
            float(p.confidence[i])) for img, i in zip(images, worst)]
  right = int(np.trace(confusion))
  title = (f'{workdir}, step {step}: {split} split, {right}/{len(p.labels)} '
           f'right (top-1 {100 * right / len(p.labels):.2f}%)')
  path = pictures.write(out, pictures.errors_png(confusion, accuracy, names,
                                                 strip, title))
  return path, p, confusion, accuracy, names


# --- The command line ---------------------------------------------------------


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
  kwargs = dict(out=args.out, step=args.step)
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
