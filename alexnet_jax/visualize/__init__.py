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
`errors`) work from Python; the computing is `inspection.py`, the drawing
`pictures.py`, both here: nothing else uses them. The command line is
`__main__.py`. Bad input is one `error:` line, exit status 2, and nothing
written.
"""

import json
import os
from typing import Callable, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
from etils import epath

from alexnet_jax import build
from alexnet_jax.errors import DataError
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import saved_run
from alexnet_jax.visualize import inspection
from alexnet_jax.visualize import pictures

EVAL_SPLITS = ('test', 'val')


def _load(workdir: str, step=None, dataset=None, data_dir=None, run=None):
  """(config, step, model, numpy variables, the run's title for its
  pictures: model, dataset, step, and a stack's run with its seed and
  values, never a path); `dataset`/`data_dir` override the
  workdir's (converted torchvision weights know no ImageNet folder); `run`:
  which of a stack of runs (`saved_run.pick_run`). The config returned is
  one run's."""
  config = saved_run.load_config(workdir)
  if dataset is not None:
    config.dataset = dataset
  if data_dir is not None:
    config.data_dir = data_dir
  step, model, params = saved_run.load_model(config, workdir, step,
                                             build.dataset(config).num_classes,
                                             run)
  plan = build.run_plan(config)
  title = f'{config.model} on {config.dataset}, step {step}'
  if plan is not None:
    title += f', {plan[run].describe()}'
  config.runs, config.sweep, config.runs_parallelism = 1, '', 1
  return config, step, model, params, title


def _open(config, model, params, batch_size: Optional[int]):
  """(every split as evaluation stores it, the network on all devices, the
  class names): built from the config as training builds them."""
  data = build.dataset(config)
  side = build.input_side(config, data)
  if data.streamed:
    feed = build.feed(config, mesh_lib.make_mesh(1), data, side)
    splits = {name: inspection.StreamedSplit(source, feed.resize_size,
                                             feed.workers)
              if source is not None else None
              for name, source in feed.splits.items()}
  else:
    host = build.host_data(config, data)
    splits = {'train': inspection.InMemorySplit(host.train),
              'val': inspection.InMemorySplit(host.val) if host.val else None,
              'test': inspection.InMemorySplit(host.test)}
  net = inspection.Network(build.input_spec(config, data, side), model,
                           params, batch_size or config.eval_batch_size)
  return splits, net, data.class_names(model.num_classes)


def _out(out, workdir: str, name: str) -> epath.Path:
  """The picture's path (`out`, else WORKDIR/name), checked before any
  work: a missing folder is an error naming --out, not a temporary file."""
  path = epath.Path(out) if out else epath.Path(workdir) / name
  if out and not path.parent.is_dir():
    raise DataError(f'--out {out}: folder {path.parent} does not exist')
  return path


def _named(stem: str, run, suffix: str) -> str:
  """A picture's default name; a stack's run has its own."""
  return stem + ('' if run is None else f'_run{run}') + suffix


def _positive(value, flag: str):
  if value is not None and (not isinstance(value, int) or value < 1):
    raise DataError(f'{flag} {value!r} must be a positive integer')


def filters(workdir: str, out=None, step=None, run=None):
  """Draws conv1's kernels; (path written, [inspection.Tower])."""
  out = _out(out, workdir, _named('filters', run, '.png'))
  config, step, model, params, run_title = _load(workdir, step, run=run)
  towers = inspection.conv1_towers(params['params'], model.groups)
  blocks = [(f'{t.title}  |  mean chroma {t.chroma.mean():.3f}',
             pictures.kernel_grid(t.kernels)) for t in towers]
  title = (f'{run_title}: conv1 (each kernel scaled to its '
           'own min..max)')
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


def _neighbours_json(nb, names, workdir, step, split, sample,
                     run=None) -> dict:
  return {'workdir': str(workdir), 'step': step, 'split': split,
          **({} if run is None else {'run': run}),
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
               log: Callable = print, run=None):
  """Fig. 4: `count` images of `split` (a fixed-seed random choice) and the
  `k` training images nearest to each by fc7 features.

  Returns (PNG path, JSON path, inspection.Neighbours).
  """
  for value, flag in ((count, '--count'), (k, '--k'), (sample, '--sample'),
                      (batch_size, '--batch_size')):
    _positive(value, flag)
  png = _out(out, workdir, _named(f'neighbours_{split}', run, '.png'))
  config, step, model, params, run_title = _load(workdir, step, dataset,
                                                 data_dir, run)
  splits, net, names = _open(config, model, params, batch_size)
  reader = _eval_split(splits, split, config)
  if count > len(reader):
    raise DataError(f'--count {count} is more than the {len(reader)} images '
                    f'of split {split!r}')
  queries = inspection.sample_indices(len(reader), count)
  nb = inspection.nearest_neighbours(net, splits, split, queries, k, sample,
                                     log)
  title = (f'{run_title}: {split} images (left) and the {k} '
           f'nearest of {nb.searched} training images by fc7 features')
  pictures.write(png, pictures.neighbours_png(nb, names, title))
  record = _neighbours_json(nb, names, workdir, step, split, sample, run)
  json_path = png.with_suffix('.json')
  pictures.write(json_path, (json.dumps(record, indent=1) + '\n').encode())
  return str(png), str(json_path), nb


def errors(workdir: str, split: str = 'test', mistakes: int = 12, out=None,
           step=None, batch_size: Optional[int] = None, dataset=None,
           data_dir=None, run=None):
  """The trainer's evaluation of `split`, one top-1 per image: the confusion
  matrix, per-class top-1 and the `mistakes` most confident mistakes.

  Returns (path, inspection.Predictions, confusion, per-class top-1, names).
  """
  _positive(batch_size, '--batch_size')
  if not isinstance(mistakes, int) or mistakes < 0:
    raise DataError(f'--mistakes {mistakes!r} must be an integer >= 0')
  out = _out(out, workdir, _named(f'errors_{split}', run, '.png'))
  config, step, model, params, run_title = _load(workdir, step, dataset,
                                                 data_dir, run)
  splits, net, names = _open(config, model, params, batch_size)
  reader = _eval_split(splits, split, config)
  p = inspection.predict_split(net, reader)
  confusion = inspection.confusion_matrix(p.labels, p.predicted,
                                          model.num_classes)
  accuracy = inspection.per_class_accuracy(confusion)
  worst = inspection.confident_mistakes(p, mistakes)
  images = reader.examples(worst)[0] if len(worst) else []
  strip = [(img, int(p.labels[i]), int(p.predicted[i]),
            float(p.confidence[i])) for img, i in zip(images, worst)]
  right = int(np.trace(confusion))
  title = (f'{run_title}: {split} split, {right}/'
           f'{len(p.labels)} right (top-1 {100 * right / len(p.labels):.2f}%)')
  path = pictures.write(out, pictures.errors_png(confusion, accuracy, names,
                                                 strip, title))
  return path, p, confusion, accuracy, names
