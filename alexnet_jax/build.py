"""The builders: where a run's config becomes its components, and the only
place below the commands that reads it.

Each builder reads the fields of its own component and hands it explicit
values, so the model, the optimizer, the feed and its input spec, the
durations, the train step, the evaluator, the checkpointer and the reporter
never see the config (big_vision's rule). `train.py` calls them in order;
`evaluate`, `predict`, `visualize` and the benchmarks build what they need
the same way, so they read a config exactly as training does.
"""

import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax.data import feeds
from alexnet_jax.data import in_memory
from alexnet_jax.data import registry
from alexnet_jax.data.input_spec import InputSpec
from alexnet_jax.errors import ConfigError
from alexnet_jax.model import alexnet
from alexnet_jax.model import towers
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import memory
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.runtime import reporting
from alexnet_jax.task import evaluation
from alexnet_jax.task import finetune
from alexnet_jax.task import optim
from alexnet_jax.task import runs as runs_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps
from alexnet_jax.task.durations import Durations

Config = ml_collections.ConfigDict


# --- Where it runs, and on what data -----------------------------------------

def device_mesh(config: Config, devices=None):
  return mesh_lib.make_mesh(config.model_parallelism,
                            config.tower_parallelism, devices,
                            runs_parallelism=config.runs_parallelism)


def dataset(config: Config) -> registry.Dataset:
  """`config.dataset`'s record with the run's values, resolved once."""
  return registry.resolve(
      config.dataset, data_dir=config.data_dir, num_classes=config.num_classes,
      fake_image_size=config.fake_image_size, resize_size=config.resize_size,
      data_shards=config.data_shards, process_count=jax.process_count())


def input_side(config: Config, data: registry.Dataset) -> int:
  """The side of the model's input: `image_size`, else the preset's own for
  image datasets (227 paper, 224 torchvision), else the stored images' side
  (32 for CIFAR-10)."""
  if config.image_size:
    return config.image_size
  if data.streamed:
    return alexnet.NATIVE_INPUT_SIZE[config.model]
  return data.stored_side


def compute_dtype(config: Config):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def input_spec(config: Config, data: registry.Dataset, side: int,
               crops_on_device: bool = False) -> InputSpec:
  """How the run's batches become model input (`data/input_spec.py`).
  `crops_on_device`: the feed hands over whole stored squares."""
  mean, std, scale = data.mean, data.std, 1.
  if config.input_scaling == 'paper':  # The centred raw 0..255 values.
    std, scale = (1., 1., 1.), 255.
  device_crop = ''
  if crops_on_device:
    device_crop = 'resized' if config.random_resized_crop else 'random'
  return InputSpec(side=side, mean=tuple(mean), std=tuple(std), scale=scale,
                   dtype=compute_dtype(config), pad_crop=config.crop_padding,
                   device_crop=device_crop, flip=config.random_flip,
                   pca_lighting=config.pca_lighting, ten_crop=config.ten_crop,
                   eval_flip=config.eval_flip)


def host_data(config: Config, data: registry.Dataset) -> in_memory.Dataset:
  """An in-memory dataset's splits on the host, validation held out."""
  return in_memory.load_dataset(
      data, val_examples=config.val_examples,
      val_fraction=config.val_fraction, tfds_data_dir=config.tfds_data_dir,
      fake_num_train=config.fake_num_train, fake_num_test=config.fake_num_test)


def feed(config: Config, mesh, data: registry.Dataset, side: int):
  """The feed of `config.dataset`, its `input_spec` built with it."""
  if data.streamed:
    made = feeds.StreamingFeed(
        data, mesh, batch_size=config.batch_size, seed=config.seed,
        crop_size=side, val_examples=config.val_examples,
        val_fraction=config.val_fraction, tfds_data_dir=config.tfds_data_dir,
        inception_crop=config.random_resized_crop,
        workers=config.data_workers, max_bad_fraction=config.max_bad_fraction,
        dali_device=(config.dali_device if config.input_pipeline == 'dali'
                     else ''))
  else:
    stack = run_plan(config)
    made = in_memory.InMemoryFeed(
        data, host_data(config, data), mesh, batch_size=config.batch_size,
        seed=config.seed, seeds=[r.seed for r in stack] if stack else None)
  made.input_spec = input_spec(config, data, side, made.crops_on_device)
  return made


def run_plan(config: Config) -> Optional[list]:
  """The runs of a stack (`task/runs.py`), or None for one run."""
  if not runs_lib.is_multi(config.runs, config.sweep):
    return None
  return runs_lib.plan(config.runs, config.sweep, config.sweep_mode, config,
                       config.seed)


# --- The schedule --------------------------------------------------------------

def durations(config: Config, steps_per_epoch: int) -> Durations:
  """Every duration in steps, and the run's cadence (`task/durations.py`)."""
  return Durations.in_steps(
      steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs,
      num_steps=config.num_steps, log_every=config.log_every_steps,
      eval_every_epochs=config.eval_every_epochs,
      checkpoint_every=config.checkpoint_every_steps,
      warmup_epochs=config.warmup_epochs,
      lr_step_epochs=config.lr_step_epochs)


def durations_of_feed(config: Config, made_feed) -> Durations:
  return durations(config, Durations.steps_per_epoch_of(
      made_feed.sizes['train'], config.batch_size, made_feed.shards))


# --- The model and its training ----------------------------------------------------

def model(config: Config, num_classes: int) -> alexnet.AlexNet:
  kwargs = dict(num_classes=num_classes, dropout_rate=config.dropout_rate,
                dtype=compute_dtype(config))
  if config.init:
    kwargs['init_scheme'] = config.init
  return alexnet.create_model(config.model, **kwargs)


def check_input_side(config: Config, net: alexnet.AlexNet, side: int):
  """The net must leave every feature map non-empty at this input side."""
  smallest = net.min_input_size()
  if side < smallest:
    raise ConfigError(
        f'{config.model} cannot take {side}x{side} input (it needs at least '
        f'{smallest}x{smallest}); set --config.image_size, e.g. 227 for '
        'alexnet_paper, 224 for alexnet_torchvision')


def apply_fn(config: Config, net: alexnet.AlexNet, mesh):
  """How the run applies the model: `model.apply`, or with
  tower_parallelism 2 the same function run as the paper's two towers over
  the mesh's 'tower' axis (`towers.py`). Same variables, same numbers."""
  if config.tower_parallelism > 1:
    return towers.make_apply(net, mesh)
  return net.apply


def optimizer(config: Config, run_durations: Durations):
  """(the optimizer, its learning-rate schedule, for logging)."""
  return optimizer_with(config, run_durations, config.learning_rate,
                        config.weight_decay, config.momentum)


def optimizer_with(config: Config, run_durations: Durations, learning_rate,
                   weight_decay, momentum):
  """`optimizer` with these numbers (floats, or a stacked run's traced
  values: `runs.SWEEPABLE`: the schedule's shape at peak 1, scaled)."""
  def shape(peak):
    return optim.learning_rate_schedule(
        config.schedule, peak, run_durations,
        lr_step_factor=config.lr_step_factor, poly_power=config.poly_power)
  if isinstance(learning_rate, (int, float)):
    schedule = shape(learning_rate)
  else:
    unit = shape(1.)
    schedule = lambda count: learning_rate * unit(count)
  if config.optimizer == 'lars':
    return optim.lars(schedule, weight_decay=weight_decay,
                      momentum=momentum,
                      trust_coefficient=config.lars_trust_coefficient,
                      eps=config.lars_eps), schedule
  plateau = None
  if config.schedule == 'plateau':
    plateau = dict(
        patience=config.plateau_patience,
        accumulation_size=(run_durations.steps_per_eval or
                           run_durations.total_steps),
        min_scale=0.1 ** config.plateau_reductions)
  return optim.sgd(schedule, weight_decay=weight_decay,
                   momentum=momentum, plateau=plateau), schedule


def train_state(config: Config, net: alexnet.AlexNet, tx, side: int, mesh,
                apply):
  """(the initial train state, its abstract twin for restores)."""
  stack = run_plan(config)
  return state_lib.create_train_state(
      net, tx, (side, side, 3), config.seed, mesh, apply,
      seeds=[r.seed for r in stack] if stack else None)


def check_stack_fits(config: Config, made_feed, run_durations: Durations,
                     net: alexnet.AlexNet, tx, side: int,
                     mesh, apply) -> Optional[str]:
  """Refuses a stack of runs that would not fit the device's memory, before
  any of it is allocated (`runtime/memory.py`): its train program compiled
  from the abstract state, plus the data the feed holds. Returns the
  figures in a line for the log (None: one run, or nothing to size by)."""
  stack = run_plan(config)
  if not stack:
    return None
  resident = memory.per_device_bytes(made_feed.device_arrays())
  room = memory.budget(mesh.local_devices[0], config.memory_limit_gib,
                       held=resident)
  if room is None:
    return None
  room = memory.least(room)
  begun = time.monotonic()

  def size(runs):
    _, abstract = state_lib.create_train_state(
        net, tx, (side, side, 3), config.seed, mesh, apply,
        abstract_only=True, seeds=[r.seed for r in runs])
    compiled, data_in = train_steps(
        config, made_feed, run_durations, 0, stack=runs).compiled(
            abstract, runs=len(runs))
    program = memory.program_bytes(compiled)
    return program and memory.StackSize(len(runs), program - data_in,
                                        resident)

  whole = size(stack)
  if whole is None:  # No memory analysis on this platform.
    return None
  groups = mesh.shape['runs']  # A smaller stack still fills each group.
  refused = memory.refusal(whole, room, lambda: memory.largest(
      size(stack[:groups]), whole, room.bytes, multiple=groups),
                           points=len(stack) // config.runs)
  if refused:
    raise ConfigError(refused)
  return memory.fits(whole, room, time.monotonic() - begun)


def finetuned(config: Config, workdir: str, state):
  """`state` with `--config.init_from`'s weights, where asked for."""
  return finetune.init_from(config.init_from, config.model, workdir, state)


def train_steps(config: Config, made_feed, run_durations: Durations,
                start_step: int, stack: Optional[list] = None):
  """How the run takes its steps (`steps.OnDevice` or `steps.FromHost`):
  chunks of up to `steps_per_call` steps per compiled call on data held on
  the device; one step per batch from a stream. `stack`: these runs of the
  plan (sizing a smaller stack), not the whole plan."""
  stack = stack or run_plan(config)
  step_fn = steps.make_step_fn(
      made_feed.input_spec, made_feed.num_classes,
      log_every=run_durations.log_every,
      label_smoothing=config.label_smoothing,
      plateau=config.schedule == 'plateau',
      optimizer_of=lambda **h: optimizer_with(config, run_durations, **h)[0])
  if stack:
    step_fn = steps.make_runs_step(step_fn, {
        k: jnp.asarray([r.values[k] for r in stack], jnp.float32)
        for k in runs_lib.SWEEPABLE}, unroll=unrolled(made_feed.mesh))
  if made_feed.streamed:
    return steps.FromHost(step_fn, made_feed.train(
        start_step, run_durations.steps_per_epoch, run_durations.total_steps))
  return steps.OnDevice(step_fn, made_feed, run_durations.steps_per_epoch,
                        steps_per_call(config))


def unrolled(mesh) -> bool:
  """Whether a stack's runs are stepped side by side in one program rather
  than by one batched step: on XLA:CPU, where a batched convolution is a
  grouped one and several times slower (`benchmarks.stacked_runs`), unless
  the stack is spread over devices (`runs_parallelism`)."""
  return jax.default_backend() == 'cpu' and mesh.shape['runs'] == 1


# Steps per call where `steps_per_call` is 0 (auto), by platform: on
# XLA:CPU a chunk's loop runs 18x slower (benchmarks.steps_per_call: its
# body leaves most convolution gradients out of YNNPACK) and dispatch is
# a sliver of a step; on accelerators a call per step is launch-bound.
AUTO_STEPS_PER_CALL = {'cpu': 1}
AUTO_STEPS_PER_CALL_ACCELERATORS = 16


def steps_per_call(config: Config) -> int:
  if config.steps_per_call:
    return config.steps_per_call
  return AUTO_STEPS_PER_CALL.get(jax.default_backend(),
                                 AUTO_STEPS_PER_CALL_ACCELERATORS)


def evaluator(config: Config, made_feed, apply, mesh) -> evaluation.Evaluator:
  """Loss, top-1 and top-5 over every example of a split of `made_feed`
  (`made_feed.evaluate(evaluator, variables, split)`)."""
  return evaluation.Evaluator(
      evaluation.make_logits_fn(made_feed.input_spec, apply),
      config.eval_batch_size, mesh, made_feed.num_classes)


# --- The workdir's writers ---------------------------------------------------------

def checkpointer(config: Config, layout) -> checkpoints.Checkpointer:
  return checkpoints.Checkpointer(layout, config.keep_checkpoints)


def reporter(config: Config, layout, run_durations: Durations,
             start_step: Optional[int]) -> reporting.Reporter:
  return reporting.Reporter(layout, run_durations, start_step or 0,
                            config.profile_steps,
                            title=f'{config.model} on {config.dataset}')


def resolved_config(config: Config, net: alexnet.AlexNet, num_classes: int,
                    side: int) -> dict:
  """The config with the values the run actually used (for config.json)."""
  used = config.to_dict()
  used.update(num_classes=num_classes, init=net.init_scheme, image_size=side)
  return used
