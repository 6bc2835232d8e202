"""Fine-tuning: a new run starts from another workdir's weights (`init_from`).

`--config.init_from=DIR` puts the parameters of DIR's latest checkpoint (a
run trained here, or torchvision's weights converted by alexnet_jax.convert)
into a fresh train state: the optimizer state, step and RNG stay the new
run's own. When only the class count differs (fc8's output size), fc8 keeps
its fresh initialization, so ImageNet weights fine-tune into a 10-class
dataset. Any other difference is an error naming the layer and both shapes.
Once the run has a checkpoint of its own, it resumes from that instead.
"""

import json

import jax
import numpy as np

from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime.layout import Layout
from alexnet_jax.errors import ConfigError

HEAD = 'fc8'


def _log(message: str):
  if jax.process_index() == 0:
    print(message, flush=True)


def init_from(source: str, model_name: str, workdir: str, state, log=_log):
  """`state` with the parameters of workdir `source`'s latest checkpoint
  (fc8 fresh if the class counts differ); `model_name` is this run's model.

  A no-op without a source, or when `workdir` already holds checkpoints
  (the run resumes from those; the log says so). Checked before the workdir
  is touched: a bad source stops the run with one ConfigError line.
  """
  if not source:
    return state
  own = checkpoints.latest_step_on_disk(workdir)
  if own is not None:
    log(f'init_from {source} ignored: {workdir} has checkpoints of its own '
        f'(latest step {own}); resuming from them')
    return state
  if not checkpoints.saved_steps(source):
    raise ConfigError(f'init_from {source!r} holds no checkpoints (expected '
                      'a workdir of alexnet_jax.main or alexnet_jax.convert)')
  step = checkpoints.saved_steps(source)[-1]
  try:
    saved = checkpoints.saved_params_signature(source, step)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'init_from {source!r}: checkpoint step {step} cannot '
                      f'be read ({type(e).__name__}: {e})') from None
  wanted = checkpoints.tree_signature(state.params)
  keep_head = _check_shapes(source, model_name, saved, wanted)
  _, variables = checkpoints.load_variables_on_host(source, step)
  params = variables['params']
  merged = {layer: (state.params[layer] if layer == HEAD and keep_head
                    else _place(params[layer], state.params[layer]))
            for layer in state.params}
  stats = variables.get('batch_stats')  # AlexNet-BN's running averages.
  batch_stats = (_place(stats, state.batch_stats) if stats and
                 state.batch_stats else state.batch_stats)
  loaded = ('every layer but fc8 loaded; fc8 re-initialized '
            f'({saved["fc8/bias"][0][0]} classes there, '
            f'{wanted["fc8/bias"][0][0]} here)' if keep_head
            else 'every layer loaded')
  log(f'initialized from {source} (step {step}): {loaded}; fresh optimizer '
      'state, step 0')
  return state.replace(params=merged, batch_stats=batch_stats)


def _check_shapes(source: str, model: str, saved: dict, wanted: dict) -> bool:
  """Whether fc8 differs in its class count only; raises on anything else."""
  keep_head = False
  theirs = _source_model(source)
  theirs = f', that run: {theirs}' if theirs else ''
  for key in sorted(set(saved) | set(wanted),
                    key=lambda k: (k.split('/')[0], not k.endswith('kernel'))):
    layer = key.split('/')[0]
    if key not in saved or key not in wanted:
      where = 'this model' if key not in saved else 'init_from'
      other = 'init_from' if key not in saved else 'this model'
      raise ConfigError(
          f'init_from {source!r}: {where} has {key}, {other} does not; '
          f'init_from needs the same architecture (this run: {model}{theirs})')
    (s_shape, _), (w_shape, _) = saved[key], wanted[key]
    if s_shape == w_shape:
      continue
    if layer == HEAD and s_shape[:-1] == w_shape[:-1]:
      keep_head = True  # Only the class count differs.
      continue
    raise ConfigError(
        f'init_from {source!r}: {key.replace("/", " ")} is {s_shape} there, '
        f'{w_shape} here; only fc8 may differ (the class count), so use the '
        f'same model (this run: {model}{theirs})')
  return keep_head


def _source_model(source: str) -> str:
  """The model named in the source's config.json, or '' if unreadable."""
  try:
    return str(json.loads(
        Layout.of(source).config.read_text()).get('model', ''))
  except Exception:  # pylint: disable=broad-except
    return ''


def _place(host, like):
  """Host arrays onto the shardings of `like` (any number of processes)."""
  return jax.tree.map(
      lambda x, t: jax.make_array_from_callback(
          t.shape, t.sharding, lambda index: np.asarray(x)[index]),
      host, like)
