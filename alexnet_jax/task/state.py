"""The train state and how it comes to be: shapes first (`jax.eval_shape`),
then init straight into the target shardings."""

import jax
import jax.numpy as jnp
from flax.training import train_state

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import mesh as mesh_lib

# The train metrics summed on the device between two logged steps.
SUM_KEYS = ('loss', 'top1', 'top5', 'count', 'replaced')


def zero_sums() -> dict:
  """Train metric sums, and the first step whose loss was not finite (-1)."""
  sums = {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}
  sums['first_nonfinite_step'] = jnp.full((), -1, jnp.int32)
  return sums


class TrainState(train_state.TrainState):
  """flax's train state, plus what an exact resume needs besides.

  rng: raw key data; dropout and augmentation keys fold in the step.
  plateau_value: the last validation top-1 error (the plateau schedule).
  sums: train metrics summed since the last logged step, so a run resumed
    between two logs writes the same records as one never stopped.
  batch_stats: batch normalization's running averages (AlexNet-BN; empty
    otherwise), saved and restored with the rest.
  """
  rng: jax.Array
  plateau_value: jax.Array
  sums: dict
  batch_stats: dict


def variables(params, batch_stats=None) -> dict:
  """What `model.apply` takes: the parameters, and batch norm's running
  averages where the model has them."""
  return {'params': params, **({'batch_stats': batch_stats}
                               if batch_stats else {})}


def eval_variables(state) -> dict:
  return variables(state.params, state.batch_stats)


def create_train_state(model, tx, image_shape, seed: int, mesh,
                       apply_fn=None, abstract_only: bool = False,
                       seeds=None):
  """(state, its abstract twin carrying the shardings, for restores).
  `apply_fn`: the state's forward pass (default `model.apply`).
  `abstract_only`: (None, the abstract twin), nothing allocated (to lower
  the train step for a layout without initializing the model).
  `seeds`: a stack of runs (`task/runs.py`), one state per seed along a
  leading axis, each as `seed` alone would make it."""
  def init(key):
    params_key, train_key = jax.random.split(key)
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    initial = model.init({'params': params_key}, x, train=False)
    return TrainState.create(apply_fn=apply_fn or model.apply,
                             params=initial['params'],
                             tx=tx, rng=jax.random.key_data(train_key),
                             plateau_value=jnp.float32(1.), sums=zero_sums(),
                             batch_stats=initial.get('batch_stats', {}))

  key = jax.random.key(seed)
  if seeds is not None:
    init = jax.vmap(init)
    key = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
  abstract = jax.eval_shape(init, key)
  shardings = mesh_lib.state_shardings(abstract, mesh)
  if seeds is not None:  # Run groups over the mesh's 'runs' axis.
    shardings = jax.tree.map(mesh_lib.stacked, shardings)
  if abstract_only:
    return None, checkpoints.abstract_with_shardings(abstract, shardings)
  state = jax.jit(init, out_shardings=shardings)(key)
  return state, checkpoints.abstract_with_shardings(abstract, shardings)
