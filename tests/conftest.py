"""Shared fixtures: the real CIFAR-10 subset beside the checkout, and paths;
and the two tiers.

Tests that need the subset skip when it is absent, unless
ALEXNET_JAX_REQUIRE_DATA=1 (CI sets it): then they fail, so a CI run can never
pass by silently skipping the real-data tests.

`python -m pytest` runs the fast tier (every module, a few minutes on two
cores). `python -m pytest --full` adds the tests marked `slow`: real
processes killed, signalled and restarted, several processes as one job, the
GCS emulator, torch.compile. Either way the files are shared out to two
pytest-xdist workers, a file to a worker (`-n 0` runs them in this process).
"""

import collections
import os
import signal
import shutil
import pathlib

import pytest

# Tests send SIGINT and SIGHUP to the processes they start and check what
# those do. A suite started in the background (`cmd &` in a script, nohup)
# inherits both as ignored, and children keep an ignored signal ignored
# (bash cannot even trap it): give them back their defaults here, in every
# pytest process (xdist workers import this file too).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
  signal.signal(signal.SIGHUP, signal.SIG_DFL)

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_SUBSET = REPO.parent / 'shared' / 'data' / 'cifar10-subset' / \
    'cifar-10-batches-py'


def require_cifar_subset():
  """The subset's path, or a skip (a failure under ALEXNET_JAX_REQUIRE_DATA)."""
  if not (CIFAR_SUBSET / 'test_batch').is_file():
    reason = (f'real CIFAR-10 subset not found at {CIFAR_SUBSET} (it lives '
              'in ../shared beside the checkout)')
    if os.environ.get('ALEXNET_JAX_REQUIRE_DATA') == '1':
      pytest.fail(reason + '; ALEXNET_JAX_REQUIRE_DATA=1 requires it')
    pytest.skip(reason)
  return str(CIFAR_SUBSET)


@pytest.fixture
def cifar_dir():
  """The real CIFAR-10 subset (5,085 train / 1,017 test images), read-only."""
  return require_cifar_subset()


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs in this process compile through JAX's persistent cache, as the
  command line does by default (`runtime/compile_cache.py`), in a folder of
  the session's own: a program compiled twice (a stack sized, then
  trained) or by several tests is loaded the second time."""
  from alexnet_jax.runtime import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable(str(tmp_path_factory.mktemp('jax_cache')))


@pytest.fixture(scope='session')
def subprocess_env():
  """Environment for running `python -m alexnet_jax.main` from the repo root
  (shared: tests copy it before changing it)."""
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


@pytest.fixture
def bare_path(tmp_path):
  """A PATH holding only the few tools the dry runs use: no gcloud, no srun."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for tool in ('dirname', 'mktemp', 'rm', 'awk', 'date', 'grep', 'sort',
               'tail'):
    found = shutil.which(tool)
    assert found, f'{tool} is needed by the scripts'
    (bin_dir / tool).symlink_to(found)
  return str(bin_dir)


# --- Tiers ---------------------------------------------------------------------


def pytest_addoption(parser):
  parser.addoption('--full', action='store_true',
                   help='also run the slow tier (tests marked slow)')


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
  """Two xdist workers, each taking whole files (so module fixtures run
  once), unless -n was given; before xdist reads the option."""
  if (config.pluginmanager.hasplugin('xdist') and
      not hasattr(config, 'workerinput') and
      getattr(config.option, 'numprocesses', 0) is None and
      not config.option.collectonly):
    config.option.numprocesses = 2
    config.option.dist = 'loadfile'


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: real-process fault, multi-process, emulator and '
      'torch.compile tests; run with --full')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--full'):
    # Files with the most slow tests first (each goes whole to one xdist
    # worker): the long ones start early instead of making a tail at the end.
    slow_in = collections.Counter(item.fspath for item in items
                                  if 'slow' in item.keywords)
    items.sort(key=lambda item: -slow_in[item.fspath])  # Stable in a file.
    return
  slow = [item for item in items if 'slow' in item.keywords]
  if slow:
    items[:] = [item for item in items if 'slow' not in item.keywords]
    config.hook.pytest_deselected(items=slow)


def pytest_terminal_summary(terminalreporter, config):
  if not config.getoption('--full') and not hasattr(config, 'workerinput'):
    terminalreporter.write_line(
        'fast tier: the tests marked slow were not run (`python -m pytest '
        '--full` runs them too)')
