"""Every shipped config loads, passes validation and builds its model; the
fake-data path trains without any download."""

import importlib
import re

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.data import augment
from alexnet_jax.data import registry
from alexnet_jax.errors import ConfigError
from alexnet_jax import build
from alexnet_jax import train
from alexnet_jax.task import validation
from tests.conftest import REPO

CONFIGS = sorted(p.stem for p in (REPO / 'configs').glob('*.py')
                 if p.stem != '__init__')


@pytest.mark.parametrize('name', [c for c in CONFIGS if c != 'default'])
def test_config_validates_and_builds_its_model(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  validation.validate_config(config)
  num_classes = 10 if config.dataset == 'cifar10' else config.num_classes
  model = build.model(config, num_classes)
  size = config.image_size or (32 if config.dataset == 'cifar10'
                               else config.fake_image_size)
  params = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))['params'])
  assert params['fc8']['kernel'].shape[-1] == num_classes


def test_input_too_small_for_the_model_is_a_config_error(tmp_path):
  """default.py pairs the paper net with CIFAR's 32x32 images: say so."""
  config = importlib.import_module('configs.default').get_config()
  config.update(dataset='fake', fake_image_size=32, num_classes=10,
                fake_num_train=256, fake_num_test=16)
  with pytest.raises(ConfigError, match='cannot take 32x32 input.*'
                     'image_size'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_main_configs_are_the_documented_ones():
  assert {'default', 'cifar10', 'cifar10_227', 'fake_benchmark'} <= set(CONFIGS)


def test_fake_benchmark_path_trains_without_download(tmp_path):
  config = importlib.import_module('configs.fake_benchmark').get_config()
  config.update(model='alexnet_tiny', fake_image_size=32, num_classes=10,
                fake_num_train=64, fake_num_test=20, batch_size=16,
                num_steps=3, log_every_steps=1, half_precision=False)
  final = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert final['step'] == 3 and final['val'] is None
  assert 0 <= final['test']['top1'] <= 1


def test_cifar_upsampled_into_the_paper_net_input_size():
  """configs/cifar10_227: 32x32 images are resized on device to 227."""
  config = importlib.import_module('configs.cifar10_227').get_config()
  x = augment.normalize(jnp.zeros((2, 32, 32, 3), jnp.uint8),
                               registry.CIFAR10_MEAN,
                               registry.CIFAR10_STD, config.image_size)
  assert x.shape == (2, 227, 227, 3)


# (field, a value at the edge of what it may be, the first value past it).
RANGE_EDGES = [
    ('batch_size', 1, 0), ('eval_batch_size', 1, 0),
    ('learning_rate', 1e-9, 0.0), ('momentum', 0.999, 1.0),
    ('momentum', 0.0, -0.1), ('weight_decay', 0.0, -1e-9),
    ('dropout_rate', 0.0, 1.0), ('label_smoothing', 0.0, 1.0),
    ('eval_every_epochs', 0.0, -1.0),
    ('warmup_epochs', 0.0, -1.0), ('log_every_steps', 1, 0),
    ('checkpoint_every_steps', 0, -1), ('keep_checkpoints', 1, 0),
    ('plateau_patience', 1, 0), ('plateau_reductions', 0, -1),
    ('image_size', 0, -1), ('crop_padding', 0, -1),
    ('val_fraction', 0.0, 1.0), ('val_fraction', 0.5, -0.1),
    ('val_examples', 0, -1), ('resize_size', 1, 0), ('data_workers', 0, -1),
    ('pca_lighting', 0.0, -0.1), ('max_bad_fraction', 1.0, 1.01),
    ('max_bad_fraction', 0.0, -0.01), ('lars_trust_coefficient', 1e-9, 0.0),
    ('lars_eps', 0.0, -1e-9), ('poly_power', 1e-9, 0.0),
    ('profile_steps', 0, -1), ('learning_rate', 1.0, float('nan')),
    ('runs', 1, 0), ('steps_per_call', 0, -1),
    ('lr_step_epochs', (30,), (0,)),
]


@pytest.mark.parametrize('field, edge, past', RANGE_EDGES,
                         ids=[f'{f}={p}' for f, _, p in RANGE_EDGES])
def test_every_range_takes_its_edge_and_refuses_what_lies_past_it(
    field, edge, past):
  """Each field's documented range, at its boundary: the edge passes, the
  first value past it is one ConfigError naming the field and its value."""
  config = importlib.import_module('configs.cifar10').get_config()
  config.unlock()
  config[field] = edge
  validation.validate_config(config)
  config[field] = past
  with pytest.raises(ConfigError, match=re.escape(f'{field} {past!r} must be ')):
    validation.validate_config(config)
