"""Where arrays live: the device mesh, the batch and parameter shardings, and
the placement of each process's share of the training set.

The mesh has two axes, ('data', 'model'). The batch is split over both, so the
convolutions are data-parallel on every device. With model parallelism > 1
the FC layers' weights (and their optimizer state) are split over 'model' --
Krizhevsky's "one weird trick" (2014): data parallelism where the compute is,
model parallelism where the parameters are. Everything else is replicated.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ('data', 'model')
FC_LAYERS = ('fc6', 'fc7', 'fc8')


def make_mesh(model_parallelism: int = 1, devices=None):
  """A (data, model) mesh over every device of every process, process-major."""
  devices = list(devices if devices is not None else jax.devices())
  if model_parallelism < 1 or len(devices) % model_parallelism:
    raise ValueError(
        f'model_parallelism {model_parallelism} must be a positive divisor of '
        f'the device count {len(devices)}')
  mesh = jax.make_mesh(
      (len(devices) // model_parallelism, model_parallelism), ('data', 'model'),
      axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)
  # Each process feeds the rows of the batch that sit on its own devices, so
  # the flattened mesh must list each process's devices contiguously.
  owners = [d.process_index for d in mesh.devices.flat]
  if owners != sorted(owners):
    raise ValueError(f'mesh devices are not grouped by process: {owners}')
  return mesh


def batch(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(abstract_state, mesh):
  """Shardings for a train state: FC weights over 'model', the rest replicated.

  Applies to parameters and to the optimizer state alike, since optax states
  mirror the parameter tree (their paths contain the same layer names).
  """
  model = mesh.shape['model']

  def rule(path, leaf):
    keys = [getattr(k, 'key', None) for k in path]
    split = (model > 1 and any(k in FC_LAYERS for k in keys) and
             keys[-1] in ('kernel', 'bias') and leaf.shape[-1] % model == 0)
    if split:
      return NamedSharding(mesh, P(*([None] * (leaf.ndim - 1)), 'model'))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def put_replicated(array: np.ndarray, mesh) -> jax.Array:
  """A host array, identical on every process, replicated over the mesh."""
  return jax.make_array_from_callback(array.shape, replicated(mesh),
                                      lambda index: array[index])


def put_process_share(local: np.ndarray, mesh) -> jax.Array:
  """This process's share [n, ...] -> global [devices, n, ...].

  Row d of the global array lives on device d and holds the share of the
  process that owns device d, so every device can gather its part of any batch
  locally, with no communication.
  """
  n_local_devices = sum(d.process_index == jax.process_index()
                        for d in mesh.devices.flat)
  stacked = np.broadcast_to(local[None], (n_local_devices,) + local.shape)
  return jax.make_array_from_process_local_data(
      batch(mesh), stacked, (mesh.size,) + local.shape)
