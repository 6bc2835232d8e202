"""The training run: the jitted train and eval steps, and the loop around them.

Read top to bottom: config checks and durations, the train state, the train
step, evaluation, then `train_and_evaluate`, which ties data, checkpoints,
signals and reporting together. Everything that can fail on bad input fails
before the workdir is touched.
"""

import contextlib
import dataclasses
import json
import math
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax.training import train_state

from alexnet_jax import checkpointing
from alexnet_jax import distributed
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import optim
from alexnet_jax import preemption
from alexnet_jax import reporting
from alexnet_jax import sharding
from alexnet_jax.errors import ConfigError
from alexnet_jax.errors import Interrupted
from alexnet_jax.errors import TrainingError


# --- Config checks and durations ---------------------------------------------

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
    'lr_step_epochs': (lambda v: isinstance(v, (tuple, list)) and all(
        _finite(e) and e > 0 for e in v), 'a list of positive epoch numbers'),
}


def validate_config(config: ml_collections.ConfigDict):
  """Cheap checks, before any data is read or any file written."""
  def choice(field, valid, note=''):
    if config[field] not in valid:
      raise ConfigError(f'unknown {field} {config[field]!r}; valid: '
                        f'{", ".join(v for v in valid if v)}{note}')

  choice('model', tuple(models.MODELS))
  choice('dataset', input_pipeline.DATASETS)
  choice('schedule', optim.SCHEDULES)
  choice('init', ('',) + models.INIT_SCHEMES, " ('' keeps the preset's own)")
  for field, (valid, what) in _RANGES.items():
    if not valid(config[field]):
      raise ConfigError(f'{field} {config[field]!r} must be {what}')
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(f'num_epochs {config.num_epochs} must be positive (or '
                      f'set num_steps > 0; it is {config.num_steps})')
  n = jax.device_count()
  if config.batch_size % n:
    raise ConfigError(f'batch_size {config.batch_size} is not divisible by the '
                      f'device count {n}; use a multiple of {n}')
  mp = config.model_parallelism
  if not _integer(mp) or mp < 1 or n % mp:
    raise ConfigError(f'model_parallelism {mp!r} must be a positive divisor of '
                      f'the device count {n}')
  shards = num_data_shards(config)
  if shards < 1 or shards % jax.process_count():
    raise ConfigError(f'data_shards {config.data_shards} must be a positive '
                      f'multiple of the process count {jax.process_count()} '
                      '(0: one shard per process)')
  if config.batch_size % shards:
    raise ConfigError(f'batch_size {config.batch_size} is not divisible by '
                      f'data_shards {shards}')
  if config.schedule == 'plateau' and config.val_fraction == 0:
    raise ConfigError("schedule 'plateau' needs a validation split; set "
                      'val_fraction > 0 or choose step, cosine or constant')


def num_data_shards(config) -> int:
  return config.data_shards or jax.process_count()


@dataclasses.dataclass(frozen=True)
class Durations:
  """Every duration in steps; the one place epochs become steps."""
  steps_per_epoch: int
  total_steps: int
  steps_per_eval: int  # 0: evaluate only at the end.
  checkpoint_every: int  # 0: only after evaluations and at the end.

  @classmethod
  def from_config(cls, config, num_train: int):
    shards = num_data_shards(config)
    steps_per_epoch = (num_train // shards) // (config.batch_size // shards)
    if steps_per_epoch == 0:
      raise ConfigError(f'batch_size {config.batch_size} is larger than the '
                        f'{num_train} training images')
    total = (config.num_steps if config.num_steps > 0
             else max(1, int(round(config.num_epochs * steps_per_epoch))))
    every = int(round(config.eval_every_epochs * steps_per_epoch))
    return cls(steps_per_epoch, total, max(every, 0),
               max(config.checkpoint_every_steps, 0))


class TrainState(train_state.TrainState):
  rng: jax.Array  # Raw key data; dropout/augmentation keys fold in the step.
  plateau_value: jax.Array  # Last validation top-1 error (plateau schedule).


# --- Model, state and shardings ---------------------------------------------

def make_model(config, num_classes: int) -> models.AlexNet:
  kwargs = dict(num_classes=num_classes, dropout_rate=config.dropout_rate,
                dtype=jnp.bfloat16 if config.half_precision else jnp.float32)
  if config.init:
    kwargs['init_scheme'] = config.init
  return models.create_model(config.model, **kwargs)


def model_input_shape(config, model, native_shape) -> tuple:
  """(H, W, C) the model sees: the images' own, or config.image_size square."""
  h, w, c = native_shape
  if config.image_size:
    h = w = config.image_size
  smallest = model.min_input_size()
  if min(h, w) < smallest:
    raise ConfigError(
        f'{config.model} cannot take {h}x{w} input (it needs at least '
        f'{smallest}x{smallest}); set --config.image_size, e.g. 227 for '
        'alexnet_paper, 224 for alexnet_torchvision')
  return (h, w, c)


def create_train_state(model, tx, image_shape, seed: int, mesh):
  """Shapes first (eval_shape), then init straight into the target shardings."""
  def init(key):
    params_key, train_key = jax.random.split(key)
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    params = model.init({'params': params_key}, x, train=False)['params']
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             rng=jax.random.key_data(train_key),
                             plateau_value=jnp.float32(1.))

  key = jax.random.key(seed)
  abstract = jax.eval_shape(init, key)
  shardings = sharding.state_shardings(abstract, mesh)
  state = jax.jit(init, out_shardings=shardings)(key)
  return state, checkpointing.abstract_with_shardings(abstract, shardings)


def resolved_config(config, model, num_classes: int, image_shape) -> dict:
  """The config with the values the run actually used (for config.json)."""
  used = config.to_dict()
  used.update(num_classes=num_classes, init=model.init_scheme,
              image_size=image_shape[0])
  return used


# --- Train step ----------------------------------------------------------------

def _correct(logits, labels, k):
  top = jax.lax.top_k(logits, k)[1]
  return (top == labels[:, None]).any(axis=-1).astype(jnp.float32)


def cross_entropy(logits, labels, num_classes, label_smoothing=0.):
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def zero_train_metrics(mesh):
  """Sums accumulated on device between logs, and the first non-finite step."""
  metrics = {k: jnp.zeros((), jnp.float32)
             for k in ('loss', 'top1', 'top5', 'count')}
  metrics['first_nonfinite_step'] = jnp.full((), -1, jnp.int32)
  return jax.device_put(metrics, sharding.replicated(mesh))


def make_train_step(config, model, num_classes, mean, std, mesh):
  """jit(step)(state, metrics, images, labels, perms, step_in_epoch).

  `images`/`labels` are [devices, share, ...]: row d is the training share of
  the process owning device d. Each device gathers its rows of the batch from
  its own row by the epoch's permutations (`input_pipeline.batch_indices`);
  the batch is augmented with keys folded from (state.rng, state.step).
  `metrics` accumulates sums on device until logged, and remembers the first
  step whose loss was not finite.
  """
  batch = config.batch_size
  image_size = config.image_size or None
  compute_dtype = model.dtype
  batch_sharding = sharding.batch(mesh)
  plateau = config.schedule == 'plateau'
  n_devices = mesh.size

  def step_fn(state, metrics, images, labels, perms, step_in_epoch):
    idx = input_pipeline.batch_indices(perms, step_in_epoch, batch,
                                       jax.process_count())
    idx = jax.lax.with_sharding_constraint(
        idx.reshape(n_devices, batch // n_devices), batch_sharding)
    take = jax.vmap(lambda rows, i: rows[i])
    x = take(images, idx).reshape((batch,) + images.shape[2:])
    y = take(labels, idx).reshape(batch)
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
    aug_key, dropout_key = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    if config.crop_padding or config.random_flip:
      x = input_pipeline.random_crop_flip(aug_key, x, config.crop_padding,
                                          config.random_flip)
    x = input_pipeline.normalize(x, mean, std, image_size, compute_dtype)

    def loss_fn(params):
      logits = state.apply_fn({'params': params}, x, train=True,
                              rngs={'dropout': dropout_key})
      loss = cross_entropy(logits, y, num_classes, config.label_smoothing)
      return loss.mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    extra = {'value': state.plateau_value} if plateau else {}
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                         **extra)
    first_bad = metrics['first_nonfinite_step']
    state = state.replace(step=state.step + 1,
                          params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
    metrics = {
        'loss': metrics['loss'] + loss * batch,
        'top1': metrics['top1'] + _correct(logits, y, 1).sum(),
        'top5': metrics['top5'] + _correct(logits, y, min(5, num_classes)).sum(),
        'count': metrics['count'] + batch,
        'first_nonfinite_step': jnp.where(
            (first_bad < 0) & ~jnp.isfinite(loss), state.step, first_bad),
    }
    return state, metrics

  return jax.jit(step_fn, donate_argnums=(0, 1))


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every parameter is finite (checked before each save)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(tree)]))


# --- Evaluation ------------------------------------------------------------------

def make_eval_fn(config, model, num_classes, mean, std, mesh):
  """jit(eval)(params, images, labels) -> summed loss/top1/top5 over EVERY example.

  The split is walked in fixed-size batches by a scan; the last batch is padded
  (repeating the final example) and masked, so each example counts once. With
  `eval_flip`, predictions are the mean softmax of each image and its mirror
  image (the paper's test-time averaging; the log of that mean is the logit).
  """
  # Any size works: rounded up to a multiple of the device count, and padded.
  batch = -(-config.eval_batch_size // mesh.size) * mesh.size
  data_sharding = sharding.batch(mesh)

  def eval_fn(params, images, labels):
    n = labels.shape[0]

    def body(sums, j):
      pos = j * batch + jnp.arange(batch)
      mask = (pos < n).astype(jnp.float32)
      idx = jax.lax.with_sharding_constraint(jnp.minimum(pos, n - 1),
                                             data_sharding)
      x = input_pipeline.normalize(images[idx], mean, std,
                                   config.image_size or None, model.dtype)
      y = labels[idx]
      logits = model.apply({'params': params}, x, train=False)
      if config.eval_flip:  # The paper's test-time averaging over reflections.
        mirrored = model.apply({'params': params}, x[:, :, ::-1], train=False)
        logits = jnp.log((jax.nn.softmax(logits.astype(jnp.float32)) +
                          jax.nn.softmax(mirrored.astype(jnp.float32))) / 2)
      batch_sums = {
          'loss': cross_entropy(logits, y, num_classes),
          'top1': _correct(logits, y, 1),
          'top5': _correct(logits, y, min(5, num_classes)),
      }
      return {k: sums[k] + (v * mask).sum() for k, v in batch_sums.items()}, None

    zeros = {k: jnp.zeros((), jnp.float32) for k in ('loss', 'top1', 'top5')}
    sums, _ = jax.lax.scan(body, zeros, jnp.arange(-(-n // batch)))
    return sums

  return jax.jit(eval_fn)


def evaluate(eval_fn, params, split_arrays):
  images, labels = split_arrays
  sums = eval_fn(params, images, labels)
  n = labels.shape[0]
  return {k: float(v) / n for k, v in jax.device_get(sums).items()}, sums


# --- The run -----------------------------------------------------------------------

def finished_run(workdir: str, total_steps: int) -> Optional[dict]:
  """The final metrics of a run in `workdir` that already reached total_steps."""
  path = epath.Path(workdir) / 'final_metrics.json'
  if not path.exists():
    return None
  try:
    final = json.loads(path.read_text())
  except ValueError:  # Torn by a kill: redo the final evaluation.
    return None
  if (final.get('step') != total_steps or
      checkpointing.latest_step_on_disk(workdir) != total_steps):
    return None
  return final


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluating on val as it goes and on test at the end; resumes.

  Returns the final metrics (also written to WORKDIR/final_metrics.json).
  Raises a `UserError` on bad input, and `Interrupted` once a SIGTERM or
  SIGINT has been answered by saving the current step.
  """
  validate_config(config)
  data = input_pipeline.load_dataset(config)
  durations = Durations.from_config(config, len(data.train))
  mesh = sharding.make_mesh(config.model_parallelism)
  model = make_model(config, data.num_classes)
  image_shape = model_input_shape(config, model, data.train.images.shape[1:])
  tx, lr_schedule = optim.make_optimizer(
      config, durations.steps_per_epoch, durations.total_steps,
      durations.steps_per_eval or durations.total_steps)
  state, abstract_state = create_train_state(model, tx, image_shape,
                                             config.seed, mesh)
  distributed.check_shared_workdir(workdir)

  done = finished_run(workdir, durations.total_steps)
  if done is not None:  # Change nothing; say so.
    if jax.process_index() == 0:
      print(f'the run in {workdir} already finished at step {done["step"]} '
            f'(test top-1 {100 * done["test"]["top1"]:.2f}%, see '
            'final_metrics.json); nothing to do. To train longer raise '
            '--config.num_epochs (or num_steps); to start over use a new '
            '--workdir', flush=True)
    return done

  # Only now, with config, data and model known good, touch the workdir.
  reporting.prepare_workdir(workdir)
  with contextlib.ExitStack() as stack:
    ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    stack.callback(ckpt.close)
    start_step, restored = ckpt.restore_latest(abstract_state)
    if restored is not None:
      state = restored
    reporter = reporting.Reporter(workdir, durations.total_steps,
                                  start_step or 0)
    stack.callback(reporter.close)
    stop = stack.enter_context(preemption.StopRequest())
    reporter.write_json('config.json', resolved_config(
        config, model, data.num_classes, image_shape))
    run = _Run(config, data, durations, mesh, model, lr_schedule, ckpt,
               reporter, stop)
    run.log_header(state, start_step)
    state, step = run.train(state, start_step or 0)
    return run.finish(state, step, abstract_state)


class _Run:
  """One run's loop and its pieces: train, log, evaluate, save, stop, finish."""

  def __init__(self, config, data, durations, mesh, model, lr_schedule, ckpt,
               reporter, stop):
    self.config, self.data, self.durations, self.mesh = (config, data,
                                                         durations, mesh)
    self.lr_schedule, self.ckpt, self.reporter, self.stop = (lr_schedule, ckpt,
                                                             reporter, stop)
    self.shards = num_data_shards(config)
    share, self.per_shard = input_pipeline.process_share(
        data.train, self.shards, jax.process_index(), jax.process_count())
    self.train_arrays = (sharding.put_process_share(share.images, mesh),
                         sharding.put_process_share(share.labels, mesh))
    self.eval_arrays = {name: (sharding.put_replicated(s.images, mesh),
                               sharding.put_replicated(s.labels, mesh))
                        for name, s in (('val', data.val), ('test', data.test))
                        if s}
    self.train_step = make_train_step(config, model, data.num_classes,
                                      data.mean, data.std, mesh)
    self.eval_fn = make_eval_fn(config, model, data.num_classes, data.mean,
                                data.std, mesh)
    self.data_key = jax.random.fold_in(jax.random.key(config.seed), 0x5eed)
    self.permutations = jax.jit(input_pipeline.epoch_permutations,
                                static_argnums=(2, 3),
                                out_shardings=sharding.replicated(mesh))
    self.metrics = zero_train_metrics(mesh)
    self.window = reporting.Stopwatch()
    self.val_metrics = None

  def log_header(self, state, start_step):
    c, d, data = self.config, self.durations, self.data
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    self.reporter.log(
        f'{c.model}: {n_params:,} parameters | {c.dataset}: '
        f'{len(data.train)} train / {len(data.val) if data.val else 0} val / '
        f'{len(data.test)} test | global batch {c.batch_size} = '
        f'{c.batch_size // jax.device_count()} per device x '
        f'{jax.device_count()} devices ({jax.process_count()} processes, mesh '
        f'{dict(self.mesh.shape)}) | {d.total_steps} steps '
        f'({d.steps_per_epoch}/epoch)')
    if c.model_parallelism > 1:
      self.reporter.log(
          f"FC layers split over 'model' ({c.model_parallelism} ways): fc6 "
          f"kernel sharded {tuple(state.params['fc6']['kernel'].sharding.spec)}")
    if start_step:
      self.reporter.log(f'resuming from {self.ckpt.directory} at step '
                        f'{start_step}')

  # --- The loop ------------------------------------------------------------------

  def train(self, state, start_step: int):
    d, step = self.durations, start_step
    perm_epoch, perms = None, None
    while step < d.total_steps:
      epoch, index = divmod(step, d.steps_per_epoch)
      if epoch != perm_epoch:
        perm_epoch, perms = epoch, self.permutations(
            self.data_key, epoch, self.shards, self.per_shard)
      state, self.metrics = self.train_step(state, self.metrics,
                                            *self.train_arrays, perms,
                                            np.int32(index))
      step += 1
      if step == start_step + 1:  # Leave compilation out of the timings.
        jax.block_until_ready(self.metrics)
        self.window.reset(step)
        self.reporter.start_clock(step)

      eval_now = (d.steps_per_eval and step % d.steps_per_eval == 0) or (
          step == d.total_steps)
      stop_now = self.stop.should_stop(step)
      save_now = eval_now or stop_now or (
          d.checkpoint_every and step % d.checkpoint_every == 0)
      # Logging is also the finite-loss check, so it runs before every save.
      if step % self.config.log_every_steps == 0 or save_now:
        self.log_train(state, step)
      if eval_now and 'val' in self.eval_arrays:
        state = self.validate(state, step)
      elif save_now:
        self.save(state, step)
      if eval_now:  # Keep evaluation out of the next window's img/s.
        self.window.reset(step)
      self.reporter.flush(force=save_now)
      if stop_now:
        self.interrupted(step)
    return state, step

  def learning_rate(self, state, step: int) -> float:
    """The rate the step that produced `step` used (its schedule index is step-1)."""
    return (float(self.lr_schedule(step - 1)) *
            float(optim.plateau_scale(state.opt_state)))

  def log_train(self, state, step: int):
    m = jax.device_get(self.metrics)
    self.metrics = zero_train_metrics(self.mesh)
    bad = int(m['first_nonfinite_step'])
    if bad >= 0:
      raise self.nonfinite('the training loss', bad)
    count = max(float(m['count']), 1.)
    loss = float(m['loss']) / count
    seconds = self.window.rate(step)  # NaN right after compilation.
    images_per_sec = (self.config.batch_size / seconds
                      if math.isfinite(seconds) else None)
    self.window.reset(step)
    lr = self.learning_rate(state, step)
    epoch = step / self.durations.steps_per_epoch
    top1, top5 = float(m['top1']) / count, float(m['top5']) / count
    self.reporter.write(step, 'train', epoch=epoch, loss=loss, top1=top1,
                        top5=top5, lr=lr, images_per_sec=images_per_sec)
    self.reporter.progress(step, epoch, loss, top1, lr, images_per_sec)

  def nonfinite(self, what: str, step: int) -> TrainingError:
    latest = self.ckpt.latest_step()
    where = (f'The last good checkpoint, step {latest} in '
             f'{self.ckpt.directory}, is kept: lower --config.learning_rate '
             '(or check the data) and rerun the same command to resume from it'
             if latest is not None else
             'No checkpoint was saved before it: lower --config.learning_rate '
             '(or check the data) and rerun')
    return TrainingError(f'{what} became non-finite at step {step}; stopped '
                         f'without saving anything from that step on. {where}')

  def save(self, state, step: int, metrics: Optional[dict] = None):
    if not bool(all_finite(state.params)):
      raise self.nonfinite('the parameters', step)
    self.ckpt.save(step, state, metrics)

  def evaluate_split(self, name: str, params, step: int, record: bool = True):
    metrics, sums = evaluate(self.eval_fn, params, self.eval_arrays[name])
    if record:
      self.reporter.write(step, name,
                          epoch=step / self.durations.steps_per_epoch,
                          **metrics)
    self.reporter.log(f'{name:>5} @ step {step}: loss {metrics["loss"]:.4f} | '
                      f'top1 {100 * metrics["top1"]:.2f}% | top5 '
                      f'{100 * metrics["top5"]:.2f}%')
    return metrics, sums

  def validate(self, state, step: int):
    """Val metrics, the plateau schedule's input, a ranked checkpoint, curves."""
    self.val_metrics, sums = self.evaluate_split('val', state.params, step)
    state = state.replace(
        plateau_value=1. - sums['top1'] / len(self.data.val))
    self.save(state, step,
              {checkpointing.BEST_METRIC: self.val_metrics['top1']})
    self.reporter.write_curves()
    return state

  def interrupted(self, step: int):
    self.ckpt.wait()
    self.reporter.flush(force=True)
    name = preemption.signal_name(self.stop.signum)
    message = (f'stopped by {name} at step {step}/{self.durations.total_steps}'
               f': checkpoint saved in {self.ckpt.directory}; rerun the same '
               'command to resume')
    self.reporter.log(message)
    raise Interrupted(message, self.stop.signum, step)

  # --- The end -------------------------------------------------------------------

  def finish(self, state, step: int, abstract_state) -> dict:
    """Val (if not just done) and test; the best-val checkpoint's test too."""
    if self.val_metrics is None and 'val' in self.eval_arrays:
      self.val_metrics, _ = self.evaluate_split('val', state.params, step)
    test_metrics, _ = self.evaluate_split('test', state.params, step)
    self.ckpt.wait()
    best = self.ckpt.best_step()
    best_test = None
    if best == step:
      best_test = test_metrics
    elif best is not None:
      params = self.ckpt.restore(best, abstract_state).params
      self.reporter.log(f'best val checkpoint, step {best}:')
      best_test, _ = self.evaluate_split('test', params, step, record=False)
    final = {'step': step, 'val': self.val_metrics, 'test': test_metrics,
             'best_val_step': best, 'best_val_test': best_test}
    self.reporter.write_json('final_metrics.json', final)
    self.reporter.write_curves()
    self.reporter.log(
        f'done: step {step} | test top1 {100 * test_metrics["top1"]:.2f}% | '
        + (f'best val checkpoint: step {best}, test top1 '
           f'{100 * best_test["top1"]:.2f}%' if best is not None else
           'no validation split'))
    return final
