"""All evaluation: the test-time views, the log-probabilities averaged over
them, and every example of a split counted once, from either feed.

  * In memory (`scan_evaluator`): the split is on the device; a scan walks
    it in equal batches, the last one padded and masked.
  * Streamed (`streaming_evaluator`): Grain hands over padded batches of the
    stored 256x256 images with a mask.
Both sum loss, top-1 and top-5 hits with clu's masked metrics; `split_metrics`
turns the sums into per-example means.
"""

from typing import Callable

import flax
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from alexnet_jax.data import augment
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import config as config_lib
from alexnet_jax.task import steps

# (variables, uint8 images) -> log of the softmax averaged over the test
# views; variables = {'params', ['batch_stats']} (`state.variables`).
LogitsFn = Callable[..., jax.Array]


def eval_views(config, images, side: int):
  """The test-time views of a uint8 batch: [V, N, side', side', C].

  The paper's 10 crops (`ten_crop`: corners and centre, each mirrored), or
  the centre crop of larger images; with `eval_flip`, each view's reflection
  too (the paper's test-time averaging).
  """
  if config.ten_crop:  # validate_config allows it on image datasets only.
    return augment.ten_crops(images, side)
  if images.shape[1] > side:
    images = augment.center_crop(images, side)
  views = [images]
  if config.eval_flip:
    views.append(images[:, :, ::-1])
  return jnp.stack(views)


def make_logits_fn(config, model, mean, std, side: int,
                   apply_fn=None) -> LogitsFn:
  """(variables, uint8 images) -> log of the softmax averaged over the
  views; one view gives plain log-softmax. Batch norm uses its running
  averages. `apply_fn`: the run's forward pass (`state.make_apply`; default
  `model.apply`)."""
  mean, std, scale = config_lib.input_transform(config, mean, std)
  apply_fn = apply_fn or model.apply

  def logits_fn(variables, images):
    views = eval_views(config, images, side)
    log_probs = [jax.nn.log_softmax(apply_fn(
        variables,
        augment.normalize(v, mean, std, side, model.dtype, scale),
        train=False).astype(jnp.float32)) for v in views]
    if len(log_probs) == 1:
      return log_probs[0]
    return (jax.nn.logsumexp(jnp.stack(log_probs), axis=0) -
            jnp.log(float(len(log_probs))))

  return logits_fn


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  """Per-example means over the unmasked examples of a split."""
  loss: clu_metrics.Average.from_output('loss')
  top1: clu_metrics.Average.from_output('top1')
  top5: clu_metrics.Average.from_output('top5')


def _batch_metrics(log_probs, labels, num_classes, mask) -> EvalMetrics:
  return EvalMetrics.single_from_model_output(
      loss=steps.cross_entropy(log_probs, labels, num_classes),
      top1=steps.correct(log_probs, labels, 1),
      top5=steps.correct(log_probs, labels, min(5, num_classes)),
      mask=mask)


def split_metrics(metrics: EvalMetrics) -> dict:
  """{'loss', 'top1', 'top5'}: sums over the split divided on the host (in
  float64) by the number of examples it holds."""
  metrics = jax.device_get(metrics)
  return {k: float(m.total) / float(m.count)
          for k, m in (('loss', metrics.loss), ('top1', metrics.top1),
                       ('top5', metrics.top5))}


def balanced_batch(n: int, eval_batch_size: int, devices: int) -> int:
  """The batch that walks n examples in as few batches as `eval_batch_size`
  allows, with the least padding: 508 examples at 500 take two batches of
  254, not 500 + 500 (half of it padding), rounded up to the device count."""
  cap = -(-eval_batch_size // devices) * devices
  batches = max(1, -(-n // cap))
  per_batch = max(1, -(-n // batches))
  return -(-per_batch // devices) * devices


def scan_evaluator(logits_fn: LogitsFn, eval_batch_size: int, mesh,
                   num_classes: int):
  """jit(variables, images, labels) -> EvalMetrics over every example of
  on-device arrays, walked in equal batches (`balanced_batch`) by a scan;
  the last batch is padded (repeating the final example) and masked."""
  data_sharding = mesh_lib.batch(mesh)

  @jax.jit
  def evaluate(variables, images, labels):
    n = labels.shape[0]
    batch = balanced_batch(n, eval_batch_size, mesh.size)

    def body(metrics, j):
      pos = j * batch + jnp.arange(batch)
      idx = jax.lax.with_sharding_constraint(jnp.minimum(pos, n - 1),
                                             data_sharding)
      return metrics.merge(_batch_metrics(
          logits_fn(variables, images[idx]), labels[idx], num_classes,
          pos < n)), None

    return jax.lax.scan(body, EvalMetrics.empty(),
                        jnp.arange(-(-n // batch)))[0]

  return evaluate


def streaming_evaluator(feed, logits_fn: LogitsFn, eval_batch_size: int,
                        mesh, num_classes: int):
  """(variables, split name) -> EvalMetrics over a streamed split: Grain's
  padded batches, one jitted update each."""
  batch = -(-eval_batch_size // mesh.size) * mesh.size

  @jax.jit
  def add(metrics, variables, images, labels, mask):
    return metrics.merge(_batch_metrics(logits_fn(variables, images), labels,
                                        num_classes, mask > 0))

  def evaluate(variables, name):
    metrics = EvalMetrics.empty()
    for images, labels, mask in feed.eval_batches(name, batch):
      metrics = add(metrics, variables, images, labels, mask)
    return metrics

  return evaluate


def make_evaluator(config, feed, logits_fn: LogitsFn, mesh):
  """(variables, split name) -> EvalMetrics over every example of that
  split."""
  if feed.spec.streamed:
    return streaming_evaluator(feed, logits_fn, config.eval_batch_size, mesh,
                               feed.num_classes)
  scan = scan_evaluator(logits_fn, config.eval_batch_size, mesh,
                        feed.num_classes)
  return lambda variables, name: scan(variables, *feed.eval_arrays[name])
