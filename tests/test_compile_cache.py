"""The persistent compilation cache: a second run of the same command loads
the programs the first one compiled (JAX's own cache-hit events, counted in
each process), and `off` keeps the cache off."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# main's own start, then a short run; prints JAX's cache hits and misses.
RUN = '''
import json, sys
import jax
hits = {'hit': 0, 'miss': 0}
def seen(event, **_):
  if event == '/jax/compilation_cache/cache_hits':
    hits['hit'] += 1
  elif event == '/jax/compilation_cache/cache_misses':
    hits['miss'] += 1
jax.monitoring.register_event_listener(seen)
from alexnet_jax.runtime import compile_cache
from alexnet_jax import train
from configs import default
config = default.get_config()
config.update(model='alexnet_tiny', dataset='fake', num_classes=10,
              fake_image_size=32, fake_num_train=64, fake_num_test=16,
              batch_size=16, num_steps=2, schedule='constant',
              compilation_cache=sys.argv[2])
compile_cache.enable(config.compilation_cache)
# Every program, however fast it compiles: the tiny net's compile under
# MIN_COMPILE_SECONDS on a quick machine would leave nothing to count.
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
train.train_and_evaluate(config, sys.argv[1])
print(json.dumps(hits))
'''


def run(tmp_path, name, cache, subprocess_env):
  result = subprocess.run(
      [sys.executable, '-c', RUN, str(tmp_path / name), cache], cwd=REPO,
      env=subprocess_env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_a_second_run_loads_what_the_first_compiled(tmp_path, subprocess_env):
  cache = str(tmp_path / 'cache')
  first = run(tmp_path, 'a', cache, subprocess_env)
  assert first['hit'] == 0 and first['miss'] > 0
  assert list((tmp_path / 'cache').iterdir())
  second = run(tmp_path, 'b', cache, subprocess_env)
  # Every program slow enough to be cached is loaded, not compiled again.
  assert second['hit'] > 0 and second['miss'] < first['miss'], (first, second)


def test_off_is_off(tmp_path, subprocess_env):
  counts = run(tmp_path, 'a', 'off', subprocess_env)
  assert counts == {'hit': 0, 'miss': 0}
