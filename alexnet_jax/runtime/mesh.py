"""Where arrays live: the device mesh, the batch and parameter shardings, and
the placement of each process's share of the training set.

The mesh has four axes, ('runs', 'data', 'model', 'tower'). 'runs' spreads
a stack of runs (`task/runs.py`) over devices: each group of devices along
it trains its own runs, its batch split over its own 'data' devices. The
batch is split over 'data' and 'model', so the convolutions are
data-parallel on every device of a 'model' group. With model parallelism > 1
the FC layers' weights (and their optimizer state) are split over 'model' --
Krizhevsky's "one weird trick" (2014): data parallelism where the compute
is, model parallelism where the parameters are. With tower parallelism 2
(the paper's two GPUs, `model/towers.py`) each device of a 'tower' pair
holds one tower's half of conv2..conv5, fc6 and fc7, and both see the same
images: the batch is replicated over 'tower'. Everything else is replicated.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('runs', 'data', 'model', 'tower')
BATCH_AXES = ('data', 'model')
FC_LAYERS = ('fc6', 'fc7', 'fc8')
# Split over 'tower' along their outputs: tower t holds outputs
# [t * C / 2, (t + 1) * C / 2), which for the grouped conv2/conv4/conv5 is
# exactly group t's kernel. conv1 and fc8 stay whole on both (`towers.py`).
TOWER_LAYERS = ('conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')


def make_mesh(model_parallelism: int = 1, tower_parallelism: int = 1,
              devices=None, runs_parallelism: int = 1):
  """A (runs, data, model, tower) mesh over every device of every process,
  process-major; 'tower' innermost, so the devices of a tower pair are
  neighbours (one host, the fastest link); 'runs' outermost, so a group of
  runs is data-parallel over neighbouring devices."""
  devices = list(devices if devices is not None else jax.devices())
  inner = model_parallelism * tower_parallelism * runs_parallelism
  if min(model_parallelism, tower_parallelism, runs_parallelism) < 1 or len(
      devices) % inner:
    raise ValueError(
        f'runs_parallelism {runs_parallelism} x model_parallelism '
        f'{model_parallelism} x tower_parallelism {tower_parallelism} must '
        f'divide the device count {len(devices)}')
  mesh = jax.make_mesh(
      (runs_parallelism, len(devices) // inner, model_parallelism,
       tower_parallelism), AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * 4, devices=devices)
  # Each process feeds the rows of the batch that sit on its own devices, so
  # the flattened mesh must list each process's devices contiguously.
  owners = [d.process_index for d in mesh.devices.flat]
  if owners != sorted(owners):
    raise ValueError(f'mesh devices are not grouped by process: {owners}')
  return mesh


def batch_shards(mesh) -> int:
  """How many parts the batch is cut into (devices of a tower pair share one)."""
  return mesh.shape['data'] * mesh.shape['model']


def batch(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def stacked_batch(mesh) -> NamedSharding:
  """A stack's batches [runs, batch, ...]: run groups over 'runs', each
  run's batch over the batch axes."""
  return NamedSharding(mesh, P('runs', BATCH_AXES))


def stacked(sharding: NamedSharding) -> NamedSharding:
  """A stacked state's leaf: `sharding`'s placement, behind a leading run
  axis split over 'runs'."""
  return NamedSharding(sharding.mesh, P('runs', *sharding.spec))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(path, leaf, mesh) -> P:
  """Where a parameter (or its optimizer state) lives: split along its output
  axis over 'tower' (TOWER_LAYERS) or over 'model' (FC_LAYERS), else whole.
  One rule for the state's shardings and `towers.py`'s shard_map."""
  keys = [getattr(k, 'key', None) for k in path]
  if keys[-1:] not in (['kernel'], ['bias']):
    return P()
  lead = [None] * (leaf.ndim - 1)
  for axis, layers in (('tower', TOWER_LAYERS), ('model', FC_LAYERS)):
    n = mesh.shape[axis]
    if n > 1 and any(k in layers for k in keys) and leaf.shape[-1] % n == 0:
      return P(*lead, axis)
  return P()


def state_shardings(abstract_state, mesh):
  """Shardings for a train state, by `param_spec`.

  Applies to parameters and to the optimizer state alike, since optax states
  mirror the parameter tree (their paths contain the same layer names).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, param_spec(path, leaf, mesh)),
      abstract_state)


def put_replicated(array: np.ndarray, mesh) -> jax.Array:
  """A host array, identical on every process, replicated over the mesh."""
  return jax.make_array_from_callback(array.shape, replicated(mesh),
                                      lambda index: array[index])


def put_process_share(local: np.ndarray, mesh) -> jax.Array:
  """This process's share [n, ...] -> global [batch_shards, n, ...].

  Row r of the global array lives on the device(s) holding part r of the
  batch (`batch_shards`; a tower pair shares one) and holds the share of the
  process that owns them, so every device can gather its part of any batch
  locally, with no communication.
  """
  rows = len(_parts_of_process(mesh))
  stacked = np.broadcast_to(local[None], (rows,) + local.shape)
  return jax.make_array_from_process_local_data(
      batch(mesh), stacked, (batch_shards(mesh),) + local.shape)


def _parts_of_process(mesh) -> list:
  """The batch parts (`batch_shards`) this process's devices hold, whatever
  their run group."""
  parts = set()
  for (_, d, m, _), device in np.ndenumerate(mesh.devices):
    if device.process_index == jax.process_index():
      parts.add(d * mesh.shape['model'] + m)
  return sorted(parts)


def share_of_process(mesh) -> tuple:
  """(which share, of how many) of the training set this process holds:
  its batch parts are contiguous, so the batch's parts fall into equal
  shares, one per distinct set of parts. With one run group it is
  (process index, process count); run groups spanning processes share."""
  parts = _parts_of_process(mesh)
  if parts != list(range(parts[0], parts[0] + len(parts))):
    raise ValueError(f'process {jax.process_index()} holds batch parts '
                     f'{parts}, not a contiguous range')
  return parts[0] // len(parts), batch_shards(mesh) // len(parts)
