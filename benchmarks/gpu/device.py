"""Part 1 of the GPU check: the device, the driver, the versions and the
peak FLOP/s the MFU figures divide by, so a report says where it ran."""

import os
import platform
import shutil
import subprocess

import jax

from benchmarks import flops
from benchmarks.gpu import part

PACKAGES = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax',
            'optax', 'orbax-checkpoint', 'chex', 'numpy', 'ml-collections',
            'clu', 'grain', 'array-record', 'etils', 'absl-py', 'pillow',
            'simplejpeg', 'torch', 'triton', 'nvidia-dali-cuda130',
            'tensorflow', 'tensorflow-cpu', 'tensorboard', 'matplotlib',
            'scikit-image')


def _nvidia_smi() -> str:
  out = subprocess.run(
      ['nvidia-smi', '--query-gpu=name,driver_version,memory.total,'
       'clocks.max.sm,clocks.max.mem,power.limit', '--format=csv,noheader'],
      capture_output=True, text=True, timeout=30, check=False)
  return (out.stdout or out.stderr).strip()


def _torch_facts() -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  facts = {'version': torch.__version__, 'cuda': torch.version.cuda,
           'cuda_available': torch.cuda.is_available()}
  if torch.cuda.is_available():
    facts.update(device=torch.cuda.get_device_name(0),
                 cudnn=torch.backends.cudnn.version())
  return facts


def facts() -> dict:
  device = jax.devices()[0]
  stats = (device.memory_stats() or {}) if hasattr(device,
                                                    'memory_stats') else {}
  out = {
      'platform': device.platform, 'device_kind': device.device_kind,
      'devices': [str(d) for d in jax.devices()],
      'device_count': jax.device_count(),
      'memory_bytes_limit': stats.get('bytes_limit'),
      'peak_flops': {dtype: flops.peak_flops(device, dtype)
                     for dtype in ('bfloat16', 'float32')},
      'python': platform.python_version(), 'cpu_count': os.cpu_count(),
      'machine': platform.machine(),
      'versions': {p: part.version(p) for p in PACKAGES if part.version(p)},
      'not_installed': [p for p in PACKAGES if not part.version(p)],
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  if shutil.which('nvidia-smi'):
    out['nvidia_smi'] = _nvidia_smi()
  if part.installed('torch'):
    out['torch'] = _torch_facts()
  return out
