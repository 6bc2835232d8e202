"""Top-5 classes of images, from any workdir (trained here or converted).

  python -m alexnet_jax.predict --workdir=DIR [--step=N] [--json] IMAGE...

The workdir's config.json decides the preprocessing and the class names
(`task/saved_run.py`): torchvision's centre crop and ImageNet's names for
converted torchvision weights, CIFAR-10's for a CIFAR run. One view per
image (no flip or crop averaging). A table per image, or with --json one
line per image: {"image": PATH, "top5": [{"class", "label", "prob"}, ...]}.
Bad input (a missing or unreadable image, a workdir without checkpoints) is
one line, `error: ...`, exit status 2.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from alexnet_jax import build
from alexnet_jax.errors import DataError
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import cli
from alexnet_jax.task import saved_run

FLAGS = flags.FLAGS


def define_flags():
  """Flags only when run as a program: importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A workdir of alexnet_jax.main or '
                      'alexnet_jax.convert (local or gs://).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('run', None, 'Which run of a workdir that trained '
                       'several together (--config.runs / sweep).')
  flags.DEFINE_bool('json', False, 'One JSON object per image per line.')
  flags.DEFINE_bool('logits', False, 'With --json: add every class\'s logit '
                    '(for checks against other implementations).')
  flags.DEFINE_integer('batch_size', 16, 'Images per forward pass.')
  flags.DEFINE_bool('verbose', False, 'Print the traceback of user errors too.')

TOP_K = 5


def predict(workdir: str, paths, step=None, batch_size: int = 16,
            run=None):
  """(step, class names, logits [N, classes]) for image files.

  Every image is read before the model is: a bad one stops the run at once,
  by name.
  """
  config = saved_run.load_config(workdir)
  prep = saved_run.Preprocessing.from_config(config)
  pixels = np.stack([prep.pixels(saved_run.open_image(p)) for p in paths])
  step, model, variables = saved_run.load_model(config, workdir, step,
                                                run=run)
  names = build.dataset(config).class_names(model.num_classes)

  @jax.jit
  def logits_fn(variables, x):
    return model.apply(variables, prep.normalize(x, model.dtype),
                       train=False).astype(np.float32)

  logits = np.concatenate([
      np.asarray(logits_fn(variables, pixels[i:i + batch_size]))
      for i in range(0, len(pixels), batch_size)])
  return step, names, logits


def softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z.astype(np.float64))
  return e / e.sum(axis=-1, keepdims=True)


def report(paths, names, logits, as_json: bool, with_logits: bool,
           header: str = ''):
  probs = softmax(logits)
  k = min(TOP_K, logits.shape[-1])
  if header and not as_json:
    print(header)
  for path, p, row in zip(paths, probs, logits):
    top = np.argsort(-p, kind='stable')[:k]
    if as_json:
      record = {'image': path, 'top5': [
          {'class': int(c), 'label': names[c], 'prob': float(p[c])}
          for c in top]}
      if with_logits:
        record['logits'] = [float(v) for v in row]
      print(json.dumps(record), flush=True)
    else:
      print(f'\n{path}')
      for rank, c in enumerate(top, start=1):
        index = '' if names[c] == f'class {c}' else f' (class {c})'
        print(f'  {rank}. {100 * p[c]:6.2f}%  {names[c]}{index}')


def main(argv):
  if not FLAGS['verbosity'].present:  # orbax's warnings on every restore.
    logging.set_verbosity(logging.ERROR)
  paths = argv[1:]
  try:
    if not FLAGS.workdir:
      raise DataError('--workdir is required: python -m alexnet_jax.predict '
                      '--workdir=DIR IMAGE...')
    if not paths:
      raise DataError('no images given: python -m alexnet_jax.predict '
                      '--workdir=DIR IMAGE... (JPEG or PNG)')
    if FLAGS.batch_size < 1:
      raise DataError(f'--batch_size {FLAGS.batch_size} must be positive')
    step, names, logits = predict(FLAGS.workdir, paths, FLAGS.step,
                                  FLAGS.batch_size, FLAGS.run)
  except UserError as e:
    cli.exit_with_error(e, FLAGS.verbose)
  report(paths, names, logits, FLAGS.json, FLAGS.logits,
         f'{FLAGS.workdir}, step {step}: top-{min(TOP_K, len(names))} of '
         f'{len(names)} classes')


def parse_flags(argv):
  cli.exit_if_help(argv, __doc__)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    cli.exit_with_error(e, '--verbose' in argv)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
