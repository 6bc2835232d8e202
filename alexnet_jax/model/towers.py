"""The paper's own parallelism: each tower of the two-tower net on its own
device(s), communicating where the paper's two GPUs did (its Figure 2).

In the 2012 net each GPU held half of every layer's kernels. conv2, conv4 and
conv5 take input only from the maps on their own GPU (they are the grouped
layers); conv3 and the fully connected layers take input from both, so the
GPUs exchanged activations at exactly four places: pool2's maps before conv3,
pool5's before fc6, fc6's outputs before fc7 and fc7's before fc8. Here a
'tower' mesh axis of size 2 plays the two GPUs (`runtime/mesh.py`):

  * device t of a tower pair holds outputs [t*C/2, (t+1)*C/2) of conv2..conv5
    and of fc6/fc7 (their kernels split along the output axis: for the grouped
    layers that is group t's kernel), both see the same images (the batch is
    split over 'data' only), and fc8 is whole on both;
  * the forward pass is one `jax.shard_map`, with an all-gather over 'tower'
    at each of the four places above; its gradient sends the transposes back
    (reduce-scatters, the gradient each tower owes the other's half) and the
    data-parallel gradient all-reduce over 'data'.

fc8 is computed whole on both towers from the gathered fc7 outputs (its
all-gather is "invariant": the gradient needs no exchange back), so the
logits leave the shard_map replicated over 'tower'.

The parameter tree is the model's own, so checkpoints, converted weights and
`init_from` work unchanged, and the numbers are `layers.py`'s. Dropout takes
the single-device model's masks (drawn whole from the same key and path, each
tower using its columns), so the run equals the single-device one to float
rounding, dropout included.

One thing the paper did not exchange: this model's LRN after conv1 spans all
96 maps (`AlexNet` passes conv1 `groups=1`), so its window crosses the tower
boundary. Each tower therefore also computes the conv1 maps its LRN needs
from the other half (2 of 48), with conv1's kernel whole on both towers; its
gradient (35K numbers) is summed over 'tower' with the data all-reduce.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alexnet_jax.model import layers
from alexnet_jax.runtime import mesh as mesh_lib

try:
  _shard_map = jax.shard_map
except AttributeError:  # Before jax.shard_map was public.
  from jax.experimental.shard_map import shard_map as _shard_map  # pylint: disable=g-import-not-at-top

TOWERS = 2
GROUPED = (2, 4, 5)  # The layers that see only their own tower's maps.
LRN_SIZE = 5  # layers.local_response_norm's window.


def unsupported(model) -> str:
  """Why `model` cannot run as towers, or '' if it can."""
  if model.groups != TOWERS:
    return f'it has {model.groups} tower(s), not {TOWERS}'
  if model.batch_norm:
    return "batch norm's statistics are not split over towers"
  if model.adaptive_pool is not None or model.dropout_placement != 'paper':
    return "it is not the paper's net (adaptive pool, dropout placement)"
  widths = tuple(model.widths) + (model.hidden,) * 2
  if any(w % TOWERS for w in widths):
    return f'its widths {widths} do not split in {TOWERS}'
  return ''


class _DropoutMasks(nn.Module):
  """The masks `AlexNet` draws for fc6 and fc7 in training: its one
  `nn.Dropout`, auto-named Dropout_0 there as here, called twice in the same
  order, so the same key gives the same masks."""
  rate: float

  @nn.compact
  def __call__(self, shape):
    drop = nn.Dropout(self.rate, deterministic=False)
    return tuple(drop(jnp.ones(shape, jnp.float32)) != 0 for _ in range(2))


def _gather(x, invariant=False):
  """Both towers' maps (or units), tower 0's first: the paper's exchange."""
  kwargs = {'to': 'invarying'} if invariant else {}
  return jax.lax.all_gather(x, 'tower', axis=x.ndim - 1, tiled=True, **kwargs)


def _dense(x, p, dtype):
  """nn.Dense's computation on given parameters."""
  x, kernel, bias = (a.astype(dtype) for a in (x, p['kernel'], p['bias']))
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def _conv1(model, p, x, tower):
  """This tower's half of conv1's maps after ReLU (and LRN), computed with
  the `halo` maps of the other half that the LRN window reaches."""
  width = model.widths[0]
  own = width // TOWERS
  halo = LRN_SIZE // 2 if model.lrn else 0
  start = jnp.where(tower == 0, 0, own - halo)  # Window [start, start+own+halo)
  kernel = jax.lax.dynamic_slice_in_dim(p['kernel'], start, own + halo, axis=3)
  bias = jax.lax.dynamic_slice_in_dim(p['bias'], start, own + halo)
  y = nn.relu(layers.conv(x, kernel, bias, model.strides[0],
                          model.paddings[0], 1, model.dtype))
  if model.lrn:
    # The window's ends are conv1's true ends or maps this tower drops.
    y = layers.local_response_norm(y)
  return jax.lax.dynamic_slice_in_dim(y, tower * own - start, own, axis=3)


def _forward(model, params, x, masks):
  """One device's part: its images, its tower. Mirrors `AlexNet.__call__`."""
  tower = jax.lax.axis_index('tower')
  x = _conv1(model, params['conv1'], x.astype(model.dtype), tower)
  x = layers.max_pool(x, 3, 2, model.pool_padding)
  for i in range(2, 6):
    if i not in GROUPED:
      x = _gather(x)  # conv3 sees both towers' pool2 maps.
    p = params[f'conv{i}']  # This tower's outputs (for 2/4/5: its group).
    x = nn.relu(layers.conv(x, p['kernel'], p['bias'], model.strides[i - 1],
                            model.paddings[i - 1], 1, model.dtype))
    if model.lrn and i == 2:
      x = layers.local_response_norm(x)  # Within the tower, as the model's.
    if i in (2, 5):
      x = layers.max_pool(x, 3, 2, model.pool_padding)
  x = _gather(x)  # pool5, both towers: fc6 sees all of it.
  x = x.reshape((x.shape[0], -1))
  keep = 1. - model.dropout_rate
  for name, mask in zip(('fc6', 'fc7'), masks or (None, None)):
    x = nn.relu(_dense(x, params[name], model.dtype))
    if mask is not None:
      x = jax.lax.select(mask, x / keep, jnp.zeros_like(x))
    x = _gather(x, invariant=name == 'fc7')
  return _dense(x, params['fc8'], model.dtype)


def make_apply(model, mesh):
  """`model.apply` as towers over `mesh`'s 'tower' axis (size 2): the same
  signature, parameters and numbers, run the paper's way."""
  why = unsupported(model)
  if why:
    raise ValueError(f'cannot run {type(model).__name__} as towers: {why}')
  if mesh.shape['tower'] != TOWERS or mesh.shape['model'] != 1:
    raise ValueError(f'towers need a mesh with tower={TOWERS} and model=1, '
                     f'not {dict(mesh.shape)}')
  batch = P(mesh_lib.BATCH_AXES)

  def apply(variables, x, *, train=False, rngs=None, mutable=False):
    params = variables['params']
    masks = ()
    if train and model.dropout_rate > 0:
      masks = _DropoutMasks(model.dropout_rate).apply(
          {}, (x.shape[0], model.hidden), rngs=rngs)
    specs = jax.tree_util.tree_map_with_path(
        lambda path, leaf: mesh_lib.param_spec(path, leaf, mesh), params)
    logits = _shard_map(
        lambda p, x, m: _forward(model, p, x, m), mesh=mesh,
        in_specs=(specs, batch, P(mesh_lib.BATCH_AXES, 'tower')),
        out_specs=batch)(params, x, masks)
    return (logits, {}) if mutable else logits

  return apply
