"""JPEG decoding with NVIDIA DALI: on the GPU (nvJPEG, and the hardware JPEG
decoder where the GPU has one), or with DALI's CPU operators.

`--config.input_pipeline=dali` for the store (JPEG) and image folders. The
host only reads encoded bytes, in the project's own order (the same
positions, shuffle and replacement of unreadable records as the Grain
path, `streaming.TrainExample`), and hands them to DALI through an external
source; DALI decodes, and for an image folder rescales the shorter side to
256 and keeps the central 256x256, as the store holds them. The batch
reaches the train step as a uint8 jax.Array sharded like the other feeds;
the random crop, flip, colour noise and normalization then run in the
jitted step, keyed by the step, so batch k is still a function of (seed, k)
and resume stays exact.

`dali_device='gpu'` (one DALI pipeline per local GPU, each decoding its
devices' rows; outputs handed to JAX by DLPack) or `'cpu'` (the same
pipeline on CPU operators, `device_id=None`: what CI runs). DALI is an
optional install: `pip install -r requirements-dali.txt`.
"""

from typing import Iterator

import jax
import numpy as np

from alexnet_jax.data import store
from alexnet_jax.data import streaming
from alexnet_jax.errors import ConfigError

def _dali():
  try:
    from nvidia import dali  # pylint: disable=g-import-not-at-top
    from nvidia.dali import fn  # pylint: disable=g-import-not-at-top
    from nvidia.dali import types  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError('input_pipeline dali needs NVIDIA DALI: pip install -r '
                      'requirements-dali.txt (or use input_pipeline grain)'
                      ) from None
  return dali, fn, types


def check(device: str, source):
  """One line for what cannot work, before anything starts."""
  if getattr(source, 'encoding', 'jpeg') == 'raw':
    raise ConfigError('a raw store holds decoded pixels: there is nothing for '
                      'DALI to decode; use input_pipeline grain')
  _dali()
  if device == 'gpu' and not any(
      d.platform == 'gpu' for d in jax.local_devices()):
    raise ConfigError(
        f'dali_device gpu needs a GPU, and JAX sees only '
        f'{jax.local_devices()[0].platform} devices here; use '
        '--config.dali_device=cpu (DALI\'s CPU operators) or '
        '--config.input_pipeline=grain')


def _pipeline(batch: int, device_id, threads: int, resize: bool):
  dali, fn, types = _dali()

  @dali.pipeline_def(batch_size=batch, num_threads=threads,
                     device_id=device_id, prefetch_queue_depth=1)
  def decode():
    encoded = fn.external_source(name='encoded', dtype=types.UINT8,
                                 batch=True)
    device = 'mixed' if device_id is not None else 'cpu'
    images = fn.decoders.image(encoded, device=device,
                               output_type=types.RGB)
    if resize:  # Image folders: as the store keeps them.
      images = fn.resize(images, resize_shorter=store.SIDE,
                         interp_type=types.INTERP_LINEAR, antialias=True)
      images = fn.crop(images, crop=(store.SIDE, store.SIDE))
    return images

  pipe = decode()
  pipe.build()
  return pipe


class Decoder:
  """Encoded bytes of this process's rows -> a global uint8 batch."""

  def __init__(self, device: str, threads: int, mesh, local_batch: int,
               resize: bool):
    self.mesh, self.local_batch = mesh, local_batch
    self.sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    if device == 'gpu':
      self.devices = [d for d in mesh.devices.flat
                      if d.process_index == jax.process_index()]
      per_device = local_batch // len(self.devices)
      self.pipes = [_pipeline(per_device, d.local_hardware_id, 2, resize)
                    for d in self.devices]
    else:
      self.devices = None
      self.pipes = [_pipeline(local_batch, None, max(threads, 1), resize)]

  def __call__(self, encoded: list) -> jax.Array:
    per_pipe = len(encoded) // len(self.pipes)
    outputs = []
    for i, pipe in enumerate(self.pipes):
      pipe.feed_input('encoded', encoded[i * per_pipe:(i + 1) * per_pipe])
      outputs.append(pipe.run()[0].as_tensor())
    global_shape = (self.local_batch * jax.process_count(),
                    store.SIDE, store.SIDE, 3)
    if self.devices is None:
      return jax.make_array_from_process_local_data(
          self.sharding, np.asarray(outputs[0]), global_shape)
    shards = [jax.device_put(jax.dlpack.from_dlpack(t).copy(), d)
              for t, d in zip(outputs, self.devices)]
    return jax.make_array_from_single_device_arrays(global_shape,
                                                    self.sharding, shards)


def _encoded(record) -> np.ndarray:
  return np.frombuffer(record['image'], np.uint8)


def train_batches(feed, start_step: int, total_steps: int) -> Iterator:
  """{'images', 'labels', 'replaced'} of batches start_step..total_steps-1.

  The records are the Grain path's (`streaming.TrainExample` picks them and
  their replacements); only the decode moves to DALI. A record DALI cannot
  decode is found by trying each of the batch's on the host, and replaced
  the same deterministic way.
  """
  source = feed.splits['train']
  local = feed.batch_size // jax.process_count()
  decoder = Decoder(feed.dali_device, feed.workers, feed.mesh, local,
                    resize=feed.dataset.name != 'store')
  order = streaming.shuffled(source, feed.seed)
  pick = streaming.TrainExample(order, source, feed.seed, store.SIDE, 0, False)
  position = streaming.Positions(feed.batch_size, local, jax.process_index())
  for step in range(start_step, total_steps):
    records = [pick.record(position(step * local + j)) for j in range(local)]
    try:
      images = decoder([_encoded(r) for r, _ in records])
    except RuntimeError:  # DALI names no sample: find it on the host.
      records = [pick.record(position(step * local + j), check=True)
                 for j in range(local)]
      images = decoder([_encoded(r) for r, _ in records])
    labels = np.asarray([r['label'] for r, _ in records], np.int32)
    replaced = np.asarray([index for _, index in records], np.int64)
    yield images, feed.to_global(labels), replaced
