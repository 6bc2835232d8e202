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
import optax
from etils import epath
from flax.training import train_state

from alexnet_jax import augment
from alexnet_jax import batches
from alexnet_jax import checkpointing
from alexnet_jax import distributed
from alexnet_jax import finetune
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
    'val_examples': (lambda v: _integer(v) and v >= 0,
                     'an integer >= 0 (0: use val_fraction)'),
    'resize_size': (lambda v: _integer(v) and v > 0, 'a positive integer'),
    'data_workers': (lambda v: _integer(v) and v >= 0,
                     'an integer >= 0 (0: decode in this process)'),
    'pca_lighting': (lambda v: _finite(v) and v >= 0,
                     'a finite number >= 0 (0: off; the paper: 0.1)'),
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
  choice('dataset', batches.DATASETS)
  choice('input_scaling', INPUT_SCALINGS)
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
  if (config.schedule == 'plateau' and config.val_fraction == 0 and
      config.val_examples == 0):
    raise ConfigError("schedule 'plateau' needs a validation split; set "
                      'val_fraction > 0 or choose step, cosine or constant')
  image_dataset = config.dataset not in input_pipeline.DATASETS
  for field in ('ten_crop', 'random_resized_crop'):
    if config[field] and not image_dataset:
      raise ConfigError(
          f'{field} needs an image dataset (image_folder, imagenet2012, '
          f'imagenette), not {config.dataset!r}')
  if image_dataset and config.crop_padding:
    raise ConfigError(
        f'crop_padding {config.crop_padding} is for CIFAR-sized images; image '
        f'datasets are cropped from resize_size (set crop_padding=0)')


# How images become model input: 'standardize' ((x - mean) / std on 0..1
# pixels) or 'paper' (the centred raw 0..255 RGB values the paper fed its
# net, Sec. 2: x * 255 - mean * 255).
INPUT_SCALINGS = ('standardize', 'paper')


def input_transform(config, mean, std):
  """(mean, std, scale) for augment.normalize under config.input_scaling."""
  if config.input_scaling == 'paper':
    return mean, (1., 1., 1.), 255.
  return mean, std, 1.


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
  def from_config(cls, config, num_train: int, steps_per_epoch: int):
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


def make_train_step(config, model, num_classes, mean, std, mesh, side=None):
  """jit(step)(state, metrics, images, labels) -> (state, metrics).

  One uint8 batch in, from either feed (`batches.py`), sharded over 'data'.
  It is augmented (`augment.py`) with keys folded from (state.rng,
  state.step): CIFAR's pad-crop-flip, or a flip and the paper's PCA colour
  noise for images the host already cropped. `metrics` accumulates sums on
  device until logged, and remembers the first step whose loss was not
  finite.
  """
  del mesh  # The batch arrives sharded; the step follows it.
  batch = config.batch_size
  side = side or config.image_size or None
  compute_dtype = model.dtype
  plateau = config.schedule == 'plateau'
  mean, std, scale = input_transform(config, mean, std)

  def step_fn(state, metrics, images, labels):
    aug_key, dropout_key = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    x, y = images, labels
    if config.crop_padding:
      x = augment.random_crop_flip(aug_key, x, config.crop_padding,
                                   config.random_flip)
    elif config.random_flip:
      x = augment.random_flip(aug_key, x)
    if config.pca_lighting:
      x = augment.pca_lighting(jax.random.fold_in(aug_key, 1),
                               augment.to_unit(x), config.pca_lighting)
    x = augment.normalize(x, mean, std, side, compute_dtype, scale)

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

def make_logits_fn(config, model, mean, std, side=None):
  """(params, uint8 images) -> log of the softmax averaged over test views.

  The views (`batches.eval_views`): the image, or its centre crop, and with
  `eval_flip` its reflection too (the paper's test-time averaging); or the
  paper's 10 crops (`ten_crop`). One view gives plain log-softmax.
  """
  side = side or config.image_size or None
  mean, std, scale = input_transform(config, mean, std)

  def logits_fn(params, images):
    views = batches.eval_views(config, images, side or images.shape[1])
    log_probs = [jax.nn.log_softmax(model.apply(
        {'params': params},
        augment.normalize(v, mean, std, side, model.dtype, scale),
        train=False).astype(jnp.float32)) for v in views]
    if len(log_probs) == 1:
      return log_probs[0]
    return (jax.nn.logsumexp(jnp.stack(log_probs), axis=0) -
            jnp.log(float(len(log_probs))))

  return logits_fn


def make_eval_fn(config, model, num_classes, mean, std, mesh, side=None):
  """jit(eval)(params, images, labels) -> summed loss/top1/top5 over EVERY
  example of on-device uint8 arrays (padded and masked batches)."""
  return batches.scan_evaluator(make_logits_fn(config, model, mean, std, side),
                                config.eval_batch_size, mesh, num_classes)


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
  mesh = sharding.make_mesh(config.model_parallelism)
  feed = batches.make_feed(config, mesh)
  durations = Durations.from_config(config, feed.sizes['train'],
                                    feed.steps_per_epoch())
  model = make_model(config, feed.num_classes)
  image_shape = model_input_shape(config, model, feed.image_shape)
  tx, lr_schedule = optim.make_optimizer(
      config, durations.steps_per_epoch, durations.total_steps,
      durations.steps_per_eval or durations.total_steps)
  state, abstract_state = create_train_state(model, tx, image_shape,
                                             config.seed, mesh)
  state = finetune.init_from(config, workdir, state)
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
        config, model, feed.num_classes, image_shape))
    run = _Run(config, feed, durations, mesh, model, image_shape[0],
               lr_schedule, ckpt, reporter, stop)
    run.log_header(state, start_step)
    state, step = run.train(state, start_step or 0)
    return run.finish(state, step, abstract_state)


class _Run:
  """One run's loop and its pieces: train, log, evaluate, save, stop, finish."""

  def __init__(self, config, feed, durations, mesh, model, side, lr_schedule,
               ckpt, reporter, stop):
    self.config, self.feed, self.durations, self.mesh = (config, feed,
                                                         durations, mesh)
    self.lr_schedule, self.ckpt, self.reporter, self.stop = (lr_schedule, ckpt,
                                                             reporter, stop)
    self.train_step = make_train_step(config, model, feed.num_classes,
                                      feed.mean, feed.std, mesh, side)
    self.evaluator = feed.make_evaluator(
        make_logits_fn(config, model, feed.mean, feed.std, side))
    self.metrics = zero_train_metrics(mesh)
    self.window = reporting.Stopwatch()
    self.val_metrics = None

  def log_header(self, state, start_step):
    c, d, sizes = self.config, self.durations, self.feed.sizes
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    self.reporter.log(
        f'{c.model}: {n_params:,} parameters | {c.dataset}: '
        f'{sizes["train"]} train / {sizes["val"]} val / '
        f'{sizes["test"]} test | global batch {c.batch_size} = '
        f'{c.batch_size // jax.device_count()} per device x '
        f'{jax.device_count()} devices ({jax.process_count()} processes, mesh '
        f'{dict(self.mesh.shape)}) | {d.total_steps} steps '
        f'({d.steps_per_epoch}/epoch)')
    if c.model_parallelism > 1:
      self.reporter.log(
          f"FC layers split over 'model' ({c.model_parallelism} ways): fc6 "
          f"kernel sharded {tuple(state.params['fc6']['kernel'].sharding.spec)}")
    if start_step is not None:  # Step 0 too: weights from alexnet_jax.convert.
      self.reporter.log(f'resuming from {self.ckpt.directory} at step '
                        f'{start_step}')

  # --- The loop ------------------------------------------------------------------

  def train(self, state, start_step: int):
    d, step = self.durations, start_step
    for images, labels in self.feed.train(start_step, d.total_steps):
      state, self.metrics = self.train_step(state, self.metrics, images,
                                            labels)
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
      if eval_now and self.feed.sizes['val']:
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
    sums = self.evaluator(params, name)
    n = self.feed.sizes[name]
    metrics = {k: float(v) / n for k, v in jax.device_get(sums).items()}
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
        plateau_value=1. - sums['top1'] / self.feed.sizes['val'])
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
    if self.val_metrics is None and self.feed.sizes['val']:
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
      best_test, _ = self.evaluate_split('test', params, best, record=False)
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
