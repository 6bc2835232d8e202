"""Looking inside a trained network as the paper did: its first-layer kernels
(Fig. 3), nearest neighbours by the last hidden layer (Fig. 4), and where it
errs (a confusion matrix from the trainer's own evaluation).

Every image is seen as the workdir's evaluation sees it, so a picture shows
the network that the run's test numbers describe:
  * features: fc7's output after ReLU (the model sows it as
    'intermediates/penultimate') of the evaluation view, i.e. the centre view
    without its mirror: `evaluation.eval_views` with eval_flip and ten_crop
    off (a CIFAR image as stored; an image dataset's central 256 square
    centre-cropped to the input side), normalized as evaluation does;
  * predictions: `evaluation.make_logits_fn`, the trainer's views averaged,
    one top-1 per image, so the confusion matrix's trace is the top-1 count
    `evaluation.split_metrics` reports.

Splits are walked in fixed-size batches (the last padded and masked) placed
on every device with the batch sharding; image datasets are decoded by
Grain one batch at a time, so host memory does not grow with the split.
Drawing is `pictures.py` beside it; the command is `alexnet_jax.visualize`.
"""

import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import registry
from alexnet_jax.data import streaming
from alexnet_jax.errors import DataError
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import evaluation

# Training sets above this size take long to search without --sample.
LARGE_TRAIN = 100_000
SAMPLE_SEED = 0

# --- First-layer kernels (Fig. 3) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tower:
  """conv1's kernels feeding one tower, HWIO [k, k, 3, n], and their chroma."""
  title: str
  first: int  # Index of its first kernel among conv1's outputs.
  kernels: np.ndarray
  chroma: np.ndarray  # [n], see `chroma`.


def chroma(kernels: np.ndarray) -> np.ndarray:
  """How colour-specific each kernel of HWIO [k, k, 3, n] is, in 0..1.

  The share of a kernel's variance that lies between its colour channels:
  sum over pixels and channels of (w - the pixel's mean over R, G, B)^2,
  over sum of (w - the kernel's mean)^2. 0 is a grey kernel (the same
  weights in R, G and B: it sees luminance only); independent noise, as at
  initialization, gives about 2/3; 1 is pure colour opposition (each
  pixel's channels summing to the kernel's mean). The paper's Fig. 3
  observation -- one tower colour-agnostic, one colour-specific -- is a low
  mean chroma in one tower and a high one in the other.
  """
  w = np.asarray(kernels, np.float64)
  between = ((w - w.mean(axis=2, keepdims=True)) ** 2).sum(axis=(0, 1, 2))
  total = ((w - w.mean(axis=(0, 1, 2), keepdims=True)) ** 2).sum(
      axis=(0, 1, 2))
  return np.where(total > 0, between / np.maximum(total, 1e-30), 0.)


def conv1_towers(params, groups: int) -> list:
  """conv1's kernels in the blocks that feed conv2's towers.

  conv1 itself is not grouped here: with `groups` towers its outputs
  [t*C/groups, (t+1)*C/groups) feed tower t, because conv2 is grouped (the
  paper's 48 + 48 on two GPUs). One block for a single-tower net.
  """
  kernel = np.asarray(params['conv1']['kernel'], np.float32)
  k, _, _, width = kernel.shape
  if groups <= 1:
    return [Tower(f'conv1: {width} kernels, {k}x{k}x3', 0, kernel,
                  chroma(kernel))]
  per = width // groups
  return [Tower(f'tower {t + 1} (GPU {t + 1}): conv1 kernels '
                f'{t * per}..{(t + 1) * per - 1}, {k}x{k}x3', t * per,
                kernel[..., t * per:(t + 1) * per],
                chroma(kernel[..., t * per:(t + 1) * per]))
          for t in range(groups)]


def chroma_line(tower: Tower) -> str:
  """One line per tower, for people: its mean chroma and how many are grey."""
  grey = int((tower.chroma < 0.25).sum())
  return (f'{tower.title.split(":")[0]}: mean chroma '
          f'{tower.chroma.mean():.3f} over {len(tower.chroma)} kernels '
          f'({grey} below 0.25, i.e. nearly grey)')


# --- Splits as evaluation stores them -----------------------------------------


def _padded(order: np.ndarray, batch: int):
  """Positions of `order` in batches of `batch`: (indices, mask) each, the
  last batch padded by repeating its final index."""
  for start in range(0, len(order), batch):
    idx = order[start:start + batch]
    mask = np.zeros(batch, bool)
    mask[:len(idx)] = True
    yield np.concatenate([idx, np.repeat(idx[-1:], batch - len(idx))]), mask


class InMemorySplit:
  """A split held on the host (CIFAR-10, fake): uint8 images as stored."""

  def __init__(self, split: registry.Split):
    self.split = split

  def __len__(self):
    return len(self.split)

  def examples(self, indices) -> tuple:
    """(uint8 images, int labels) of the given indices."""
    return self.split.images[indices], self.split.labels[indices]

  def batches(self, order: np.ndarray, batch: int):
    """(images, labels, indices, mask) over the indices `order`, once."""
    for idx, mask in _padded(order, batch):
      yield self.split.images[idx], self.split.labels[idx], idx, mask


class StreamedSplit:
  """A split of an image dataset: the stored central `resize_size` square of
  each record, decoded by Grain workers one batch at a time."""

  def __init__(self, source, resize_size: int, workers: int):
    self.source, self.resize_size, self.workers = source, resize_size, workers

  def __len__(self):
    return len(self.source)

  def examples(self, indices) -> tuple:
    """(uint8 stored squares, int labels) of a few records, decoded here."""
    decode = streaming.EvalExample(self.source, self.resize_size)
    decoded = [decode(int(i)) for i in indices]
    return (np.stack([d[0] for d in decoded]),
            np.asarray([d[1] for d in decoded], np.int32))

  def batches(self, order: np.ndarray, batch: int):
    """(images, labels, indices, mask) over the indices `order`, once:
    streaming's evaluation batches of those records (Grain pads the last
    by repeating its final record, as `_padded` does the indices)."""
    records = self.source
    if len(order) != len(self.source) or np.any(order != np.arange(len(order))):
      records = streaming.Subset(self.source, order)
    padded = _padded(order, batch)
    for images, labels, _, _ in streaming.passes(streaming.eval_batches(
        records, global_batch=batch, resize_size=self.resize_size,
        workers=self.workers)):
      idx, mask = next(padded)
      yield images, labels, idx, mask


def sample_indices(n: int, count: Optional[int], seed: int = SAMPLE_SEED):
  """The sorted indices of a fixed-seed random `count` of n (all: None)."""
  if count is None or count >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


# --- The network on every device ----------------------------------------------


def make_feature_fn(input_spec, model):
  """(variables, uint8 images) -> float32 [N, hidden]: fc7 after ReLU of each
  image's evaluation view (centre, unmirrored), normalized as evaluation
  normalizes it (`input_spec`)."""
  one_view = dataclasses.replace(input_spec, ten_crop=False, eval_flip=False)

  def features(variables, images):
    view = one_view.eval_views(images)[0]
    _, state = model.apply(variables, one_view.normalize(view), train=False,
                           mutable=['intermediates'])
    return state['intermediates']['penultimate'][0].astype(jnp.float32)

  return features


class Network:
  """A workdir's model on all devices: parameters replicated, each batch
  split over the devices (a one-axis data mesh, whatever the run used)."""

  def __init__(self, input_spec, model, variables, batch_size: int):
    """`variables`: {'params', ['batch_stats']}, as `saved_run.load_model`
    returns them; `input_spec`: the run's (`build.input_spec`)."""
    self.mesh = mesh_lib.make_mesh(1)
    self.sharding = mesh_lib.batch(self.mesh)
    self.params = jax.device_put(variables, mesh_lib.replicated(self.mesh))
    self.batch = -(-batch_size // self.mesh.size) * self.mesh.size
    self.features_fn = make_feature_fn(input_spec, model)
    self.features = jax.jit(self.features_fn)
    self.log_probs = jax.jit(evaluation.make_logits_fn(input_spec,
                                                       model.apply))

  def put(self, *arrays):
    return tuple(jax.device_put(a, self.sharding) for a in arrays)

  def features_of(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, hidden] of host images, in padded batches."""
    out = []
    for idx, mask in _padded(np.arange(len(images)), self.batch):
      f = self.features(self.params, *self.put(images[idx]))
      out.append(np.asarray(f)[mask])
    return np.concatenate(out)


# --- Nearest neighbours (Fig. 4) ----------------------------------------------


@dataclasses.dataclass
class Neighbours:
  """For each query, the K nearest training images by fc7 features."""
  queries: np.ndarray  # [N] indices into the evaluation split.
  query_labels: np.ndarray  # [N]
  indices: np.ndarray  # [N, K] indices into the training split, nearest first.
  labels: np.ndarray  # [N, K]
  distances: np.ndarray  # [N, K] float64 Euclidean distances.
  query_images: np.ndarray  # uint8 [N, s, s, 3] as stored (for pictures).
  images: np.ndarray  # uint8 [N, K, s, s, 3] as stored.
  searched: int  # Training images searched (all, or the sample).
  seconds: float  # The pass over them, compiling aside.


def _top_k_step(features_fn, k: int):
  """(params, (best d2, best idx), queries, images, indices, mask) -> the
  running top-K merged with one batch. Squared distances as
  |q|^2 + |f|^2 - 2 q.f in float32; padding is at infinity."""
  def step(params, best, queries, images, indices, mask):
    f = features_fn(params, images)
    cross = jnp.matmul(queries, f.T, precision=jax.lax.Precision.HIGHEST)
    d2 = (jnp.sum(queries ** 2, -1)[:, None] + jnp.sum(f ** 2, -1)[None]
          - 2 * cross)
    d2 = jnp.where(mask[None], d2, jnp.inf)
    all_d = jnp.concatenate([best[0], d2], axis=1)
    all_i = jnp.concatenate(
        [best[1], jnp.broadcast_to(indices, d2.shape)], axis=1)
    neg, pos = jax.lax.top_k(-all_d, k)
    return -neg, jnp.take_along_axis(all_i, pos, axis=1)
  return step


def _search(net: Network, queries: np.ndarray, train, order: np.ndarray,
            k: int, log: Callable) -> tuple:
  """([N, K] training indices nearest to the query features, seconds): one
  pass over `order`, keeping only a running top-K per query on the device.
  The seconds leave out compiling, which is done before the first batch so
  that the first batch times the pass."""
  replicated = mesh_lib.replicated(net.mesh)
  best = jax.device_put((np.full((len(queries), k), np.inf, np.float32),
                         np.full((len(queries), k), -1, np.int32)), replicated)
  q = jax.device_put(queries, replicated)
  step_fn = jax.jit(_top_k_step(net.features_fn, k),
                    out_shardings=(replicated, replicated))
  step, compiling, start = None, 0., time.perf_counter()
  for images, _, idx, mask in train.batches(order, net.batch):
    args = (net.params, best, q, *net.put(images, idx.astype(np.int32), mask))
    if step is None:
      t = time.perf_counter()
      step = step_fn.lower(*args).compile()
      compiling = time.perf_counter() - t
      best = jax.block_until_ready(step(*args))
      first = time.perf_counter() - t - compiling
      batches = -(-len(order) // net.batch)
      log(f'{len(order)} training images in {batches} batches of '
          f'{net.batch}, about {first * batches:.0f} s at the first '
          f"batch's speed ({first:.2f} s)")
    else:
      best = step(*args)
  indices = np.asarray(best[1])
  seconds = time.perf_counter() - start - compiling
  log(f'searched {len(order)} training images in {seconds:.1f} s '
      f'(and {compiling:.1f} s compiling)')
  return indices, seconds


def nearest_neighbours(net: Network, splits: dict, split: str,
                       queries: np.ndarray, k: int,
                       sample: Optional[int] = None,
                       log: Callable = print) -> Neighbours:
  """The K training images nearest to each query image of `split` by fc7
  features (Euclidean), as the paper's Fig. 4.

  The pass ranks by float32 squared distances on the device; the final K
  are re-measured exactly in float64 on the host and re-sorted by that.
  `sample`: search a fixed-seed random subset of that many training images.
  """
  train = splits['train']
  if sample is None and len(train) > LARGE_TRAIN:
    log(f'{len(train)} training images: the pass will take long; '
        '--sample=M searches a fixed random M of them instead')
  order = sample_indices(len(train), sample)
  if k > len(order):
    raise DataError(f'--k {k} is more than the {len(order)} training images '
                    'searched')
  q_images, q_labels = splits[split].examples(queries)
  q_feats = net.features_of(q_images).astype(np.float64)
  found, seconds = _search(net, q_feats.astype(np.float32), train, order, k,
                           log)
  # The chosen few, once: their images, labels and exact distances.
  chosen = np.unique(found)
  images, labels = train.examples(chosen)
  feats = net.features_of(images).astype(np.float64)
  at = np.searchsorted(chosen, found)  # [N, K] rows of `chosen`.
  exact = np.linalg.norm(q_feats[:, None] - feats[at], axis=-1)
  rank = np.argsort(exact, axis=1, kind='stable')
  at = np.take_along_axis(at, rank, 1)
  return Neighbours(np.asarray(queries), q_labels, chosen[at], labels[at],
                    np.take_along_axis(exact, rank, 1), q_images, images[at],
                    len(order), seconds)


# --- Where it errs ------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  """The trainer's evaluation of a split, one row per image."""
  labels: np.ndarray  # [N] true classes.
  predicted: np.ndarray  # [N] top-1 of the averaged log-probabilities.
  confidence: np.ndarray  # [N] the predicted class's averaged probability.


def predict_split(net: Network, reader) -> Predictions:
  """Every image of a split once, through evaluation's own views."""
  @jax.jit
  def top1(params, images):
    log_probs = net.log_probs(params, images)
    value, index = jax.lax.top_k(log_probs, 1)  # As steps.correct ranks.
    return index[:, 0], jnp.exp(value[:, 0])

  labels, predicted, confidence = [], [], []
  for images, y, _, mask in reader.batches(np.arange(len(reader)), net.batch):
    p, c = top1(net.params, *net.put(images))
    labels.append(np.asarray(y)[mask])
    predicted.append(np.asarray(p)[mask])
    confidence.append(np.asarray(c)[mask])
  return Predictions(*(np.concatenate(a) for a in
                       (labels, predicted, confidence)))


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
  """int64 [C, C]: row = true class, column = predicted class."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(labels), np.asarray(predicted)), 1)
  return m


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """[C] top-1 accuracy of each true class (NaN for a class with no images)."""
  totals = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def confident_mistakes(p: Predictions, count: int) -> np.ndarray:
  """Indices of the `count` wrong predictions made with most confidence."""
  wrong = np.flatnonzero(p.predicted != p.labels)
  return wrong[np.argsort(-p.confidence[wrong], kind='stable')][:count]
