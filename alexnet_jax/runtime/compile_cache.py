"""JAX's persistent compilation cache, on by default: a resumed or repeated
run (after every preemption, every rerun of the same command) loads its
compiled step from disk instead of compiling it again.

The cache is keyed by JAX on the program, the devices and the compiler's
flags, so a changed model or config compiles afresh and a stale entry is
never used; entries from other machines or JAX versions are ignored the
same way.
"""

import os

import jax

# Cache every program that took at least this long to compile: the train
# step and the evaluation scans, not each small helper.
MIN_COMPILE_SECONDS = 0.5
# Least recently used entries go beyond this (a CIFAR run's programs take
# about 10 MB, the paper net's on a GPU about 100 MB).
MAX_BYTES = 4 << 30


def default_dir() -> str:
  """$XDG_CACHE_HOME/alexnet_jax/jax (~/.cache/alexnet_jax/jax)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'alexnet_jax', 'jax')


def enable(where: str) -> str:
  """Turns the cache on in `where` ('' for `default_dir()`, a local path or
  a gs:// URI), or off for 'off'; returns the folder used ('' when off)."""
  if where == 'off':
    jax.config.update('jax_enable_compilation_cache', False)
    return ''
  folder = where or default_dir()
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    MIN_COMPILE_SECONDS)
  jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  return folder
