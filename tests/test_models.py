"""Shapes and parameter counts under jax.eval_shape (nothing allocated), init
schemes, determinism, dropout, and LRN against the paper's formula.

Float comparisons carry tolerances derived from float32 arithmetic (each
says how), never a constant measured on one CPU: a sum of n terms computed
in two orders may differ by up to 2 * gamma_n * (the sum of the terms'
absolute values) (`tests.helpers.sum_error_bound`), a bound that holds for
every order, blocking, vectorization and FMA use, so on any x86 or ARM CPU.
Convolutions run at 'highest' matmul precision, where GPUs compute in float32
(not TF32) and TPUs in six bfloat16 passes, about as accurate, so the same
bounds hold there.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from alexnet_jax.model import alexnet
from alexnet_jax.model import layers
from tests.helpers import UNIT_ROUNDOFF
from tests.helpers import sum_error_bound


def layer_shapes(model, image_size):
  """Output shape of every layer, by name, without allocating anything."""
  x = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)

  def run(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, state = model.apply(variables, x, train=False,
                           capture_intermediates=True,
                           mutable=['intermediates'])
    return variables['params'], state['intermediates']

  params, inter = jax.eval_shape(run, x)
  shapes = {}
  for name, value in inter.items():
    if name.startswith('conv') or name.startswith('fc'):
      shapes[name] = value['__call__'][0].shape[1:]
    elif name.startswith('pool') or name == 'flatten':
      shapes[name] = value[0].shape[1:]
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return shapes, n_params


def test_paper_net_layer_shapes_and_parameter_count():
  shapes, n = layer_shapes(alexnet.AlexNetPaper(num_classes=1000), 227)
  assert shapes == {
      'conv1': (55, 55, 96), 'pool1': (27, 27, 96),
      'conv2': (27, 27, 256), 'pool2': (13, 13, 256),
      'conv3': (13, 13, 384), 'conv4': (13, 13, 384), 'conv5': (13, 13, 256),
      'pool5': (6, 6, 256), 'flatten': (9216,),
      'fc6': (4096,), 'fc7': (4096,), 'fc8': (1000,),
  }
  assert n == 60_965_224


def test_paper_net_has_two_towers_in_conv2_conv4_conv5_only():
  params = jax.eval_shape(
      lambda: alexnet.AlexNetPaper().init(
          jax.random.PRNGKey(0), jnp.zeros((1, 227, 227, 3)))['params'])
  kernels = {k: v['kernel'].shape for k, v in params.items()}
  assert kernels['conv1'] == (11, 11, 3, 96)
  assert kernels['conv2'] == (5, 5, 48, 256)  # Each tower sees its 48 maps.
  assert kernels['conv3'] == (3, 3, 256, 384)  # Full: both towers' maps.
  assert kernels['conv4'] == (3, 3, 192, 384)
  assert kernels['conv5'] == (3, 3, 192, 256)


def test_single_tower_parameter_count():
  shapes, n = layer_shapes(alexnet.AlexNetPaperOneTower(num_classes=1000), 227)
  assert shapes['pool5'] == (6, 6, 256)
  assert n == 62_378_344


def test_torchvision_variant_shapes_and_parameter_count():
  shapes, n = layer_shapes(alexnet.AlexNetTorchvision(num_classes=1000), 224)
  assert shapes == {
      'conv1': (55, 55, 64), 'pool1': (27, 27, 64),
      'conv2': (27, 27, 192), 'pool2': (13, 13, 192),
      'conv3': (13, 13, 384), 'conv4': (13, 13, 256), 'conv5': (13, 13, 256),
      'pool5': (6, 6, 256), 'flatten': (9216,),
      'fc6': (4096,), 'fc7': (4096,), 'fc8': (1000,),
  }
  assert n == 61_100_840


def test_torchvision_variant_adaptive_pool_accepts_other_sizes():
  shapes, n = layer_shapes(alexnet.AlexNetTorchvision(num_classes=1000), 256)
  assert shapes['pool5'] == (7, 7, 256)
  assert shapes['flatten'] == (9216,)  # Adaptive pool brings it back to 6x6.
  assert n == 61_100_840


def test_seed_pytorch_table_cifar10_at_224():
  """The seeds' PyTorch AlexNet: one tower, no LRN, conv1 unpadded, 10 classes."""
  seed_net = alexnet.AlexNet(num_classes=10, groups=1, lrn=False,
                            paddings=(0, 2, 1, 1, 1))
  shapes, n = layer_shapes(seed_net, 224)
  assert [shapes[k][0] for k in ('conv1', 'pool1', 'conv2', 'pool2', 'conv3',
                                 'conv4', 'conv5', 'pool5')] == [
                                     54, 26, 26, 12, 12, 12, 12, 5]
  assert shapes['flatten'] == (5 * 5 * 256,)
  assert shapes['fc8'] == (10,)
  assert n == 46_787_978


@pytest.mark.slow
def test_seed_net_logits_are_not_rectified():
  """The seed's defect was a ReLU on the logits; ours can go negative."""
  model = alexnet.AlexNetTiny(num_classes=10, init_scheme='paper')
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  logits = model.apply(variables, x)
  assert (logits < 0).any()


def test_cifar_form_shapes():
  shapes, n = layer_shapes(alexnet.AlexNetCifar(num_classes=10), 32)
  assert shapes['conv1'] == (32, 32, 48)
  assert shapes['pool1'] == (16, 16, 48)
  assert shapes['pool2'] == (8, 8, 96)
  assert shapes['pool5'] == (4, 4, 128)
  assert shapes['flatten'] == (2048,)
  assert shapes['fc8'] == (10,)
  assert n == 3_735_914


@pytest.mark.parametrize('name', sorted(alexnet.MODELS))
def test_every_preset_builds_through_the_factory(name):
  size = 32 if name in ('alexnet_cifar', 'alexnet_tiny',
                        'alexnet_tiny_towers') else (
      224 if name == 'alexnet_torchvision' else 227)
  shapes, _ = layer_shapes(alexnet.create_model(name, num_classes=7), size)
  assert shapes['fc8'] == (7,)


def test_unknown_model_name_lists_choices():
  with pytest.raises(ValueError, match="unknown model 'vgg'.*alexnet_paper"):
    alexnet.create_model('vgg')


@pytest.mark.slow
def test_paper_init_statistics():
  params = alexnet.AlexNetPaperOneTower(num_classes=10).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 227, 227, 3)))['params']
  for name in ('conv1', 'conv3', 'fc8'):
    assert float(jnp.abs(params[name]['bias']).max()) == 0.
  for name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7'):
    np.testing.assert_array_equal(params[name]['bias'], 1.)
  for name in ('conv3', 'fc6'):
    w = np.asarray(params[name]['kernel'])
    assert abs(w.mean()) < 1e-3
    assert abs(w.std() - 0.01) < 5e-4


@pytest.mark.slow
def test_he_init_scales_with_fan_in():
  params = alexnet.AlexNetCifar(num_classes=10).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  w = np.asarray(params['conv3']['kernel'])
  want = np.sqrt(2. / np.prod(w.shape[:-1]))  # fan_in = 3 * 3 * channels in.
  assert abs(w.std() - want) < 0.05 * want
  np.testing.assert_array_equal(params['conv3']['bias'], 0.)
  np.testing.assert_array_equal(params['fc8']['kernel'], 0.)  # Logits start at 0.


def test_forward_is_deterministic_and_dropout_only_in_training():
  model = alexnet.AlexNetTiny(num_classes=10, init_scheme='paper')
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  again = model.init(jax.random.PRNGKey(0), x)
  jax.tree.map(np.testing.assert_array_equal, variables, again)

  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, x, train=False,
                       rngs={'dropout': jax.random.PRNGKey(5)})
  np.testing.assert_array_equal(eval_a, eval_b)

  train_a = model.apply(variables, x, train=True,
                        rngs={'dropout': jax.random.PRNGKey(2)})
  train_a2 = model.apply(variables, x, train=True,
                         rngs={'dropout': jax.random.PRNGKey(2)})
  train_b = model.apply(variables, x, train=True,
                        rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(train_a, train_a2)
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters():
  model = alexnet.AlexNetTiny(num_classes=10, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  assert model.apply(variables, x).dtype == jnp.bfloat16


def lrn_reference(a, size=5, k=2., alpha=1e-4, beta=0.75):
  """The paper's equation, written as a loop over channels."""
  n_channels = a.shape[-1]
  out = np.empty_like(a)
  for i in range(n_channels):
    lo, hi = max(0, i - size // 2), min(n_channels - 1, i + size // 2)
    s = (a[..., lo:hi + 1] ** 2).sum(-1)
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


# LRN in float32 against the float64 formula, elementwise and relative: the
# input's rounding to float32 (u, carried at most ~2.5x to the output), five
# squares and four additions of positive terms (gamma_5 plus 5u), k + alpha s
# (2u), all carried by the power 0.75, then the power itself (XLA computes
# it as exp(beta log x): a few ulps on every backend) and the division (u):
# under 20u of arithmetic. 64u leaves room for a backend's pow; a window one
# channel off, or alpha divided by size as in torch, is off by 1e-3 and more.
LRN_RTOL = 64 * UNIT_ROUNDOFF


def test_lrn_matches_the_paper_formula():
  a = np.random.default_rng(0).normal(0, 30, (2, 3, 3, 16)).astype(np.float64)
  got = layers.local_response_norm(jnp.asarray(a, jnp.float32))
  np.testing.assert_allclose(got, lrn_reference(a), rtol=LRN_RTOL)


def test_lrn_window_stays_inside_each_tower():
  a = np.random.default_rng(1).normal(0, 30, (1, 2, 2, 12)).astype(np.float64)
  got = layers.local_response_norm(jnp.asarray(a, jnp.float32), groups=2)
  want = np.concatenate([lrn_reference(a[..., :6]), lrn_reference(a[..., 6:])],
                        axis=-1)
  np.testing.assert_allclose(got, want, rtol=LRN_RTOL)


def test_adaptive_avg_pool_bins_like_torch():
  x = jnp.arange(2 * 7 * 7 * 1, dtype=jnp.float32).reshape(2, 7, 7, 1)
  y = layers.adaptive_avg_pool(x, 3)
  # torch bins for 7 -> 3: [0,3), [2,5), [4,7)
  np.testing.assert_allclose(y[0, 0, 0, 0], x[0, 0:3, 0:3, 0].mean())
  np.testing.assert_allclose(y[1, 2, 1, 0], x[1, 4:7, 2:5, 0].mean())


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('shape,padding', [((2, 13, 13, 4), 0),
                                           ((2, 13, 13, 4), 1),
                                           ((3, 16, 15, 5), 1),
                                           ((2, 55, 55, 3), 0)])
def test_max_pool_matches_flax_values_and_gradient(shape, padding, ties):
  """Same values and gradient as nn.max_pool, ties included: after a ReLU
  half the inputs are 0, and both give a tied window's gradient to its first
  maximum. Under jit too (the train step's form)."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  if ties:
    x = jnp.round(jax.nn.relu(x))  # Mostly 0s and 1s.
  flax_pool = lambda x: nn.max_pool(x, (3, 3), (2, 2),
                                    padding=((padding, padding),) * 2)
  np.testing.assert_array_equal(layers.max_pool(x, 3, 2, padding),
                                flax_pool(x))
  cotangent = jax.random.normal(jax.random.PRNGKey(1), flax_pool(x).shape)
  grad = lambda f: jax.jit(jax.grad(lambda x: (f(x) * cotangent).sum()))(x)
  # An input that wins several windows sums their cotangents, in another
  # order than select-and-scatter. A 3x3 window at stride 2 overlaps its
  # neighbours by one row and one column, so an input is in at most 4
  # windows: two sums of at most 4 cotangents, each within gamma_4 * 4 *
  # max|cotangent| of the exact sum (`sum_error_bound`).
  atol = 2 * sum_error_bound(4 * np.abs(cotangent).max(), 4)
  np.testing.assert_allclose(
      grad(lambda x: layers.max_pool(x, 3, 2, padding)), grad(flax_pool),
      rtol=0, atol=atol)


def test_max_pool_gradient_goes_to_first_maximum_of_overlapping_windows():
  # One 5x5 map, two 3x3/2 windows per side overlapping on row/col 2.
  x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(1.)
  g = jax.grad(lambda x: layers.max_pool(x, 3, 2, 0).sum())(x)
  assert float(g[0, 2, 2, 0]) == 4.  # The max of all four windows.
  assert float(g.sum()) == 4.
  x = jnp.ones((1, 3, 3, 1))  # A tie across the whole window.
  g = jax.grad(lambda x: layers.max_pool(x, 3, 2, 0).sum())(x)
  np.testing.assert_array_equal(g[0, :, :, 0], [[1, 0, 0], [0, 0, 0],
                                                [0, 0, 0]])


@pytest.mark.parametrize('groups,kernel,stride,padding', [
    (1, 3, 1, 1), (2, 3, 1, 1), (2, 5, 1, 2), (1, 11, 4, 2)])
def test_conv_is_flax_conv_with_groups_split(groups, kernel, stride, padding):
  """Same parameter tree and initial values as nn.Conv, the same outputs,
  and gradients equal up to float rounding (the two-tower net's towers run
  as separate convolutions).

  The rounding bound, per element, from the arithmetic of each (see the
  module docstring): an output sums K1 = kernel^2 * 6 / groups products
  and the bias, so each implementation is within gamma_{K1+1} * A of the
  exact value, A = conv(|x|, |w|) + |b| (the terms' absolute values).
  d/dw, d/db and d/dx of sum(y^2) sum at most K2 = max(positions,
  kernel^2 * 8) terms 2 y x (or 2 y, 2 y w); with y off by gamma_{K1+1} A,
  each is within (gamma_{K1+1} + gamma_{K2+2}) times the same sums taken
  over absolute values with A for y: the vjp of the absolute-value
  convolution with cotangent 2 A. Two implementations: twice that."""
  import flax.linen as nn
  init = nn.initializers.normal(0.1)
  ours = layers.Conv(8, kernel, stride, padding, groups, kernel_init=init,
                     bias_init=init)
  flax_conv = nn.Conv(8, (kernel, kernel), (stride, stride),
                      padding=((padding, padding),) * 2,
                      feature_group_count=groups, kernel_init=init,
                      bias_init=init)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 23, 23, 6))
  params = ours.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, params,
               flax_conv.init(jax.random.PRNGKey(1), x))
  with jax.default_matmul_precision('highest'):
    y = ours.apply(params, x)
    grad = lambda m: jax.grad(lambda p, x: (m.apply(p, x) ** 2).sum(),
                              argnums=(0, 1))(params, x)
    got, want = grad(ours), grad(flax_conv)
    # The same sums over absolute values, and their vjp with cotangent 2A.
    abs_params, abs_x = jax.tree.map(jnp.abs, params), jnp.abs(x)
    a_y, vjp = jax.vjp(lambda p, x: flax_conv.apply(p, x), abs_params, abs_x)
    magnitudes = vjp(2 * a_y)
    flax_y = flax_conv.apply(params, x)
  k1 = kernel * kernel * x.shape[-1] // groups + 1
  k2 = max(y.shape[0] * y.shape[1] * y.shape[2], kernel * kernel * 8) + 2
  gamma = lambda n: float(sum_error_bound(1., n))
  assert_within(y, flax_y, 2 * gamma(k1) * np.asarray(a_y), 'outputs')
  for (path, a), (_, b), (_, m) in zip(*(
      jax.tree_util.tree_leaves_with_path(t) for t in (got, want, magnitudes))):
    assert_within(a, b, 2 * (gamma(k1) + gamma(k2)) * np.asarray(m),
                  jax.tree_util.keystr(path))


def assert_within(a, b, bound, what):
  """|a - b| <= bound, element by element (bound an array)."""
  diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  assert diff.shape == np.shape(bound), (what, diff.shape, np.shape(bound))
  worst = np.unravel_index(np.argmax(diff - bound), diff.shape)
  assert (diff <= bound).all(), (
      f'{what}: |difference| {diff[worst]:.3g} > bound {bound[worst]:.3g} '
      f'at {worst} (largest difference {diff.max():.3g}, largest bound '
      f'{bound.max():.3g})')
