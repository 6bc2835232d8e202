"""Part 4 of the GPU check: `benchmarks/image_pipeline.py`'s input paths
(folder, store JPEG/raw; DALI CPU and GPU where DALI is installed, tf.data
where TensorFlow is), images/s, on JPEGs it writes itself."""

import argparse
import os
import tempfile

from absl import flags
import jax

from alexnet_jax.data import store
from alexnet_jax.data import streaming
from benchmarks import image_pipeline
from benchmarks.gpu import part

ARGS = {  # image_pipeline's arguments
    'gpu': dict(images=384, batch=32, epochs=2, repeats=2,
                workers=min(8, max((os.cpu_count() or 2) - 2, 2))),
    'smoke': dict(images=32, batch=8, epochs=1, repeats=1, workers=0),
}


def _rates(args) -> dict:
  """image_pipeline's rates over a folder of JPEGs and the stores made of
  it, all in a temporary directory."""
  with tempfile.TemporaryDirectory() as root:
    folder = os.path.join(root, 'folder')
    image_pipeline.write_jpegs(folder, args.images)
    source = streaming.ImageFolderSource.scan(folder)
    roots = image_pipeline.write_stores(root, source)
    sources = {'folder': source, **{
        k: store.StoreSource(v, 'train') for k, v in roots.items()}}
    return image_pipeline.measure(sources, roots, args)


def _notes(args, mode: str, gpu: bool) -> list:
  """Why a row is missing."""
  notes = []
  if not args.dali:
    notes.append('DALI not installed: no DALI rows (the GPU decoder is '
                 'measured where nvidia-dali is installed)')
  elif not gpu:
    notes.append('no GPU: DALI\'s CPU decoder only')
  if not args.vs_tfdata:
    notes.append('tf.data left out (' + ('--smoke' if mode == 'smoke' else
                                         'TensorFlow not installed') + ')')
  return notes


def measure(mode: str) -> dict:
  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.
  dali = part.installed('nvidia.dali')
  gpu = jax.devices()[0].platform == 'gpu'
  args = argparse.Namespace(
      **ARGS[mode], dali=dali, dali_gpu=dali and gpu,
      vs_tfdata=part.installed('tensorflow') and mode != 'smoke')
  rates = _rates(args)
  return {'images_per_sec': rates, **vars(args), 'cores': os.cpu_count(),
          'notes': _notes(args, mode, gpu)}
