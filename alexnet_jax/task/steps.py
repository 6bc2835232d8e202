"""The train step: one uint8 batch in, augmented, forward, loss, backward,
the paper's update; and the per-example quantities evaluation shares."""

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.data import augment
from alexnet_jax.task import config as config_lib
from alexnet_jax.task import state as state_lib


def correct(logits, labels, k):
  """1.0 where the label is among the k highest logits, per example."""
  top = jax.lax.top_k(logits, k)[1]
  return (top == labels[:, None]).any(axis=-1).astype(jnp.float32)


def cross_entropy(logits, labels, num_classes, label_smoothing=0.):
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def augment_batch(config, key, images, side, dtype, mean, std,
                  crop_on_device: bool = False):
  """The training view of a uint8 batch: CIFAR's pad-crop-flip; or for image
  datasets a random `side` crop of the stored 256x256 square (the paper's
  227 of 256, or an Inception-style crop) where the host did not crop
  already (`crop_on_device`: the store, DALI) and a flip; the paper's PCA
  colour noise; then normalization to the model's input side and dtype."""
  mean, std, scale = config_lib.input_transform(config, mean, std)
  x = images
  if config.crop_padding:
    x = augment.random_crop_flip(key, x, config.crop_padding,
                                 config.random_flip)
  else:
    if crop_on_device:
      crop = (augment.random_resized_crop if config.random_resized_crop
              else augment.random_crop)
      x = crop(jax.random.fold_in(key, 2), x, side)
    if config.random_flip:
      x = augment.random_flip(key, x)
  if config.pca_lighting:
    x = augment.pca_lighting(jax.random.fold_in(key, 1), augment.to_unit(x),
                             config.pca_lighting)
  return augment.normalize(x, mean, std, side, dtype, scale)


def _add_sums(sums, step, log_every, loss, logits, batch, num_classes):
  """Train metric sums since the last logged step (a multiple of
  `log_every`): loss, hits, examples, examples standing in for an
  unreadable image; and the first step whose loss was not finite."""
  labels = batch['labels']
  sums = jax.tree.map(lambda zero, s: jnp.where((step - 1) % log_every == 0,
                                                zero, s),
                      state_lib.zero_sums(), sums)
  batch_size = labels.shape[0]
  first_bad = sums['first_nonfinite_step']
  return {
      'loss': sums['loss'] + loss * batch_size,
      'top1': sums['top1'] + correct(logits, labels, 1).sum(),
      'top5': sums['top5'] + correct(logits, labels, min(5, num_classes)).sum(),
      'count': sums['count'] + batch_size,
      'replaced': sums['replaced'] + (
          batch['replaced'].sum() if 'replaced' in batch else 0),
      'first_nonfinite_step': jnp.where(
          (first_bad < 0) & ~jnp.isfinite(loss), step, first_bad),
  }


def make_train_step(config, model, num_classes, mean, std, side,
                    crop_on_device: bool = False):
  """jit(step)(state, batch) -> state, the state donated.

  One batch in, {'images': uint8, 'labels', ['replaced']}, from either
  feed, sharded over the batch axes. It is
  augmented with keys folded from (state.rng, state.step), so batch k's
  augmentation is the same on any device count and after any resume.
  `state.sums` accumulates the train metrics on the device until they are
  logged at the next multiple of `config.log_every_steps`.
  """
  plateau = config.schedule == 'plateau'

  def step_fn(state, batch):
    labels = batch['labels']
    aug_key, dropout_key = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    x = augment_batch(config, aug_key, batch['images'], side, model.dtype,
                      mean, std, crop_on_device)

    def loss_fn(params):
      # Batch statistics over the global batch: under jit, the mean over a
      # batch sharded across devices is the mean over all of them.
      mutable = ['batch_stats'] if state.batch_stats else False
      out = state.apply_fn(state_lib.variables(params, state.batch_stats), x,
                           train=True, rngs={'dropout': dropout_key},
                           mutable=mutable)
      logits, updated = out if mutable else (out, {})
      loss = cross_entropy(logits, labels, num_classes, config.label_smoothing)
      return loss.mean(), (logits, updated.get('batch_stats', {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    extra = {'value': state.plateau_value} if plateau else {}
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                         **extra)
    step = state.step + 1
    return state.replace(
        step=step, params=optax.apply_updates(state.params, updates),
        opt_state=opt_state, batch_stats=batch_stats,
        sums=_add_sums(state.sums, step, config.log_every_steps, loss, logits,
                       batch, num_classes))

  return jax.jit(step_fn, donate_argnums=(0,))


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every parameter is finite (checked before each save)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(tree)]))


def lower_train_step(config, devices=None, num_classes=None, side=None,
                     batch_size=None):
  """The train step exactly as `train_and_evaluate` builds it for `config`'s
  layout (data parallelism, `model_parallelism`, `tower_parallelism`) on
  `devices` (a list, or a count: the first that many; default all),
  lowered on abstract inputs: nothing is
  initialized or read. `.compile().as_text()` is the HLO a run executes, for
  counting its collectives (tests/test_towers.py) or its bytes on the wire.

  num_classes: default the dataset's (config.num_classes for 'fake');
  side: the model's input side, default `config_lib.input_side`; the batch
  is uint8 images of that side (no host-side crop; for CIFAR the stored 32);
  batch_size: default config.batch_size (a multiple of the batch shards).
  Returns a `jax.stages.Lowered`.
  """
  from alexnet_jax.data import registry  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.task import optim  # pylint: disable=g-import-not-at-top
  if isinstance(devices, int):
    devices = jax.devices()[:devices]
  spec = registry.get(config.dataset)
  num_classes = num_classes or spec.classes(config) or 1000
  side = side or config_lib.input_side(config)
  batch_size = batch_size or config.batch_size
  mesh = mesh_lib.make_mesh(config.model_parallelism,
                            config.get('tower_parallelism', 1), devices)
  model = state_lib.make_model(config, num_classes)
  durations = config_lib.Durations.from_steps_per_epoch(config, 100)
  tx, _ = optim.make_optimizer(config, durations)
  _, abstract = state_lib.create_train_state(
      model, tx, (side, side, 3), config.seed, mesh,
      state_lib.make_apply(config, model, mesh), abstract_only=True)
  batch = mesh_lib.batch(mesh)
  images = jax.ShapeDtypeStruct((batch_size, side, side, 3), jnp.uint8,
                                sharding=batch)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch)
  step = make_train_step(config, model, num_classes, spec.mean, spec.std,
                         side)
  return step.lower(abstract, {'images': images, 'labels': labels})


COLLECTIVES = ('all-gather', 'all-reduce', 'collective-permute',
               'all-to-all', 'reduce-scatter')


def count_collectives(hlo_text: str) -> dict:
  """{collective: how many} in a compiled module's HLO text: each op once
  (an async pair's -start; -done not again), leaving out those whose every
  replica group is one device (a psum over a size-1 mesh axis that XLA on
  CPU keeps as an all-reduce of {{0},{1}}: it sends nothing)."""
  import re  # pylint: disable=g-import-not-at-top
  counts = dict.fromkeys(COLLECTIVES, 0)
  for line in hlo_text.splitlines():
    if ' = ' not in line:
      continue
    for name in COLLECTIVES:
      if re.search(rf' {name}(-start)?\(', line):
        groups = re.search(r'replica_groups=(\{[{}0-9,]*\}|\[\d+,1\]<=)',
                           line)
        lone = groups and (groups.group(1).endswith(',1]<=') or all(
            ',' not in g for g in re.findall(r'\{([0-9,]*)\}',
                                             groups.group(1))))
        if not lone:
          counts[name] += 1
        break
  return counts
