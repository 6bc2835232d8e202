"""The config's checks: `validate_config` runs before any data is read or
any file written, so bad input stops a run with one line and nothing
touched."""

import math

import jax
import ml_collections

from alexnet_jax.data import registry
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import alexnet
from alexnet_jax.model import towers
from alexnet_jax.task import optim
from alexnet_jax.task import runs as runs_lib

from alexnet_jax.runtime import accelerator

# How images become model input: 'standardize' ((x - mean) / std on 0..1
# pixels) or 'paper' (the centred raw 0..255 RGB values the paper fed its
# net, Sec. 2: x * 255 - mean * 255).
INPUT_SCALINGS = ('standardize', 'paper')


def _finite(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and \
      math.isfinite(v)


def _integer(v):
  return isinstance(v, int) and not isinstance(v, bool)


# field: (valid?, what it must be). Checked in this order.
_RANGES = {
    'batch_size': (lambda v: _integer(v) and v > 0, 'a positive integer'),
    'eval_batch_size': (lambda v: _integer(v) and v > 0, 'a positive integer'),
    'learning_rate': (lambda v: _finite(v) and v > 0,
                      'a positive finite number'),
    'momentum': (lambda v: _finite(v) and 0 <= v < 1, 'in [0, 1)'),
    'weight_decay': (lambda v: _finite(v) and v >= 0, 'a finite number >= 0'),
    'dropout_rate': (lambda v: _finite(v) and 0 <= v < 1, 'in [0, 1)'),
    'label_smoothing': (lambda v: _finite(v) and 0 <= v < 1, 'in [0, 1)'),
    'num_epochs': (_finite, 'a finite number'),
    'num_steps': (_integer, 'an integer'),
    'eval_every_epochs': (lambda v: _finite(v) and v >= 0,
                          'a finite number >= 0 (0: only at the end)'),
    'warmup_epochs': (lambda v: _finite(v) and v >= 0, 'a finite number >= 0'),
    'log_every_steps': (lambda v: _integer(v) and v > 0, 'a positive integer'),
    'checkpoint_every_steps': (
        lambda v: _integer(v) and v >= 0,
        'an integer >= 0 (0: only after evaluations and at the end)'),
    'keep_checkpoints': (lambda v: _integer(v) and v > 0,
                         'a positive integer'),
    'plateau_patience': (lambda v: _integer(v) and v > 0, 'a positive integer'),
    'plateau_reductions': (lambda v: _integer(v) and v >= 0,
                           'an integer >= 0'),
    'image_size': (lambda v: _integer(v) and v >= 0,
                   "an integer >= 0 (0: the images' own size)"),
    'crop_padding': (lambda v: _integer(v) and v >= 0, 'an integer >= 0'),
    'val_fraction': (lambda v: _finite(v) and 0 <= v < 1, 'in [0, 1)'),
    'val_examples': (lambda v: _integer(v) and v >= 0,
                     'an integer >= 0 (0: use val_fraction)'),
    'resize_size': (lambda v: _integer(v) and v > 0, 'a positive integer'),
    'data_workers': (lambda v: _integer(v) and v >= 0,
                     'an integer >= 0 (0: decode in this process)'),
    'pca_lighting': (lambda v: _finite(v) and v >= 0,
                     'a finite number >= 0 (0: off; the paper: 0.1)'),
    'lr_step_epochs': (lambda v: isinstance(v, (tuple, list)) and all(
        _finite(e) and e > 0 for e in v), 'a list of positive epoch numbers'),
    'steps_per_call': (lambda v: _integer(v) and v >= 0,
                       'an integer >= 0 (0: by platform)'),
    'memory_limit_gib': (lambda v: _finite(v) and v >= 0,
                         'a finite number >= 0 (0: the device\'s own)'),
    'runs_parallelism': (lambda v: _integer(v) and v >= 1,
                         'a positive integer (groups of devices)'),
    'runs': (lambda v: _integer(v) and v >= 1,
             'a positive integer (seeds trained together)'),
    'profile_steps': (lambda v: _integer(v) and v >= 0,
                      'an integer >= 0 (0: no profile)'),
    'max_bad_fraction': (lambda v: _finite(v) and 0 <= v <= 1, 'in [0, 1]'),
    'lars_trust_coefficient': (lambda v: _finite(v) and v > 0,
                               'a positive finite number'),
    'lars_eps': (lambda v: _finite(v) and v >= 0, 'a finite number >= 0'),
    'poly_power': (lambda v: _finite(v) and v > 0, 'a positive finite number'),
}
INPUT_PIPELINES = ('grain', 'dali')
DALI_DEVICES = ('gpu', 'cpu')


def _choice(config, field, valid, note=''):
  if config[field] not in valid:
    raise ConfigError(f'unknown {field} {config[field]!r}; valid: '
                      f'{", ".join(v for v in valid if v)}{note}')


def _check_parallelism(config):
  n = jax.device_count()
  rp = config.runs_parallelism
  if not _integer(rp) or rp < 1 or n % rp:
    raise ConfigError(f'runs_parallelism {rp!r} must be a positive divisor of '
                      f'the device count {n}')
  # Each of the runs_parallelism groups of n / rp devices splits its runs'
  # batches.
  devices = (f'device count {n // rp}' if rp == 1 else
             f'{n // rp} devices of each of the runs_parallelism {rp} groups')
  n //= rp
  local = jax.local_device_count()
  if rp > 1 and n % local and local % n:
    raise ConfigError(
        f'runs_parallelism {rp}: groups of {n} devices do not line up with '
        f'the {local} devices of each process; choose groups that hold '
        'whole processes or that a process holds whole')
  if config.batch_size % n:
    raise ConfigError(f'batch_size {config.batch_size} is not divisible by the '
                      f'{devices}; use a multiple of {n}')
  mp = config.model_parallelism
  if not _integer(mp) or mp < 1 or n % mp:
    raise ConfigError(f'model_parallelism {mp!r} must be a positive divisor of '
                      f'the device count {n}')
  _check_towers(config, n)
  shards = config.data_shards or jax.process_count()
  if shards < 1 or shards % jax.process_count():
    raise ConfigError(f'data_shards {config.data_shards} must be a positive '
                      f'multiple of the process count {jax.process_count()} '
                      '(0: one shard per process)')
  if config.batch_size % shards:
    raise ConfigError(f'batch_size {config.batch_size} is not divisible by '
                      f'data_shards {shards}')


def _check_towers(config, n: int):
  """tower_parallelism 2: the paper's two towers on two devices each step."""
  tp = config.tower_parallelism
  if not _integer(tp) or tp not in (1, towers.TOWERS):
    raise ConfigError(f'tower_parallelism {tp!r} must be 1 or {towers.TOWERS} '
                      "(the paper's net has two towers)")
  if tp == 1:
    return
  able = [name for name, preset in alexnet.MODELS.items()
          if not towers.unsupported(preset())]
  why = towers.unsupported(alexnet.create_model(config.model))
  if why:
    raise ConfigError(f'tower_parallelism {tp} runs {", ".join(able)}, not '
                      f'{config.model!r} ({why})')
  if config.model_parallelism != 1:
    raise ConfigError(
        f'tower_parallelism {tp} with model_parallelism '
        f'{config.model_parallelism}: choose one (the towers already split '
        'fc6 and fc7 over the tower pair)')
  if n % tp or jax.local_device_count() % tp:
    raise ConfigError(
        f'tower_parallelism {tp} needs a multiple of {tp} devices in every '
        f'process (a tower pair runs in one process); this one has '
        f'{jax.local_device_count()} of {n}')
  if config.input_pipeline == 'dali':
    raise ConfigError(f'tower_parallelism {tp} reads its batches with '
                      "input_pipeline grain, not 'dali'")


def _check_optimizer(config):
  if config.optimizer == 'lars' and config.schedule == 'plateau':
    raise ConfigError("optimizer lars takes schedule poly, cosine, step or "
                      "constant, not plateau (its reductions act on SGD's "
                      'momentum input)')


def _check_dataset_fields(config):
  if (config.schedule == 'plateau' and config.val_fraction == 0 and
      config.val_examples == 0):
    raise ConfigError("schedule 'plateau' needs a validation split; set "
                      'val_fraction > 0 or choose step, cosine or constant')
  streamed = registry.get(config.dataset).streamed
  image_datasets = ', '.join(n for n, s in registry.DATASETS.items()
                             if s.streamed)
  for field in ('ten_crop', 'random_resized_crop'):
    if config[field] and not streamed:
      raise ConfigError(f'{field} needs an image dataset ({image_datasets}), '
                        f'not {config.dataset!r}')
  if config.input_pipeline == 'dali' and config.dataset not in (
      'store', 'image_folder'):
    raise ConfigError(f'input_pipeline dali reads the store and image '
                      f'folders, not {config.dataset!r}')
  if streamed and config.crop_padding:
    raise ConfigError(
        f'crop_padding {config.crop_padding} is for CIFAR-sized images; image '
        f'datasets are cropped from resize_size (set crop_padding=0)')


def _check_runs(config):
  """A stack of runs (`task/runs.py`): its plan, and what it cannot do yet."""
  if not runs_lib.is_multi(config.runs, config.sweep):
    runs_lib.plan(1, config.sweep, config.sweep_mode, config, config.seed)
    if config.runs_parallelism != 1:
      raise ConfigError(f'runs_parallelism {config.runs_parallelism} spreads '
                        'a stack of runs over devices; one run takes 1 (or '
                        'set --config.runs)')
    return
  for field, values in runs_lib.parse_sweep(config.sweep).items():
    ok, must_be = _RANGES[field]
    for v in values:
      if not ok(v):
        raise ConfigError(f'--config.sweep: {field} {v:g} must be {must_be}')
  stack = runs_lib.plan(config.runs, config.sweep, config.sweep_mode, config,
                        config.seed)
  if len(stack) % config.runs_parallelism:
    raise ConfigError(f'runs_parallelism {config.runs_parallelism} must '
                      f'divide the stack\'s {len(stack)} runs (runs '
                      f'{config.runs} x {len(stack) // config.runs} sweep '
                      'points)')
  if registry.get(config.dataset).streamed:
    held = ', '.join(n for n, s in registry.DATASETS.items() if not s.streamed)
    raise ConfigError(f'runs {config.runs} / sweep: many runs in one step need '
                      f'data held on the device ({held}), not '
                      f'{config.dataset!r}; run an image dataset once per '
                      'seed')
  for field in ('model_parallelism', 'tower_parallelism'):
    if config[field] > 1:
      raise ConfigError(f'runs {config.runs} / sweep: {field} '
                        f'{config[field]} cannot split a stack of runs yet; '
                        'set it to 1')
  if config.init_from:
    raise ConfigError(f'runs {config.runs} / sweep: init_from '
                      f'{config.init_from!r} starts one run; a stack starts '
                      "from its seeds (set init_from='')")


def validate_config(config: ml_collections.ConfigDict):
  """Cheap checks, before any data is read or any file written."""
  _choice(config, 'model', tuple(alexnet.MODELS))
  _choice(config, 'dataset', tuple(registry.DATASETS))
  _choice(config, 'input_scaling', INPUT_SCALINGS)
  _choice(config, 'schedule', optim.SCHEDULES)
  _choice(config, 'optimizer', optim.OPTIMIZERS)
  _choice(config, 'input_pipeline', INPUT_PIPELINES)
  _choice(config, 'dali_device', DALI_DEVICES)
  _choice(config, 'platform', accelerator.PLATFORMS)
  _choice(config, 'init', ('',) + alexnet.INIT_SCHEMES,
          " ('' keeps the preset's own)")
  for field, (valid, what) in _RANGES.items():
    if not valid(config[field]):
      raise ConfigError(f'{field} {config[field]!r} must be {what}')
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(f'num_epochs {config.num_epochs} must be positive (or '
                      f'set num_steps > 0; it is {config.num_steps})')
  _check_runs(config)
  _check_parallelism(config)
  _check_optimizer(config)
  _check_dataset_fields(config)
