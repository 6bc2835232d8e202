"""Learning curves from metrics.jsonl: loss, top-1 and learning rate by step.

Training redraws WORKDIR/curves.png after every evaluation
(`write_run_curves`), so a run can be watched from a file browser;
`python -m alexnet_jax.plot` overlays several runs in one figure, one colour
per run.

Every path goes through `etils.epath`, so workdirs and the output may be
`gs://...`. The PNG is written to a temporary sibling and renamed into place,
so a reader (or a browser refreshing it mid-run) never sees half of one.
Matplotlib is used through its object-oriented API and the Agg canvas only:
no pyplot, so no global figure registry or backend switch that would leak
into the training process or a notebook that imports this.
"""

import io
import json
import math
import uuid
from typing import Optional, Sequence

import numpy as np
from etils import epath
from matplotlib import figure
from matplotlib import lines
from matplotlib import ticker
from matplotlib.backends import backend_agg

from alexnet_jax.errors import UserError
from alexnet_jax.runtime.layout import Layout

FIGSIZE = (15, 4.5)  # Inches; at DPI this is a 1500x450 PNG.
DPI = 100

SPLITS = ('train', 'val', 'test')
# Line style tells the split, colour tells the run. Test is evaluated once,
# at the end, so it is a marker; val gets small markers that show where the
# evaluations were (and keep a single evaluation visible).
_SPLIT_STYLE = {
    'train': dict(linestyle='-', linewidth=1.2),
    'val': dict(linestyle='--', linewidth=1.6, marker='o', markersize=3,
                zorder=3),
    'test': dict(linestyle='none', marker='*', markersize=13,
                 markeredgecolor='black', markeredgewidth=0.6, zorder=4),
}
# (record key, panel title, y label, scale, splits drawn).
_PANELS = (
    ('loss', 'Loss', 'loss', 1., SPLITS),
    ('top1', 'Top-1 accuracy', 'top-1 accuracy (%)', 100., SPLITS),
    ('lr', 'Learning rate', 'learning rate', 1., ('train',)),
)
# The fields a stack of runs may sweep (`task/runs.py`), as its records
# carry them.
_SWEPT = ('learning_rate', 'weight_decay', 'momentum', 'dropout_rate')
# A learning rate spanning more than this factor (plateau or step decays)
# is drawn on a log scale, where each decay is visible, not a drop to zero.
_LOG_LR_RANGE = 100.


class PlotError(UserError):
  """A workdir or its metrics.jsonl cannot be read; the message names it."""


def _is_number(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def read_records(workdir, missing_ok: bool = False) -> list:
  """The records of WORKDIR/metrics.jsonl, skipping lines that are not JSON.

  A line torn by kill -9 (or any other garbage) is skipped rather than
  failing the plot. Missing files are a `PlotError` naming the path, unless
  `missing_ok` (training draws before its first flush may find none).
  """
  path = Layout.of(workdir).metrics
  try:
    if not path.parent.is_dir():
      if missing_ok:
        return []
      raise PlotError(f'workdir {path.parent} does not exist')
    if not path.exists():
      if missing_ok:
        return []
      raise PlotError(f'{path} does not exist (has the run logged yet?)')
    text = path.read_bytes().decode('utf-8', errors='replace')
  except OSError as e:
    raise PlotError(f'cannot read {path} ({type(e).__name__}: {e})') from None
  records = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and _is_number(record.get('step')):
      records.append(record)
  return records


def _series(records: list) -> dict:
  """{(split, key): (steps, values)}, sorted by step, finite values only.

  A later record of the same step and split wins, as in the reporter.
  """
  by_key = {}
  for r in records:
    split = r.get('split')
    if split not in SPLITS:
      continue
    for key, _, _, scale, splits in _PANELS:
      if split in splits and _is_number(r.get(key)):
        by_key.setdefault((split, key), {})[r['step']] = r[key] * scale
  return {k: tuple(zip(*sorted(points.items())))
          for k, points in by_key.items()}


def _stack_series(label: str, records: list) -> list:
  """A workdir's [(label, series, how)]: one entry for one run; for a stack
  of runs (records carrying `run`, `task/runs.py`) its mean (bold, a band
  of ± one standard deviation) and then each run (thin)."""
  stacked = sorted({r['run'] for r in records if isinstance(r.get('run'),
                                                            int)})
  if not stacked:
    return [(label, _series(records), None)]
  points = {}  # A sweep's points (the records' swept values): a mean each.
  for i in stacked:
    first = next(r for r in records if r.get('run') == i)
    key = tuple((k, first[k]) for k in _SWEPT if k in first)
    points.setdefault(key, []).append(i)
  if len(points) > 1:
    out = []
    varying = {k for key in points for k, v in key
               if any((k, v) not in other for other in points)}
    for key, members in points.items():
      name = ', '.join(f'{k}={v:g}' for k, v in key if k in varying)
      out += _stack_series(name, [r for r in records
                                  if r.get('run') in members])
    return out
  per = [_series([r for r in records if r.get('run') == i]) for i in stacked]
  mean, spread = {}, {}
  for key in {k for s in per for k in s}:
    by_step = {}
    for s in per:
      for step, v in zip(*s.get(key, ((), ()))):
        by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    values = [np.asarray(by_step[t]) for t in steps]
    mean[key] = (tuple(steps), tuple(float(v.mean()) for v in values))
    spread[key] = tuple(float(v.std(ddof=1)) if v.size > 1 else 0.
                        for v in values)
  return ([(f'{label}: mean of {len(per)} runs', mean, spread)] +
          [(f'run {i}', s, 'thin') for i, s in zip(stacked, per)])


def default_labels(workdirs: Sequence) -> list:
  """Each workdir's last path component, or the full path where those clash."""
  paths = [Layout.of(w).root for w in workdirs]
  names = [p.name or p.resolve().name or str(p) for p in paths]
  return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _render(runs: list, title: Optional[str]) -> bytes:
  """The PNG bytes of the three panels for [(label, series)]."""
  fig = figure.Figure(figsize=FIGSIZE, dpi=DPI)
  canvas = backend_agg.FigureCanvasAgg(fig)
  # Fixed margins: a layout engine measures every tick label first, which
  # would double the time of a redraw training waits for.
  axes = fig.subplots(1, len(_PANELS), gridspec_kw=dict(
      left=0.055, right=0.99, bottom=0.11, top=0.87, wspace=0.22))
  seen_splits = set()
  runs = [r if len(r) == 3 else (*r, None) for r in runs]
  # A colour per workdir or per sweep point; a stack's runs take their
  # mean's colour, thin.
  colours, group = [], -1
  for _, _, how in runs:
    group += how != 'thin'
    colours.append(f'C{max(group, 0) % 10}')
  for i, (_, series, how) in enumerate(runs):
    colour = colours[i]
    for ax, (key, _, _, _, splits) in zip(axes, _PANELS):
      for split in splits:
        if (split, key) not in series:
          continue
        steps, values = series[split, key]
        style = dict(_SPLIT_STYLE[split])
        if len(steps) == 1 and split == 'train':
          style['marker'] = 'o'  # A one-point line would not show.
        if how == 'thin':  # A run of a stack, under its mean.
          style.update(linewidth=0.6, alpha=0.5, markersize=2)
        elif isinstance(how, dict):  # A stack's mean, bold, with a band.
          style['linewidth'] = 2.2
          sd = np.asarray(how[split, key])
          if len(steps) > 1 and sd.any():
            ax.fill_between(steps, np.asarray(values) - sd,
                            np.asarray(values) + sd, color='0.6', alpha=0.3,
                            linewidth=0)
        ax.plot(steps, values, color=colour, **style)
        seen_splits.add(split)
  for ax, (_, panel_title, ylabel, _, _) in zip(axes, _PANELS):
    ax.set_title(panel_title)
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(  # Steps are whole.
        integer=True, min_n_ticks=1))
  lr_values = [v for _, s, _ in runs
               for v in s.get(('train', 'lr'), ((), ()))[1]]
  if lr_values and min(lr_values) > 0 and (
      max(lr_values) / min(lr_values) > _LOG_LR_RANGE):
    axes[2].set_yscale('log')
  else:  # 1e-4 as an offset above the axis, not 0.000104 into the label.
    axes[2].ticklabel_format(axis='y', style='sci', scilimits=(-2, 4))
  if seen_splits:
    # Legends as keys: line style = split (black), colour = run.
    axes[0].legend(handles=[
        lines.Line2D([], [], color='0.2', label=s, **_SPLIT_STYLE[s])
        for s in SPLITS if s in seen_splits], loc='best')
  if len(runs) > 1:
    axes[1].legend(handles=[
        lines.Line2D([], [], color=colours[i], linewidth=2 if how != 'thin'
                     else 0.8, label=label + ('' if series else
                                             ' (no metrics yet)'))
        for i, (label, series, how) in enumerate(runs)
        if how != 'thin' or len(runs) <= 12], loc='best', fontsize='small')
  if not seen_splits:
    fig.text(0.5, 0.5, 'no metrics yet', ha='center', va='center',
             fontsize=20, color='0.4')
  if title is None and len(runs) == 1:
    title = runs[0][0]
  if title:
    fig.suptitle(title)
  buf = io.BytesIO()
  canvas.print_png(buf)
  return buf.getvalue()


def _write_atomically(path: epath.Path, data: bytes):
  """Readers see the old file or the new one, never half of it.

  The temporary name is unique, so the CLI redrawing a live run's
  curves.png cannot race the run's own redraw.
  """
  tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp'
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def plot_runs(workdirs: Sequence, out, labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None, missing_ok: bool = False) -> None:
  """Writes one PNG overlaying the learning curves of `workdirs`.

  Args:
    workdirs: run directories holding metrics.jsonl (local or gs://).
    out: the PNG to write (replaced atomically).
    labels: one per workdir; default `default_labels(workdirs)`.
    title: the figure's title; default the label when there is one run.
    missing_ok: draw a missing metrics.jsonl as "no metrics yet" rather than
      raising `PlotError`.

  Raises:
    PlotError: a workdir or metrics.jsonl is missing or unreadable, or the
      labels do not match the workdirs.
    OSError: `out` cannot be written.
  """
  workdirs = list(workdirs)
  if not workdirs:
    raise PlotError('no workdirs to plot')
  labels = default_labels(workdirs) if labels is None else list(labels)
  if len(labels) != len(workdirs):
    raise PlotError(f'{len(labels)} labels for {len(workdirs)} workdirs')
  runs = [entry for label, w in zip(labels, workdirs)
          for entry in _stack_series(label, read_records(
              w, missing_ok=missing_ok))]
  _write_atomically(epath.Path(out), _render(runs, title))


def run_title(workdir) -> Optional[str]:
  """'MODEL on DATASET, step N' from the workdir's config.json and
  metrics.jsonl; None where config.json cannot say (the label is used)."""
  layout = Layout.of(workdir)
  try:
    used = json.loads(layout.config.read_text())
    steps = [r['step'] for r in read_records(layout, missing_ok=True)
             if isinstance(r.get('step'), int)]
  except (OSError, ValueError, PlotError):
    return None
  if not isinstance(used, dict) or 'model' not in used:
    return None
  return (f"{used['model']} on {used.get('dataset', '?')}"
          + (f', step {max(steps)}' if steps else ''))


def write_run_curves(workdir, title: str) -> str:
  """Redraws WORKDIR/curves.png (training calls this after each evaluation),
  titled by the run (`title`: model, dataset, step), not by its path.

  Returns:
    The path written.
  """
  layout = Layout.of(workdir)
  plot_runs([layout], layout.curves, title=title, missing_ok=True)
  return str(layout.curves)
