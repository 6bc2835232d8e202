"""Learning-curve PNGs from metrics.jsonl: hand-written runs (with a line torn
by kill -9) through `plot_runs` and the CLI, the CLI's one-line errors, and
the curves of a short real training run. Each PNG is decoded and checked for
its size and for being a drawing, not a blank canvas."""

import collections
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from alexnet_jax import train
from alexnet_jax.runtime import curves
from configs import cifar10
from tests.conftest import REPO

PLOT = [sys.executable, '-m', 'alexnet_jax.plot']
ORANGE = (1., 0x7f / 255, 0x0e / 255)  # Matplotlib's C1: the second run.


def write_run(workdir, num_logs=40, seed=0, torn=True):
  """metrics.jsonl as training writes it: train every 5 steps, val every 50,
  test at the end, then (if `torn`) half a line, as kill -9 leaves."""
  workdir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  rate = 1.5 + seed  # Runs differ in how fast they learn.
  lines = []
  for i in range(1, num_logs + 1):
    step, frac = 5 * i, i / num_logs
    lines.append(json.dumps({
        'step': step, 'split': 'train', 'epoch': step / 35,
        'loss': 2.3 * math.exp(-rate * frac) + 0.05 * rng.random(),
        'top1': 0.1 + 0.6 * frac * rate / 2.5, 'top5': 0.5 + 0.4 * frac,
        'lr': 0.05 * 0.5 * (1 + math.cos(math.pi * frac)),
        'images_per_sec': None if i == 1 else 900. + rng.random()}))
    if step % 50 == 0:
      lines.append(json.dumps({
          'step': step, 'split': 'val', 'epoch': step / 35,
          'loss': 2.4 * math.exp(-rate * frac * 0.8),
          'top1': 0.1 + 0.5 * frac * rate / 2.5, 'top5': 0.5 + 0.3 * frac}))
  lines.append(json.dumps({'step': 5 * num_logs, 'split': 'test',
                           'epoch': 5 * num_logs / 35, 'loss': 1.1,
                           'top1': 0.4 + 0.05 * seed, 'top5': 0.85}))
  text = '\n'.join(lines) + '\n'
  if torn:
    text += '{"step": 205, "split": "tra'
  (workdir / 'metrics.jsonl').write_text(text)
  return workdir


def read_png(path):
  """The PNG as an (H, W, 3) float array, checked to be a real drawing."""
  pixels = mpimg.imread(str(path))[..., :3]
  assert pixels.shape == (450, 1500, 3)  # (15, 4.5) inches at 100 dpi.
  non_white = (pixels < 0.98).any(axis=-1).mean()
  rgb = np.round(pixels * 255).astype(np.uint32)
  colours = len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))
  assert non_white > 0.01, f'only {non_white:.2%} of the pixels are drawn'
  assert pixels.std() > 0.05
  assert colours > 50, f'only {colours} distinct colours'
  return pixels


def orange_pixels(pixels):
  return int((np.abs(pixels - ORANGE).max(axis=-1) < 0.05).sum())


def run_plot(args, env, cwd=REPO):
  return subprocess.run(PLOT + [str(a) for a in args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


def test_torn_line_is_skipped(tmp_path):
  workdir = write_run(tmp_path / 'a', num_logs=40)
  records = curves.read_records(workdir)
  # 40 train, 4 val, 1 test; the half line is not a record.
  assert len(records) == 45
  assert [r['split'] for r in records].count('val') == 4
  assert records[-1]['split'] == 'test'


def test_two_runs_overlay_differs_from_one(tmp_path):
  a = write_run(tmp_path / 'a', seed=0)
  b = write_run(tmp_path / 'b', seed=1)
  curves.plot_runs([a], tmp_path / 'one.png')
  curves.plot_runs([a, b], tmp_path / 'two.png', labels=['slow', 'fast'])
  one = read_png(tmp_path / 'one.png')
  two = read_png(tmp_path / 'two.png')
  assert (np.abs(one - two).max(axis=-1) > 0.1).mean() > 0.005
  # The second run's colour is drawn only when it is there.
  assert orange_pixels(one) == 0
  assert orange_pixels(two) > 500
  # Written atomically: nothing but the PNGs (no temporary files) is left.
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'one.png',
                                                        'two.png']


def test_default_labels_are_last_components_unless_they_collide(tmp_path):
  assert curves.default_labels([tmp_path / 'x' / 'run1', tmp_path / 'run2/']) \
      == ['run1', 'run2']
  a, b = tmp_path / 'x' / 'run', tmp_path / 'y' / 'run'
  assert curves.default_labels([a, b, tmp_path / 'z']) == [str(a), str(b), 'z']


def test_label_count_must_match(tmp_path):
  a = write_run(tmp_path / 'a')
  with pytest.raises(curves.PlotError, match='2 labels for 1 workdirs'):
    curves.plot_runs([a], tmp_path / 'out.png', labels=['x', 'y'])
  assert not (tmp_path / 'out.png').exists()


def test_run_without_records_says_no_metrics_yet(tmp_path):
  """Training may draw before its first record lands: a figure, not an error."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'metrics.jsonl').write_text('{"step": 5, "spl')  # Only a torn line.
  nothing = tmp_path / 'nothing'
  nothing.mkdir()  # No metrics.jsonl at all.
  for workdir in (empty, nothing):
    assert curves.write_run_curves(str(workdir), 'a run') == str(workdir / 'curves.png')
    pixels = read_png(workdir / 'curves.png')
    assert orange_pixels(pixels) == 0
  # Beside a run that has records, the empty one is a legend entry only.
  a = write_run(tmp_path / 'a')
  curves.plot_runs([a, empty], tmp_path / 'both.png')
  read_png(tmp_path / 'both.png')


def redraw_work(workdir, monkeypatch):
  """What one `write_run_curves` of `workdir` does, counted: figure draws
  (and their layout engines), metrics reads, paths and texts drawn, tick
  updates and text extents measured (what a layout engine multiplies)."""
  from matplotlib import axis, figure, text  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  counts, engines = collections.Counter(), []

  def count(owner, name, label):
    original = getattr(owner, name)

    def counted(*args, **kwargs):
      counts[label] += 1
      if label == 'figure draws':
        engines.append(args[0].get_layout_engine())
      return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)

  count(figure.Figure, 'draw', 'figure draws')
  count(curves, 'read_records', 'metrics reads')
  count(backend_agg.RendererAgg, 'draw_path', 'paths drawn')
  count(backend_agg.RendererAgg, 'draw_text', 'texts drawn')
  count(axis.Axis, '_update_ticks', 'tick updates')
  count(text.Text, 'get_window_extent', 'text extents')
  read_png(curves.write_run_curves(str(workdir), 'a run'))
  monkeypatch.undo()
  return counts, engines


def test_write_run_curves_does_the_same_work_for_thousands_of_records(
    tmp_path, monkeypatch):
  """Training waits for this after every evaluation, so a redraw must not
  grow with the run: 5,000 records cost the same draws, tick updates and
  text measurements as 40 (only the lines' points grow), one figure drawn
  once from one read of metrics.jsonl, and no layout engine (one measures
  every tick label again on each redraw: 3x the text extents here). Counted,
  not timed: a count is the same on a busy 2-core machine."""
  small, small_engines = redraw_work(write_run(tmp_path / 's', num_logs=40),
                                     monkeypatch)
  big, big_engines = redraw_work(write_run(tmp_path / 'b', num_logs=5000),
                                 monkeypatch)
  assert big == small, (big, small)
  assert big['figure draws'] == 1 and big['metrics reads'] == 1
  assert small_engines == big_engines == [None]


def test_cli_overlays_runs_and_prints_the_path(tmp_path, subprocess_env):
  a = write_run(tmp_path / 'a', seed=0)
  b = write_run(tmp_path / 'b', seed=1)
  out = tmp_path / 'ab.png'
  done = run_plot([a, b, '--out', out, '--labels', 'slow,fast'],
                  subprocess_env)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == str(out)
  assert orange_pixels(read_png(out)) > 500

  # One workdir: WORKDIR/curves.png by default.
  done = run_plot([a], subprocess_env)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == str(a / 'curves.png')
  assert orange_pixels(read_png(a / 'curves.png')) == 0

  # Several: curves.png in the current directory.
  here = tmp_path / 'here'
  here.mkdir()
  done = run_plot([a, b], subprocess_env, cwd=here)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == 'curves.png'
  read_png(here / 'curves.png')


@pytest.mark.parametrize('what', ['no_workdir', 'no_metrics', 'labels',
                                  'unwritable'])
def test_cli_errors_are_one_line(tmp_path, subprocess_env, what):
  good = write_run(tmp_path / 'good')
  out = tmp_path / 'out.png'
  args, expected = {
      'no_workdir': ([good, tmp_path / 'nope'],
                     f'workdir {tmp_path / "nope"} does not exist'),
      'no_metrics': ([tmp_path], f'{tmp_path / "metrics.jsonl"} does not '
                     'exist'),
      'labels': ([good, '--labels', 'x,y'], '2 labels for 1 workdirs'),
      'unwritable': ([good], f'cannot write {tmp_path / "no" / "out.png"}'),
  }[what]
  if what == 'unwritable':
    out = tmp_path / 'no' / 'out.png'  # A folder that does not exist.
  done = run_plot(list(args) + ['--out', out], subprocess_env)
  assert done.returncode == 2
  assert done.stdout == ''
  assert 'Traceback' not in done.stderr
  lines = done.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr
  assert expected in lines[0]
  assert not out.exists()
  assert not list(tmp_path.glob('**/.*.tmp'))


@pytest.mark.slow
def test_curves_of_a_real_training_run(cifar_dir, tmp_path, subprocess_env):
  """20 steps of the tiny net on real CIFAR-10, validated every 4 steps."""
  config = cifar10.get_config()
  config.update(model='alexnet_tiny', data_dir=cifar_dir, batch_size=128,
                num_epochs=0, num_steps=20, log_every_steps=5,
                eval_every_epochs=0.1, checkpoint_every_steps=0)
  workdir = tmp_path / 'w'
  train.train_and_evaluate(config, str(workdir))
  splits = [r['split'] for r in curves.read_records(workdir)]
  assert splits.count('train') >= 4 and splits.count('val') >= 3
  assert splits.count('test') == 1
  # Training drew its own curves; the CLI redraws them from metrics.jsonl.
  read_png(workdir / 'curves.png')
  (workdir / 'curves.png').unlink()
  done = run_plot([workdir], subprocess_env)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == str(workdir / 'curves.png')
  read_png(workdir / 'curves.png')
