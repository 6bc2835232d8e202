"""The train step lowered for a layout, and the collectives in its HLO: what
`benchmarks.comm_volume` measures and tests/test_towers.py counts.

`lower_train_step` builds the step exactly as training does, through the
same builders (`alexnet_jax/build.py`), on abstract inputs: nothing is
initialized or read, so 8 or 64 simulated devices cost only compilation.
"""

import re

import jax
import jax.numpy as jnp

from alexnet_jax import build
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps


def lower_train_step(config, devices=None, num_classes=None, side=None,
                     batch_size=None):
  """The train step as `train_and_evaluate` builds it for `config`'s layout
  (data parallelism, `model_parallelism`, `tower_parallelism`) on `devices`
  (a list, or a count: the first that many; default all), lowered on
  abstract inputs. `.compile().as_text()` is the HLO a run executes.

  num_classes: default the dataset's (config.num_classes for 'fake');
  side: the model's input side, default the run's (`build.input_side`);
  the batch is uint8 images of that side (no host-side crop; for CIFAR the
  stored 32); batch_size: default config.batch_size (a multiple of the
  batch shards). Returns a `jax.stages.Lowered`.
  """
  if isinstance(devices, int):
    devices = jax.devices()[:devices]
  data = build.dataset(config)
  num_classes = num_classes or data.num_classes or 1000
  side = side or build.input_side(config, data)
  batch_size = batch_size or config.batch_size
  mesh = build.device_mesh(config, devices)
  model = build.model(config, num_classes)
  durations = build.durations(config, 100)
  tx, _ = build.optimizer(config, durations)
  _, abstract = state_lib.create_train_state(
      model, tx, (side, side, 3), config.seed, mesh,
      build.apply_fn(config, model, mesh), abstract_only=True)
  batch = mesh_lib.batch(mesh)
  images = jax.ShapeDtypeStruct((batch_size, side, side, 3), jnp.uint8,
                                sharding=batch)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batch)
  step = steps.make_train_step(
      build.input_spec(config, data, side), num_classes,
      log_every=durations.log_every, label_smoothing=config.label_smoothing,
      plateau=config.schedule == 'plateau')
  return step.lower(abstract, {'images': images, 'labels': labels})


COLLECTIVES = ('all-gather', 'all-reduce', 'collective-permute',
               'all-to-all', 'reduce-scatter')


def count_collectives(hlo_text: str) -> dict:
  """{collective: how many} in a compiled module's HLO text: each op once
  (an async pair's -start; -done not again), leaving out those whose every
  replica group is one device (a psum over a size-1 mesh axis that XLA on
  CPU keeps as an all-reduce of {{0},{1}}: it sends nothing)."""
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
