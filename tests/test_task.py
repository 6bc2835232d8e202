"""The task layer on its own: what the train step trains on (PCA lighting
included or not), the windows its metric sums cover, and test-time
averaging over the paper's 10 crops against a computation written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import build
from alexnet_jax.model import alexnet
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import evaluation
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps
from configs import default


def tiny_config(**overrides):
  c = default.get_config()
  c.update(model='alexnet_tiny', dataset='fake', num_classes=10,
           fake_image_size=32, crop_padding=0, random_flip=False,
           schedule='constant', batch_size=8, half_precision=False)
  c.update(overrides)
  return c


def batch(n=8, side=32, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.integers(0, 256, (n, side, side, 3), np.uint8)),
          jnp.asarray(rng.integers(0, 10, (n,), np.int32)))


def input_spec(config):
  """The run's input spec for `config` (fake data: CIFAR's mean and std)."""
  return build.input_spec(config, build.dataset(config), 32)


def make_step(config):
  return steps.make_train_step(input_spec(config), 10,
                               log_every=config.log_every_steps)


def fresh_state(config):
  model = build.model(config, 10)
  tx, _ = build.optimizer(config, build.durations(config, 10))
  state, _ = state_lib.create_train_state(model, tx, (32, 32, 3), 0,
                                          mesh_lib.make_mesh())
  return model, state


# --- What the step trains on ---------------------------------------------------------


def test_pca_lighting_changes_the_batch_by_a_colour_offset_per_image():
  """The step's input with the paper's colour noise minus the one without:
  one RGB offset per image, along ImageNet's eigenvectors (the input is
  standardized, so the offset is divided by the channel's std)."""
  images, _ = batch()
  key = jax.random.key(3)
  clean = input_spec(tiny_config()).train_view(key, images)
  lit = input_spec(tiny_config(pca_lighting=0.1))
  noisy = lit.train_view(key, images)
  offset = np.asarray(noisy - clean) * np.asarray(lit.std)  # 0..1 pixels.
  per_image = offset[:, :1, :1, :]
  np.testing.assert_allclose(offset, np.broadcast_to(per_image, offset.shape),
                             atol=1e-5)
  assert np.abs(per_image).max() > 1e-3  # Not a no-op...
  assert len({tuple(np.round(o.ravel(), 6)) for o in per_image}) == 8  # ...and
  # each image its own draw.


def test_train_step_trains_on_the_lit_batch_and_not_without_it():
  """Same state, batch and step: pca_lighting=0.1 changes the update,
  pca_lighting=0 gives exactly the update of the clean batch."""
  images, labels = batch()
  updates = {}
  for pca in (0., 0.1):
    config = tiny_config(pca_lighting=pca, dropout_rate=0.)
    model, state = fresh_state(config)
    after = make_step(config)(state, {'images': images, 'labels': labels})
    updates[pca] = jax.tree.leaves(jax.device_get(after.params))
  assert any(not np.array_equal(a, b)
             for a, b in zip(updates[0.], updates[0.1]))
  # pca_lighting=0: the step's input is the plain normalized batch.
  spec = input_spec(tiny_config())
  x = spec.train_view(jax.random.key(0), images)
  want = (np.asarray(images) / 255. - np.asarray(spec.mean)) / np.asarray(
      spec.std)
  np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)


def test_metric_sums_cover_the_steps_since_the_last_logged_one():
  """log_every_steps=3: after steps 1..3 the sums hold 3 batches, after step
  4 only step 4's; a state restored at step 4 goes on the same way."""
  config = tiny_config(log_every_steps=3)
  model, state = fresh_state(config)
  step = make_step(config)
  counts = []
  for i in range(5):
    images, labels = batch(seed=i)
    state = step(state, {'images': images, 'labels': labels})
    counts.append(int(state.sums['count']))
  assert counts == [8, 16, 24, 8, 16]
  assert int(state.sums['first_nonfinite_step']) == -1


# --- Test-time averaging -------------------------------------------------------------


def test_ten_crop_averages_the_softmax_of_the_ten_views():
  """log mean softmax over the four corners and the centre, each also
  mirrored, computed here by hand from the model, equals the evaluator's."""
  config = tiny_config(dataset='image_folder', ten_crop=True, resize_size=40)
  model = alexnet.AlexNetTiny(num_classes=10, init_scheme='he')
  images, _ = batch(n=3, side=40, seed=7)
  params = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))['params']
  rng = np.random.default_rng(2)  # fc8 starts at zero under He init.
  params = jax.tree.map(
      lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
  spec = build.input_spec(config, build.dataset(config), 32)
  got = evaluation.make_logits_fn(spec, model.apply)({'params': params}, images)
  x = np.asarray(images, np.float64)
  corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]
  probs = []
  for top, left in corners:
    crop = x[:, top:top + 32, left:left + 32]
    for view in (crop, crop[:, :, ::-1]):
      normalized = (view / 255. - np.asarray(spec.mean)) / np.asarray(spec.std)
      logits = np.asarray(model.apply({'params': params},
                                      jnp.asarray(normalized, jnp.float32)),
                          np.float64)
      e = np.exp(logits - logits.max(-1, keepdims=True))
      probs.append(e / e.sum(-1, keepdims=True))
  want = np.log(np.mean(probs, axis=0))
  assert len(probs) == 10
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert not np.allclose(want, np.log(probs[0]), atol=1e-3)  # Views differ.


@pytest.mark.parametrize('n, eval_batch_size, devices, batch_size', [
    (508, 500, 1, 254), (1017, 500, 1, 339), (1017, 250, 1, 204),
    (1017, 500, 8, 344), (10, 500, 1, 10), (500, 500, 1, 500),
    (501, 500, 4, 252), (504, 500, 8, 504), (505, 500, 8, 256),
    (3, 500, 8, 8)])
def test_eval_batches_are_balanced(n, eval_batch_size, devices, batch_size):
  assert evaluation.balanced_batch(n, eval_batch_size, devices) == batch_size
