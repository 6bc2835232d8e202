"""All evaluation: the log-probabilities averaged over the test views (the
input spec's), and every example of a split counted once, from either feed
(`Evaluator`). Loss, top-1 and top-5 hits are summed with clu's masked
metrics; `split_metrics` turns the sums into per-example means.
"""

from typing import Callable

import flax
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import steps

# (variables, uint8 images) -> log of the softmax averaged over the test
# views; variables = {'params', ['batch_stats']} (`state.variables`).
LogitsFn = Callable[..., jax.Array]


def make_logits_fn(input_spec, apply_fn) -> LogitsFn:
  """(variables, uint8 images) -> log of the softmax averaged over the test
  views (`input_spec.eval_views`); one view gives plain log-softmax. Batch
  norm uses its running averages. `apply_fn`: the run's forward pass
  (`model.apply`, or the towers' over a mesh)."""

  def logits_fn(variables, images):
    views = input_spec.eval_views(images)
    log_probs = [jax.nn.log_softmax(apply_fn(
        variables, input_spec.normalize(v), train=False).astype(jnp.float32))
                 for v in views]
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


class Evaluator:
  """Sums loss, top-1 and top-5 over every example of a split, from either
  kind of feed: each feed hands over its split the way it holds it
  (`feed.evaluate(evaluator, variables, name)`).

  * `over_arrays`: a split on the device, walked in equal batches
    (`balanced_batch`) by one compiled scan; the last batch padded
    (repeating the final example) and masked.
  * `over_batches`: padded batches with a mask (Grain's, from files), one
    jitted update each.
  """

  def __init__(self, logits_fn: LogitsFn, eval_batch_size: int, mesh,
               num_classes: int):
    self.eval_batch_size, self.mesh = eval_batch_size, mesh
    data_sharding = mesh_lib.batch(mesh)

    @jax.jit
    def over_arrays(variables, images, labels):
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

    @jax.jit
    def add(metrics, variables, images, labels, mask):
      return metrics.merge(_batch_metrics(logits_fn(variables, images),
                                          labels, num_classes, mask > 0))

    self.over_arrays, self._add = over_arrays, add

  @property
  def streamed_batch(self) -> int:
    """The global batch of `over_batches`: a multiple of the device count."""
    return -(-self.eval_batch_size // self.mesh.size) * self.mesh.size

  def over_batches(self, variables, batches) -> EvalMetrics:
    metrics = EvalMetrics.empty()
    for images, labels, mask in batches:
      metrics = self._add(metrics, variables, images, labels, mask)
    return metrics
