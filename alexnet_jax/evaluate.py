"""Top-1/top-5 and loss of a workdir's model on its dataset's test split.

  python -m alexnet_jax.evaluate --workdir=DIR [--step=N] [--ten_crop] \
      [--json] [--config.FIELD=VALUE ...]

The config is the workdir's config.json; `--config.FIELD=VALUE` overrides a
field of it (e.g. --config.dataset=image_folder --config.data_dir=/data/imagenet
for converted torchvision weights). Scoring is the trainer's own: its data
feed, its test-time views (`task/evaluation.py`) and its padded and masked
batches, so every test example counts once and a run's final test metrics
come out again from its last checkpoint. Bad input is one `error:` line,
exit status 2.
"""

import difflib
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from alexnet_jax import build
from alexnet_jax.data import registry
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import evaluation
from alexnet_jax.task import saved_run
from alexnet_jax.task import validation

FLAGS = flags.FLAGS


def define_flags():
  """Flags only when run as a program: importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A workdir of alexnet_jax.main or '
                      'alexnet_jax.convert (local or gs://).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('run', None, 'Which run of a workdir that trained '
                       'several together (--config.runs / sweep).')
  flags.DEFINE_bool('ten_crop', False, "The paper's 10-crop test (corners and "
                    'centre, each mirrored; softmax averaged): image datasets '
                    'only.')
  flags.DEFINE_bool('json', False, 'Print the metrics as one JSON object.')
  flags.DEFINE_bool('verbose', False, 'Print the traceback of user errors too.')


def evaluate(config: ml_collections.ConfigDict, workdir: str, step=None,
             ten_crop: bool = False, run=None) -> dict:
  """{step, split, examples, loss, top1, top5} on the test split (of run
  `run` of a stack)."""
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy.
  config.runs_parallelism = 1  # One run's evaluation, on every device.
  if ten_crop:
    if not registry.get(config.dataset).streamed:
      image_datasets = [n for n, s in registry.DATASETS.items() if s.streamed]
      raise ConfigError(
          f'--ten_crop needs an ImageNet-style dataset '
          f'({", ".join(image_datasets)}); this evaluation reads '
          f'{config.dataset!r}, whose images are the model\'s input size '
          '(set --config.dataset and --config.data_dir, or drop --ten_crop)')
    config.ten_crop = True
  validation.validate_config(config)
  trained = ml_collections.ConfigDict(config.to_dict())  # Its stack, if any.
  config.runs, config.sweep = 1, ''  # One run is evaluated.
  mesh = mesh_lib.make_mesh(config.model_parallelism)
  data = build.dataset(config)
  side = build.input_side(config, data)
  feed = build.feed(config, mesh, data, side)
  step, model, variables = saved_run.load_model(trained, workdir, step,
                                                feed.num_classes, run)
  build.check_input_side(config, model, side)
  evaluator = build.evaluator(config, feed, model.apply, mesh)
  metrics = evaluation.split_metrics(feed.evaluate(
      evaluator, jax.device_put(variables, mesh_lib.replicated(mesh)), 'test'))
  return {'step': step, 'dataset': config.dataset, 'split': 'test',
          'examples': feed.sizes['test'], 'ten_crop': bool(config.ten_crop),
          **metrics}


def main(argv):
  if len(argv) > 1:
    cli.exit_with_error(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
  try:
    metrics = evaluate(FLAGS.config, FLAGS.workdir, FLAGS.step,
                       FLAGS.ten_crop, FLAGS.run)
  except UserError as e:
    cli.exit_with_error(e, FLAGS.verbose)
  if FLAGS.json:
    print(json.dumps({'workdir': FLAGS.workdir, **metrics}), flush=True)
  else:
    m = metrics
    print(f'{FLAGS.workdir}, step {m["step"]}: {m["dataset"]} test, '
          f'{m["examples"]} images{", 10 crops" if m["ten_crop"] else ""}: '
          f'loss {m["loss"]:.4f} | top1 {100 * m["top1"]:.2f}% | '
          f'top5 {100 * m["top5"]:.2f}%', flush=True)


def _workdir_arg(argv):
  for i, arg in enumerate(argv):
    if arg.startswith('--workdir='):
      return arg.split('=', 1)[1]
    if arg == '--workdir' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv):
  """The workdir's config.json becomes --config, so --config.X overrides it."""
  cli.exit_if_help(argv, __doc__)
  verbose = '--verbose' in argv
  workdir = _workdir_arg(argv)
  if not workdir:
    cli.exit_with_error('--workdir is required: python -m alexnet_jax.evaluate '
                    '--workdir=DIR [--config.FIELD=VALUE ...]')
  try:
    config = saved_run.load_config(workdir)
  except UserError as e:
    cli.exit_with_error(e, verbose)
  try:
    config_flags.DEFINE_config_dict(
        'config', config, "The workdir's config.json; override with "
        '--config.FIELD=VALUE.', lock_config=True)
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' refusals.
    for arg in argv:
      key = arg[len('--config.'):].split('=', 1)[0]
      if arg.startswith('--config.') and key.split('.')[0] not in config:
        close = difflib.get_close_matches(key.split('.')[0], list(config), 1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        cli.exit_with_error(f'unknown config key {key!r}{hint}; the keys are '
                        f"those of {workdir}/config.json", verbose)
    cli.exit_with_error(f'bad --config.* flag ({type(e).__name__}: {e})', verbose)
  except flags.Error as e:
    cli.exit_with_error(e, verbose)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
