"""Pictures of what a network learned, as PNG bytes: conv1's kernels as a
grid (the paper's Fig. 3), query images beside their nearest training images
(Fig. 4), and a confusion matrix with the most confident mistakes.

The arrays drawn are built here as plain NumPy first (`kernel_grid`), so a
test can check a pixel before anything is encoded. As in `curves.py`,
matplotlib is used through its object-oriented API and the Agg canvas only
(no pyplot: nothing global leaks into a notebook or a trainer), and files are
written to a temporary sibling and renamed into place (`write`). What is
computed -- features, neighbours, the confusion matrix -- is
`inspection.py` beside it.
"""

import io
import math
from typing import Sequence

import numpy as np
from etils import epath
from matplotlib import figure
from matplotlib.backends import backend_agg

from alexnet_jax.runtime import curves

DPI = 100
COLS = 16  # Kernels per grid row: 48 -> 3 rows, 64 -> 4.
CELL_MIN = 33  # A kernel's cell is at least this many pixels a side.
GAP = 2  # Pixels of background between cells and around the grid.
BACKGROUND = 1.0  # White, as the paper's figure.
# Class names on the confusion matrix's axes up to this many classes; counts
# in its cells up to _ANNOTATE.
_NAMED, _ANNOTATE = 30, 20


def write(path, data: bytes) -> str:
  """Writes a file atomically (readers never see half of it); its path."""
  # curves.py's writer: one way to replace a file, for curves and pictures.
  curves._write_atomically(epath.Path(path), data)  # pylint: disable=protected-access
  return str(path)


def _png(fig) -> bytes:
  canvas = backend_agg.FigureCanvasAgg(fig)
  buf = io.BytesIO()
  canvas.print_png(buf)
  return buf.getvalue()


# --- Kernels (Fig. 3) ---------------------------------------------------------


def normalise_kernels(kernels: np.ndarray) -> np.ndarray:
  """HWIO [k, k, 3, n] -> the same in 0..1, each kernel by its own min and
  max (the paper's display: every kernel uses the full range, so weak and
  strong kernels are equally visible). A constant kernel is mid-grey."""
  w = np.asarray(kernels, np.float64)
  lo = w.min(axis=(0, 1, 2), keepdims=True)
  span = w.max(axis=(0, 1, 2), keepdims=True) - lo
  return np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.), 0.5)


def cell_scale(k: int) -> int:
  """Nearest-neighbour upscaling of a k x k kernel, so 3x3 CIFAR kernels are
  visible beside 11x11 ImageNet ones (both about CELL_MIN pixels)."""
  return max(1, math.ceil(CELL_MIN / k))


def cell_origin(i: int, k: int, cols: int = COLS) -> tuple:
  """(top, left) pixel of kernel i's cell in `kernel_grid`'s array."""
  cell = k * cell_scale(k)
  row, col = divmod(i, cols)
  return GAP + row * (cell + GAP), GAP + col * (cell + GAP)


def kernel_grid(kernels: np.ndarray, cols: int = COLS) -> np.ndarray:
  """float [H, W, 3] in 0..1: kernel i of HWIO [k, k, 3, n], normalised
  (`normalise_kernels`) and upscaled (`cell_scale`), at `cell_origin(i)`;
  row-major, `cols` to a row, GAP pixels of background between cells."""
  k, _, channels, n = kernels.shape
  if channels != 3:
    raise ValueError(f'conv1 kernels have {channels} input channels, not RGB')
  scale, cols = cell_scale(k), min(cols, n)
  cell, rows = k * scale, -(-n // cols)
  grid = np.full((GAP + rows * (cell + GAP), GAP + cols * (cell + GAP), 3),
                 BACKGROUND, np.float32)
  shown = normalise_kernels(kernels)
  for i in range(n):
    top, left = cell_origin(i, k, cols)
    up = np.repeat(np.repeat(shown[..., i], scale, axis=0), scale, axis=1)
    grid[top:top + cell, left:left + cell] = up
  return grid


def filters_png(blocks: Sequence, title: str) -> bytes:
  """One labelled image per block: [(label, kernel_grid array)]."""
  heights = [g.shape[0] for _, g in blocks]
  width = max(g.shape[1] for _, g in blocks)
  zoom = 1.5  # Screen pixels per grid pixel.
  title_in = 0.45  # Inches above each block for its label.
  fig = figure.Figure(figsize=(
      width * zoom / DPI + 0.4,
      sum(h * zoom / DPI + title_in for h in heights) + 0.5), dpi=DPI)
  axes = fig.subplots(len(blocks), 1, squeeze=False, gridspec_kw=dict(
      height_ratios=[h * zoom / DPI + title_in for h in heights],
      left=0.02, right=0.98, bottom=0.01, top=0.9, hspace=0.25))[:, 0]
  for ax, (label, grid) in zip(axes, blocks):
    ax.imshow(grid, interpolation='nearest')
    ax.set_title(label, fontsize=10, loc='left')
    ax.set_axis_off()
  fig.suptitle(title, fontsize=11)
  return _png(fig)


# --- Nearest neighbours (Fig. 4) ----------------------------------------------


def _show(ax, image, title: str = '', colour: str = 'black'):
  ax.imshow(image, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8, color=colour)


def neighbours_png(nb, class_names: Sequence[str], title: str) -> bytes:
  """Fig. 4's layout: each row a query (left, boxed) and its K nearest
  training images by distance; a neighbour's label is green where it is
  the query's class, red where not."""
  n, k = nb.indices.shape
  height = 1.45 * n + 0.8  # Inches; 0.8 for the title.
  fig = figure.Figure(figsize=(1.3 * (k + 1) + 0.3, height), dpi=DPI)
  axes = fig.subplots(n, k + 1, squeeze=False, gridspec_kw=dict(
      left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / height,
      wspace=0.08, hspace=0.35))
  for r in range(n):
    query_class = int(nb.query_labels[r])
    _show(axes[r, 0], nb.query_images[r],
          f'test #{nb.queries[r]}\n{class_names[query_class]}')
    for spine in axes[r, 0].spines.values():
      spine.set_edgecolor('tab:blue')
      spine.set_linewidth(2.5)
    for j in range(k):
      label = int(nb.labels[r, j])
      _show(axes[r, j + 1], nb.images[r, j],
            f'{class_names[label]}\nd={nb.distances[r, j]:.3g}',
            'tab:green' if label == query_class else 'tab:red')
  fig.suptitle(title, fontsize=10)
  return _png(fig)


# --- Where it errs ------------------------------------------------------------


def _confusion(ax, confusion: np.ndarray, names: Sequence[str]):
  """Rows true, columns predicted, each row as a share of its class."""
  c = len(confusion)
  totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  ax.imshow(confusion / totals, cmap='Blues', vmin=0, vmax=1,
            interpolation='nearest')
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  if c <= _NAMED:
    ax.set_xticks(range(c), names, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
  if c <= _ANNOTATE:
    share = confusion / totals
    for i in range(c):
      for j in range(c):
        ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
                fontsize=7, color='white' if share[i, j] > 0.5 else 'black')
  ax.set_title('confusion matrix (counts; shade = share of the true class)'
               if c <= _ANNOTATE else f'confusion matrix, {c} classes '
               '(shade = share of the true class)', fontsize=9)


def _accuracy_bars(ax, accuracy: np.ndarray, names: Sequence[str]):
  """Per-class top-1 as horizontal bars; the worst 30 when there are more."""
  order = np.arange(len(accuracy))
  title = 'top-1 per class'
  if len(accuracy) > _NAMED:
    order = np.argsort(np.nan_to_num(accuracy, nan=2.), kind='stable')[:_NAMED]
    title = f'top-1 of the {_NAMED} worst classes'
  values = 100 * np.nan_to_num(accuracy[order])
  ax.barh(range(len(order)), values, color='tab:blue')
  ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 100)
  ax.set_xlabel('%')
  for y, v in enumerate(values):
    ax.text(min(v + 1, 80), y, f'{v:.0f}', va='center', fontsize=7)
  ax.set_title(title, fontsize=9)


def errors_png(confusion: np.ndarray, accuracy: np.ndarray,
               names: Sequence[str], mistakes: Sequence, title: str) -> bytes:
  """The confusion matrix, per-class top-1, and a strip of mistakes:
  [(image, true class, predicted class, confidence)], most confident first."""
  strip = max(len(mistakes), 1)
  width = max(11., 1.15 * strip)
  fig = figure.Figure(figsize=(width, 9.), dpi=DPI)
  top, bottom = fig.subfigures(2, 1, height_ratios=[3.8, 1.2])
  ax_m, ax_a = top.subplots(1, 2, gridspec_kw=dict(
      width_ratios=[3, 2], left=0.12, right=0.97, bottom=0.2, top=0.9,
      wspace=0.35))
  _confusion(ax_m, confusion, names)
  _accuracy_bars(ax_a, accuracy, names)
  axes = bottom.subplots(1, strip, squeeze=False, gridspec_kw=dict(
      left=0.01, right=0.99, bottom=0.04, top=0.62, wspace=0.1))[0]
  for ax, (image, true, pred, conf) in zip(axes, mistakes):
    _show(ax, image, f'true: {names[true]}\npred: {names[pred]}\n'
          f'p={conf:.2f}', 'tab:red')
  for ax in axes[len(mistakes):]:
    ax.set_axis_off()
  bottom.suptitle('most confident mistakes' if mistakes else
                  'no mistakes', fontsize=10)
  fig.suptitle(title, fontsize=11)
  return _png(fig)
