"""The training run: the jitted train and eval steps, and the loop around them.

Read top to bottom: config checks and durations, the train state, the train
step, evaluation, then `train_and_evaluate`, which ties data, checkpoints and
reporting together. Everything that can fail on bad input fails before the
workdir is touched.
"""

import dataclasses
import json
import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from alexnet_jax import checkpointing
from alexnet_jax import distributed
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import optim
from alexnet_jax import reporting
from alexnet_jax import sharding


class ConfigError(Exception):
  """The config asks for something that cannot run; the message names it."""


class TrainingError(Exception):
  """Training cannot go on (e.g. the loss stopped being finite)."""


def validate_config(config: ml_collections.ConfigDict):
  """Cheap checks, before any data is read or any file written."""
  def choice(field, valid):
    if config[field] not in valid:
      raise ConfigError(f'unknown {field} {config[field]!r}; valid: '
                        f'{", ".join(valid)}')

  choice('model', tuple(models.MODELS))
  choice('dataset', input_pipeline.DATASETS)
  choice('schedule', optim.SCHEDULES)
  choice('init', ('',) + models.INIT_SCHEMES)
  n = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f'{field} {value!r} must be a positive integer')
  if config.batch_size % n:
    raise ConfigError(f'batch_size {config.batch_size} is not divisible by the '
                      f'device count {n}; use a multiple of {n}')
  mp = config.model_parallelism
  if not isinstance(mp, int) or mp < 1 or n % mp:
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
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(f'num_epochs {config.num_epochs} and num_steps '
                      f'{config.num_steps}: one of them must be positive')
  if not 0 <= config.val_fraction < 1:
    raise ConfigError(f'val_fraction {config.val_fraction} must be in [0, 1)')
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
  rng: jax.Array  # Dropout and augmentation keys derive from (rng, step).
  plateau_value: jax.Array  # Last validation top-1 error (plateau schedule).


# --- Model, state and shardings ---------------------------------------------

def make_model(config, num_classes: int) -> models.AlexNet:
  kwargs = dict(num_classes=num_classes, dropout_rate=config.dropout_rate,
                dtype=jnp.bfloat16 if config.half_precision else jnp.float32)
  if config.init:
    kwargs['init_scheme'] = config.init
  return models.create_model(config.model, **kwargs)


def create_train_state(model, tx, image_shape, seed: int, mesh):
  """Shapes first (eval_shape), then init straight into the target shardings."""
  def init(key):
    params_key, train_key = jax.random.split(key)
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    params = model.init({'params': params_key}, x, train=False)['params']
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             rng=train_key, plateau_value=jnp.float32(1.))

  key = jax.random.PRNGKey(seed)
  try:
    abstract = jax.eval_shape(init, key)
  except (TypeError, ValueError) as e:  # E.g. maps pooled down to nothing.
    raise ConfigError(
        f'the model cannot take {image_shape[0]}x{image_shape[1]} input '
        f'({str(e).splitlines()[0][:120]}); set --config.image_size, e.g. 227 '
        'for alexnet_paper, 224 for alexnet_torchvision') from None
  shardings = sharding.state_shardings(abstract, mesh)
  state = jax.jit(init, out_shardings=shardings)(key)
  return state, checkpointing.abstract_with_shardings(abstract, shardings)


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
  return jax.device_put({k: jnp.zeros((), jnp.float32)
                         for k in ('loss', 'top1', 'top5', 'count')},
                        sharding.replicated(mesh))


def make_train_step(config, model, num_classes, mean, std, mesh):
  """jit(step)(state, metrics, images, labels, perms, step_in_epoch).

  `images`/`labels` are [devices, share, ...]: row d is the training share of
  the process owning device d. Each device gathers its rows of the batch from
  its own row by the epoch's permutations (`input_pipeline.batch_indices`);
  the batch is augmented with keys folded from (state.rng, state.step).
  `metrics` accumulates sums on device until logged.
  """
  batch = config.batch_size
  image_size = config.image_size or None
  compute_dtype = model.dtype
  batch_sharding = sharding.batch(mesh)
  plateau = config.schedule == 'plateau'
  n_devices = mesh.size

  def step_fn(state, metrics, images, labels, perms, step_in_epoch):
    step_fn.traces += 1  # Runs at trace time only: counts compilations.
    idx = input_pipeline.batch_indices(perms, step_in_epoch, batch,
                                       jax.process_count())
    idx = jax.lax.with_sharding_constraint(
        idx.reshape(n_devices, batch // n_devices), batch_sharding)
    take = jax.vmap(lambda rows, i: rows[i])
    x = take(images, idx).reshape((batch,) + images.shape[2:])
    y = take(labels, idx).reshape(batch)
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
    aug_key, dropout_key = jax.random.split(
        jax.random.fold_in(state.rng, state.step))
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
    state = state.replace(step=state.step + 1,
                          params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)
    metrics = {
        'loss': metrics['loss'] + loss * batch,
        'top1': metrics['top1'] + _correct(logits, y, 1).sum(),
        'top5': metrics['top5'] + _correct(logits, y, min(5, num_classes)).sum(),
        'count': metrics['count'] + batch,
    }
    return state, metrics

  step_fn.traces = 0
  jitted = jax.jit(step_fn, donate_argnums=(0, 1))
  jitted.traces = lambda: step_fn.traces
  return jitted


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

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluating on val as it goes and on test at the end; resumes.

  Returns the final metrics: {'step', 'val': {...} or None, 'test': {...}}.
  """
  validate_config(config)
  data = input_pipeline.load_dataset(config)
  durations = Durations.from_config(config, len(data.train))
  shards = num_data_shards(config)
  share, per_shard = input_pipeline.process_share(
      data.train, shards, jax.process_index(), jax.process_count())
  mesh = sharding.make_mesh(config.model_parallelism)
  model = make_model(config, data.num_classes)
  tx, lr_schedule = optim.make_optimizer(
      config, durations.steps_per_epoch, durations.total_steps,
      durations.steps_per_eval or durations.total_steps)
  native = data.train.images.shape[1:]
  image_shape = ((config.image_size, config.image_size, native[2])
                 if config.image_size else native)
  state, abstract_state = create_train_state(model, tx, image_shape,
                                             config.seed, mesh)
  distributed.check_shared_workdir(workdir)

  # Only now, with config, data and model known good, touch the workdir.
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = ckpt.restore(start_step, abstract_state)
  reporter = reporting.Reporter(workdir, durations.total_steps, start_step)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  reporter.log(
      f'{config.model}: {n_params:,} parameters | {config.dataset}: '
      f'{len(data.train)} train / {len(data.val) if data.val else 0} val / '
      f'{len(data.test)} test | global batch {config.batch_size} = '
      f'{config.batch_size // jax.device_count()} per device x '
      f'{jax.device_count()} devices ({jax.process_count()} processes, mesh '
      f'{dict(mesh.shape)}) | {durations.total_steps} steps '
      f'({durations.steps_per_epoch}/epoch)')
  if config.model_parallelism > 1:
    reporter.log(f"FC layers split over 'model' ({config.model_parallelism} "
                 'ways): fc6 kernel sharded '
                 f"{tuple(state.params['fc6']['kernel'].sharding.spec)}")
  if start_step:
    reporter.log(f'resuming from {ckpt.directory} at step {start_step}')

  train_arrays = (sharding.put_process_share(share.images, mesh),
                  sharding.put_process_share(share.labels, mesh))
  eval_arrays = {name: (sharding.put_replicated(s.images, mesh),
                        sharding.put_replicated(s.labels, mesh))
                 for name, s in (('val', data.val), ('test', data.test)) if s}
  train_step = make_train_step(config, model, data.num_classes, data.mean,
                               data.std, mesh)
  eval_fn = make_eval_fn(config, model, data.num_classes, data.mean, data.std,
                         mesh)
  data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5eed)
  permutations = jax.jit(input_pipeline.epoch_permutations,
                         static_argnums=(2, 3),
                         out_shardings=sharding.replicated(mesh))

  def learning_rate(step):
    return float(lr_schedule(step)) * float(optim.plateau_scale(state.opt_state))

  def evaluate_split(name, step):
    metrics, sums = evaluate(eval_fn, state.params, eval_arrays[name])
    reporter.write(step, name, epoch=step / durations.steps_per_epoch,
                   **metrics)
    reporter.log(f'{name:>5} @ step {step}: loss {metrics["loss"]:.4f} | top1 '
                 f'{100 * metrics["top1"]:.2f}% | top5 '
                 f'{100 * metrics["top5"]:.2f}%')
    return metrics, sums

  step = start_step
  perm_epoch, perms = None, None
  metrics_acc = zero_train_metrics(mesh)
  stopwatch = reporting.Stopwatch()
  val_metrics = None
  try:
    while step < durations.total_steps:
      epoch, index = divmod(step, durations.steps_per_epoch)
      if epoch != perm_epoch:
        perm_epoch, perms = epoch, permutations(data_key, epoch, shards,
                                                per_shard)
      state, metrics_acc = train_step(state, metrics_acc, *train_arrays,
                                      perms, np.int32(index))
      step += 1
      if step == start_step + 1:  # Leave compilation out of the timings.
        jax.block_until_ready(metrics_acc)
        stopwatch.reset(step)

      last = step == durations.total_steps
      eval_now = (durations.steps_per_eval and
                  step % durations.steps_per_eval == 0) or last
      save_now = eval_now or (durations.checkpoint_every and
                              step % durations.checkpoint_every == 0)
      # Logging is also the finite-loss check, so it runs before every save.
      if step % config.log_every_steps == 0 or save_now:
        m = jax.device_get(metrics_acc)
        metrics_acc = zero_train_metrics(mesh)
        count = max(m['count'], 1)
        loss = m['loss'] / count
        if not math.isfinite(loss):
          raise TrainingError(
              f'non-finite training loss ({loss}) at step {step}; stopped '
              f'without saving. The last good checkpoint (step '
              f'{ckpt.latest_step()}) is kept; lower --config.learning_rate '
              'and rerun to resume from it')
        seconds = stopwatch.rate(step)  # NaN right after compilation.
        images_per_sec = (config.batch_size / seconds
                          if math.isfinite(seconds) else None)
        stopwatch.reset(step)
        lr = learning_rate(step)
        reporter.write(step, 'train', epoch=step / durations.steps_per_epoch,
                       loss=loss, top1=m['top1'] / count,
                       top5=m['top5'] / count, lr=lr,
                       images_per_sec=images_per_sec)
        reporter.progress(step, step / durations.steps_per_epoch, loss,
                          m['top1'] / count, lr, images_per_sec, seconds)

      if eval_now and 'val' in eval_arrays:
        val_metrics, sums = evaluate_split('val', step)
        state = state.replace(plateau_value=1. - sums['top1'] / len(data.val))
        ckpt.save(step, state, {checkpointing.BEST_METRIC: val_metrics['top1']})
      elif save_now:
        ckpt.save(step, state)
      if eval_now:  # Keep evaluation out of the next window's img/s.
        stopwatch.reset(step)
      reporter.flush()

    if val_metrics is None and 'val' in eval_arrays:
      val_metrics, _ = evaluate_split('val', step)
    test_metrics, _ = evaluate_split('test', step)
    best = ckpt.best_step()
    final = {'step': step, 'val': val_metrics, 'test': test_metrics,
             'best_val_step': best,
             # 1 unless something made the step recompile (a test checks).
             'train_step_traces': train_step.traces()}
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
        json.dump(final, f, indent=2)
    reporter.log(f'done: step {step} | test top1 '
                 f'{100 * test_metrics["top1"]:.2f}% | best val checkpoint: '
                 f'step {best}')
    return final
  finally:
    ckpt.close()
    reporter.close()
