"""Shared fixtures: the real CIFAR-10 subset beside the checkout, and paths."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_SUBSET = REPO.parent / 'shared' / 'data' / 'cifar10-subset' / \
    'cifar-10-batches-py'


@pytest.fixture
def cifar_dir():
  """The real CIFAR-10 subset (5,085 train / 1,017 test images), read-only."""
  if not (CIFAR_SUBSET / 'test_batch').is_file():
    pytest.skip(f'real CIFAR-10 subset not found at {CIFAR_SUBSET} (it lives '
                'in ../shared beside the checkout)')
  return str(CIFAR_SUBSET)


@pytest.fixture
def subprocess_env():
  """Environment for running `python -m alexnet_jax.main` from the repo root."""
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env
