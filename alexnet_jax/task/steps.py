"""The train step: one uint8 batch in, augmented, forward, loss, backward,
the paper's update; and the per-example quantities evaluation shares.
(Lowering it for a layout, to count its collectives: benchmarks/lowering.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax.runtime import memory
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


def _add_sums(sums, step, log_every, loss, logits, batch, num_classes):
  """Train metric sums since the last logged step (a multiple of
  `log_every`): loss, hits, examples, examples standing in for an
  unreadable image; and the first step whose loss was not finite."""
  labels = batch['labels']
  # The first non-finite step is kept across windows: a run of a stack
  # stays frozen from it on (`make_runs_step`); a single run stops there.
  kept = sums['first_nonfinite_step']
  sums = jax.tree.map(lambda zero, s: jnp.where((step - 1) % log_every == 0,
                                                zero, s),
                      state_lib.zero_sums(), sums)
  sums['first_nonfinite_step'] = kept
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


def make_step_fn(input_spec, num_classes: int, *, log_every: int,
                 label_smoothing: float = 0., plateau: bool = False,
                 optimizer_of=None):
  """step(state, batch) -> state: one train step, not yet compiled.

  One batch in, {'images': uint8, 'labels', ['replaced']}, from either
  feed, sharded over the batch axes, made into the model's input by
  `input_spec.train_view` with keys folded from (state.rng, state.step), so
  batch k's augmentation is the same on any device count and after any
  resume. `state.sums` accumulates the train metrics on the device over
  windows of `log_every` steps (`Durations.log_every`), the steps between
  two logged ones. `plateau`: the optimizer takes the last validation error
  (`value=`, optax's reduce_on_plateau).
  """

  def step_fn(state, batch, hyper=None):
    labels = batch['labels']
    aug_key, dropout_key = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    x = input_spec.train_view(aug_key, batch['images'])
    # A stacked run's numbers (`make_runs_step`): its dropout rate goes to
    # the model, the rest to its optimizer.
    hyper = dict(hyper or {})
    rate = {'dropout_rate': hyper.pop('dropout_rate')} if (
        'dropout_rate' in hyper) else {}

    def loss_fn(params):
      # Batch statistics over the global batch: under jit, the mean over a
      # batch sharded across devices is the mean over all of them.
      mutable = ['batch_stats'] if state.batch_stats else False
      out = state.apply_fn(state_lib.variables(params, state.batch_stats), x,
                           train=True, rngs={'dropout': dropout_key},
                           mutable=mutable, **rate)
      logits, updated = out if mutable else (out, {})
      loss = cross_entropy(logits, labels, num_classes, label_smoothing)
      return loss.mean(), (logits, updated.get('batch_stats', {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    extra = {'value': state.plateau_value} if plateau else {}
    tx = optimizer_of(**hyper) if hyper else state.tx
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   **extra)
    step = state.step + 1
    return state.replace(
        step=step, params=optax.apply_updates(state.params, updates),
        opt_state=opt_state, batch_stats=batch_stats,
        sums=_add_sums(state.sums, step, log_every, loss, logits, batch,
                       num_classes))

  return step_fn


def make_runs_step(step_fn, hyper: dict, unroll: bool = False):
  """step(stack, batches) -> stack: `step_fn` over a stacked state, one run
  per row (`jax.vmap`), run i's batch batches[i] and its optimizer's numbers
  hyper[field][i]. A run whose loss turns non-finite keeps its last good
  parameters and optimizer state from that step on (frozen: its
  `first_nonfinite_step` says where); the others go on.

  `unroll`: the runs' steps side by side in the program instead of one
  batched step (XLA:CPU turns a batched convolution into a grouped one,
  several times slower; `build.train_steps` unrolls there). The batched
  step's run axis is the mesh's 'runs' axis (`runtime/mesh.py`): a stack
  spread over devices runs each group's runs on its own devices."""

  def one(state, batch, h):
    new = step_fn(state, batch, h)
    first_bad = new.sums['first_nonfinite_step']
    params_ok = jnp.all(jnp.stack([jnp.isfinite(x).all()
                                   for x in jax.tree.leaves(new.params)]))
    first_bad = jnp.where((first_bad < 0) & ~params_ok, new.step, first_bad)
    frozen = first_bad >= 0
    keep = lambda old, now: jax.tree.map(
        lambda o, n: jnp.where(frozen, o, n), old, now)
    return new.replace(params=keep(state.params, new.params),
                       opt_state=keep(state.opt_state, new.opt_state),
                       batch_stats=keep(state.batch_stats, new.batch_stats),
                       sums={**new.sums, 'first_nonfinite_step': first_bad})

  def step(state, batch):
    if not unroll:
      return jax.vmap(one, spmd_axis_name='runs')(state, batch, hyper)
    n = len(next(iter(hyper.values())))
    row = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    each = [one(row(state, i), row(batch, i), row(hyper, i))
            for i in range(n)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *each)

  return step


def make_train_step(input_spec, num_classes: int, **kwargs):
  """jit(step)(state, batch) -> state, the state donated: `make_step_fn`'s
  step compiled on its own (a batch from the host per call)."""
  return jax.jit(make_step_fn(input_spec, num_classes, **kwargs),
                 donate_argnums=(0,))


def make_train_chunk(step_fn, gather):
  """jit(chunk)(state, data, first, n) -> state after n steps: batch i of
  the chunk is `gather(data, first + i)`, taken on the device, and n is an
  argument (a loop in one compiled program), so any chunk length runs the
  same executable. Chunks of any lengths give the same state bit for bit
  (a chunk of 1 is this program too); `data` stays on the device."""

  def chunk(state, data, first, n):
    def body(i, state):
      return step_fn(state, gather(data, first + i))
    return jax.lax.fori_loop(0, n, body, state)

  return jax.jit(chunk, donate_argnums=(0,))


class OnDevice:
  """Train steps on a split held on the device (`in_memory.InMemoryFeed`).

  `limit` > 1: up to that many steps in one call, the batch gather and the
  steps in one compiled program (`make_train_chunk`), so the host
  dispatches once per chunk; a chunk stays within one epoch (the
  permutation is the epoch's). `limit` 1: each batch gathered, then one
  jitted step, as a stream's batches are taken. The two are different
  programs: on XLA:CPU a loop's body runs some of the step's convolutions
  outside YNNPACK (slower, and rounded differently), so CPUs take 1
  (`build.train_steps`).
  """

  def __init__(self, step_fn, feed, steps_per_epoch: int, limit: int):
    self.feed, self.steps_per_epoch, self.limit = feed, steps_per_epoch, limit
    if limit > 1:
      self.chunk = make_train_chunk(step_fn, feed.gather_batch)
    else:
      self.single = jax.jit(step_fn, donate_argnums=(0,))

  @property
  def pace(self) -> str:
    """For the run's first log line."""
    return (f'up to {self.limit} steps per call' if self.limit > 1 else
            '1 step per call')

  def room(self, step: int) -> int:
    """The most steps one call may take from `step`."""
    return min(self.limit,
               self.steps_per_epoch - step % self.steps_per_epoch)

  def advance(self, state, step: int, n: int):
    epoch, index = divmod(step, self.steps_per_epoch)
    assert 0 < n <= self.room(step), (step, n)
    if self.limit == 1:
      return self.single(state, self.feed.batch(epoch, index))
    return self.chunk(state, self.feed.epoch_data(epoch), np.int32(index),
                      np.int32(n))

  def compiled(self, abstract_state, runs=None):
    """(the program `advance` runs, compiled ahead from the abstract state
    with nothing allocated, the bytes of the data passed into it): what
    `runtime/memory.py` sizes a stack of runs by. `runs`: the batches of
    the stack's first `runs` runs only (a smaller stack's program)."""
    first = lambda tree: tree if runs is None else jax.tree.map(
        lambda x: x[:runs], tree)
    if self.limit == 1:
      return self.single.lower(abstract_state,
                               first(self.feed.batch(0, 0))).compile(), 0
    images, labels, perms = self.feed.epoch_data(0)
    data = (images, labels, first(perms))
    return self.chunk.lower(abstract_state, data, np.int32(0),
                            np.int32(1)).compile(), memory.per_device_bytes(
                                data)

  def close(self):
    pass


class FromHost:
  """Train steps on batches a stream hands over (`feeds.StreamingFeed`):
  one step, one batch, one call."""

  def __init__(self, step_fn, batches):
    self.step, self.batches = jax.jit(step_fn, donate_argnums=(0,)), batches

  pace = '1 step per call (streamed)'

  def room(self, step: int) -> int:
    del step
    return 1

  def advance(self, state, step: int, n: int):
    assert n == 1, (step, n)
    return self.step(state, next(self.batches))

  def close(self):
    """Ends the stream (a run that stops early: Grain's workers end too)."""
    self.batches.close()


@jax.jit
def finiteness(state):
  """(the first step whose loss was not finite or -1, whether every
  parameter is finite): what a save checks, in one call and one fetch."""
  params_ok = jnp.all(jnp.stack([jnp.isfinite(x).all()
                                 for x in jax.tree.leaves(state.params)]))
  return state.sums['first_nonfinite_step'], params_ok