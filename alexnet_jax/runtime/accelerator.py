"""Which accelerator a run trains on: the one asked for, or one error line.

JAX starts every backend it can and falls back to the CPU, with a log line
at most, when an accelerator's plugin fails (a driver missing from the
library path, a driver too old for the CUDA the wheel was built with, a TPU
held by another process). A cluster job that asked for 8 GPUs must not train
on 2 CPU cores instead. `--config.platform` says what the run needs: `auto`
(the default) takes what JAX finds and says in one line which accelerator
failed to start; `gpu`, `tpu` or `cpu` is checked once the backends are up,
and a mismatch is a `PlatformError` (exit 2) naming what was asked, what was
found and the usual cause, before anything is written.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import sys
from typing import Callable, Optional

from alexnet_jax.errors import PlatformError

PLATFORMS = ('auto', 'gpu', 'tpu', 'cpu')
# The JAX build each accelerator needs, as requirements-train.txt pins JAX.
CUDA_PLUGINS = ('jax-cuda13-plugin', 'jax-cuda12-plugin')
# CUDA 13.0 needs an R580 (580.65.06 or newer) Linux driver: NVIDIA's CUDA
# toolkit release notes, "CUDA Toolkit and Minimum Required Driver Version".
CUDA_NEEDED = {'jax-cuda13-plugin': (13000, 'R580'),
               'jax-cuda12-plugin': (12000, 'R525')}
# Where GKE mounts the node's NVIDIA driver in a container that asks for GPUs.
GKE_DRIVER_DIR = '/usr/local/nvidia/lib64'


def select(platform: str):
  """Before JAX starts its backends: `cpu` keeps it off any accelerator."""
  if platform not in PLATFORMS:
    raise PlatformError(f'unknown platform {platform!r}; valid: '
                        f'{", ".join(PLATFORMS)}')
  if platform == 'cpu':
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_platforms', 'cpu')


def check(platform: str, warn: Callable[[str], None] = None) -> str:
  """Starts JAX's backends and returns the platform the run trains on.

  Raises PlatformError when `platform` (gpu, tpu, cpu) is not the one found;
  on `auto`, an accelerator that failed to start is said through `warn`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  try:
    found = jax.default_backend()
  except Exception as e:  # pylint: disable=broad-except
    raise PlatformError(f'asked for platform {platform!r} (--config.platform)'
                        f' but JAX could not start it: {_one_line(e)}') from None
  failed = failed_accelerators()
  if platform == 'auto':
    for name, why in failed.items():
      ours = {'cuda': 'gpu', 'rocm': 'gpu'}.get(name, name)
      hint = (f'; --config.platform={ours} makes this an error'
              if ours in PLATFORMS else '')
      (warn or _stderr)(f'warning: the {name} backend failed to start ({why});'
                        f' running on {found}{hint}')
    return found
  if found != platform:
    raise PlatformError(
        f'asked for platform {platform!r} (--config.platform) but JAX found '
        f'only {found!r}: {cause(platform, failed)}. Nothing was written')
  return found


def failed_accelerators() -> dict:
  """{platform: why} for each installed accelerator backend that did not start.

  JAX always tries libtpu; its absence is not a failure unless libtpu is
  installed.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  errors = dict(getattr(xla_bridge, '_backend_errors', {}))
  if 'tpu' in errors and not _installed_libtpu():
    del errors['tpu']
  errors.pop('cpu', None)
  return {k: ' '.join(str(v).split())[:300] for k, v in errors.items()}


def cause(platform: str, failed: dict) -> str:
  """The usual reason `platform` is missing, found by looking, not guessed."""
  if platform == 'gpu':
    return gpu_cause(failed.get('cuda'))
  if platform == 'tpu':
    if not _installed_libtpu():
      return ('no TPU build of JAX is installed (pip install '
              f'"jax[tpu]=={_jax_version()}")')
    why = failed.get('tpu')
    return (f'libtpu could not start the TPU ({why}); another process may '
            'hold it (see /tmp/libtpu_lockfile), or this is not a TPU VM'
            if why else 'libtpu found no TPU chips on this machine')
  return 'JAX started an accelerator; --config.platform=cpu keeps it off'


def gpu_cause(cuda_error: Optional[str], plugin: Optional[str] = None,
              libcuda: str = 'libcuda.so.1') -> str:
  """Why CUDA did not start: no CUDA JAX, no driver library, an old driver."""
  plugin = plugin or _installed_cuda_plugin()
  if plugin is None:
    return ('no CUDA build of JAX is installed (pip install '
            f'"jax[cuda13]=={_jax_version()}", which needs an NVIDIA driver '
            'R580 or newer)')
  version = driver_version(libcuda)
  if version is None:
    path = os.environ.get('LD_LIBRARY_PATH', '')
    return (f'the NVIDIA driver library {libcuda} is not on the library path '
            f'(LD_LIBRARY_PATH={path!r}; GKE mounts it in {GKE_DRIVER_DIR}, '
            'the NVIDIA container toolkit in /usr/lib/x86_64-linux-gnu)')
  needed, branch = CUDA_NEEDED.get(plugin, (0, ''))
  if version < needed:
    return (f'the NVIDIA driver supports CUDA {version // 1000}.'
            f'{version % 1000 // 10}, older than the CUDA '
            f'{needed // 1000}.{needed % 1000 // 10} that {plugin} needs '
            f'(a driver {branch} or newer)')
  if cuda_error:
    return f'the CUDA backend failed to start ({cuda_error})'
  return ('no NVIDIA GPU is visible to this process (CUDA_VISIBLE_DEVICES='
          f'{os.environ.get("CUDA_VISIBLE_DEVICES")!r}; a container must ask '
          'for nvidia.com/gpu)')


def driver_version(libcuda: str = 'libcuda.so.1') -> Optional[int]:
  """cuDriverGetVersion of the driver library, or None if it cannot load."""
  try:
    lib = ctypes.CDLL(libcuda)
  except OSError:
    return None
  version = ctypes.c_int(0)
  if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
    return None
  return version.value


def _installed_cuda_plugin() -> Optional[str]:
  for name in CUDA_PLUGINS:
    try:
      importlib.metadata.distribution(name)
      return name
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def _installed_libtpu() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def _jax_version() -> str:
  return importlib.metadata.version('jax')


def _one_line(e: BaseException) -> str:
  return ' '.join(f'{type(e).__name__}: {e}'.split())[:300]


def _stderr(line: str):
  print(line, file=sys.stderr, flush=True)
