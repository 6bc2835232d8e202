"""torchvision's AlexNet weights (a .pth state dict) -> a workdir.

  python -m alexnet_jax.convert --torch_weights=alexnet-owt-7be5be79.pth \
      --workdir=DIR [--config=configs/imagenet_torchvision.py] [--config.X=...]

The workdir is what a training run leaves: an orbax checkpoint of the full
train state at step 0 (the converted parameters, a fresh optimizer state)
and config.json. So `predict`, `evaluate` and `--config.init_from=DIR` read
it like any run, and `alexnet_jax.main` with the same config and workdir
trains on from these weights (step 0, fresh optimizer). Nothing is written
until the file has been read and checked; bad input is one `error:` line,
exit status 2.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from alexnet_jax import build
from alexnet_jax.errors import CheckpointError
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import UserError
from alexnet_jax.model import torch_weights
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.runtime import reporting
from alexnet_jax.runtime.layout import Layout
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import validation

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs', 'imagenet_torchvision.py')
MODEL = 'alexnet_torchvision'

FLAGS = flags.FLAGS


def define_flags():
  """Flags only when run as a program: importing this module defines none."""
  flags.DEFINE_string('torch_weights', None, "A torchvision AlexNet state dict "
                      "(torch.save(model.state_dict()), e.g. torchvision's "
                      'alexnet-owt-7be5be79.pth).')
  flags.DEFINE_string('workdir', None, 'Where to write the checkpoint and '
                      'config.json (new, or without checkpoints).')
  config_flags.DEFINE_config_file(
      'config', DEFAULT_CONFIG, 'The config written with the weights (model '
      'alexnet_torchvision).', lock_config=True)
  flags.DEFINE_bool('verbose', False, 'Print the traceback of user errors too.')


def convert(path: str, workdir: str, config: ml_collections.ConfigDict,
            log=print) -> dict:
  """Reads, checks and converts `path`, then writes the workdir."""
  if config.model != MODEL:
    raise ConfigError(f'convert writes torchvision\'s layout, the {MODEL} '
                      f'preset; --config.model is {config.model!r}')
  existing = checkpoints.latest_step_on_disk(workdir)
  if existing is not None:
    raise CheckpointError(
        f'workdir {workdir} already holds checkpoints (latest step '
        f'{existing}); convert into a new --workdir')
  state_dict = torch_weights.load_state_dict(path)
  num_classes = torch_weights.check_torchvision_alexnet(state_dict)
  params = torch_weights.params_from_torch(state_dict)
  del state_dict

  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy.
  config.num_classes = num_classes
  validation.validate_config(config)
  mesh = mesh_lib.make_mesh(config.model_parallelism)
  model = build.model(config, num_classes)
  side = config.image_size or 224
  # Durations do not change the optimizer state's structure: any will do.
  tx, _ = build.optimizer(config, build.durations(config, 1))
  state, _ = state_lib.create_train_state(model, tx, (side, side, 3),
                                          config.seed, mesh)
  state = state.replace(params=place_like(params, state.params))

  layout = Layout.of(workdir)
  reporting.prepare_workdir(layout)
  ckpt = checkpoints.Checkpointer(layout, config.keep_checkpoints, log=log)
  try:
    ckpt.save(0, state)
  finally:
    ckpt.close()
  used = build.resolved_config(config, model, num_classes, side)
  reporting.write_text_atomically(layout.config,
                                  json.dumps(used, indent=2) + '\n')
  n_params = sum(x.size for x in jax.tree.leaves(params))
  log(f'converted {path} ({n_params:,} parameters, {num_classes} classes) '
      f'into {workdir}: {MODEL} checkpoint step 0 and config.json')
  return used


def place_like(host_params, like):
  """Host arrays onto the shardings (and checked shapes) of `like`."""
  def put(path, x, target):
    x = np.asarray(x, np.float32)
    if x.shape != target.shape:  # The converter and the preset disagree: a bug.
      raise ValueError(f'{jax.tree_util.keystr(path)}: converted {x.shape}, '
                       f'model {target.shape}')
    return jax.make_array_from_callback(x.shape, target.sharding,
                                        lambda index: x[index])
  return jax.tree_util.tree_map_with_path(put, host_params, like)


def main(argv):
  if len(argv) > 1:
    cli.exit_with_error(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
  try:
    for name in ('torch_weights', 'workdir'):
      if not FLAGS[name].value:
        raise ConfigError(f'--{name} is required: python -m '
                          'alexnet_jax.convert --torch_weights=FILE.pth '
                          '--workdir=DIR')
    convert(FLAGS.torch_weights, FLAGS.workdir, FLAGS.config)
  except UserError as e:
    cli.exit_with_error(e, FLAGS.verbose)
  print(f'next: python -m alexnet_jax.predict --workdir={FLAGS.workdir} '
        'IMAGE.jpg', flush=True)


def parse_flags(argv):
  cli.exit_if_help(argv, __doc__)
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, OSError, SyntaxError,
          ImportError) as e:
    cli.exit_with_error(f'bad flag ({type(e).__name__}: {e})', '--verbose' in argv)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
