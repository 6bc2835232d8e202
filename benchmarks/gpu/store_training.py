"""Part 5 of the GPU check: training from the paper's store, JPEG and raw,
against the step alone, so "never input-bound on one GPU" is a measurement.

Writes photos (scikit-image's, cropped and scaled at random) as a folder of
JPEGs on this machine, makes the 256x256 store of it in both encodings
(`alexnet_jax.data.store_writer`), then runs the real command
(`python -m alexnet_jax.main --config=configs/imagenet_torchvision.py
--config.dataset=store`) on each for a fixed number of steps, in its own
process, and reads the train rate the run logged (img/s, medians of its log
windows, the compile excluded). The step alone is `benchmarks.train_step`'s
step of the same model, batch, size and dtype, timed here. The ratio
(`store_vs_step`, per encoding) is the share of the step's own rate the run
keeps: 1.0 means the input never held a step back."""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

from benchmarks import image_pipeline
from benchmarks import train_step
from benchmarks.gpu import cifar_main
from benchmarks.gpu import part

# The run's shape: (model, batch, image size, bfloat16, steps, log every,
# train images); the GPU's is the target step's.
SHAPES = {'gpu': ('alexnet_torchvision', 256, 224, True, 120, 20, 1024),
          'smoke': ('alexnet_tiny', 8, 32, False, 6, 2, 24)}
ENCODINGS = ('jpeg', 'raw')


def _stores(root: pathlib.Path, train_images: int, test_images: int) -> dict:
  """{encoding: store directory}, train and test splits of fresh JPEGs."""
  from alexnet_jax.data import store_writer  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import streaming  # pylint: disable=g-import-not-at-top
  sources = {}
  for split, count in (('train', train_images), ('test', test_images)):
    image_pipeline.write_jpegs(str(root / split), count)
    sources[split] = streaming.ImageFolderSource.scan(str(root / split))
  roots = {}
  for encoding in ENCODINGS:
    roots[encoding] = root / f'store_{encoding}'
    store_writer.write_store(sources, roots[encoding],
                             sources['train'].classes, encoding=encoding,
                             log=lambda m: None, shard_images=128)
  return roots


def _step_alone(model, batch, size, half) -> dict:
  """The train step on a fixed batch: median of 20 timed steps."""
  args = argparse.Namespace(model=model, batch_size=batch, image_size=size,
                            half_precision=half)
  one, compile_s, _ = train_step.jax_step(args)
  for _ in range(3):
    one()
  times = []
  for _ in range(20):
    begun = time.perf_counter()
    one()
    times.append(time.perf_counter() - begun)
  step_s = statistics.median(times)
  return {'step_ms': 1e3 * step_s, 'images_per_sec': batch / step_s,
          'compile_s': compile_s}


def _command(store_dir, workdir, cache, mode) -> list:
  model, batch, size, half, steps, log_every, _ = SHAPES[mode]
  workers = 0 if mode == 'smoke' else max((os.cpu_count() or 4) - 2, 2)
  return [sys.executable, '-m', 'alexnet_jax.main',
          '--config=configs/imagenet_torchvision.py', f'--workdir={workdir}',
          '--config.dataset=store', f'--config.data_dir={store_dir}',
          f'--config.model={model}', f'--config.batch_size={batch}',
          f'--config.eval_batch_size={batch}', f'--config.image_size={size}',
          f'--config.half_precision={half}', f'--config.num_steps={steps}',
          f'--config.log_every_steps={log_every}', '--config.val_examples=0',
          f'--config.data_workers={workers}',
          f'--config.compilation_cache={cache}']


def _run(encoding, store_dir, root, mode, timeout, out_dir, clock) -> dict:
  workdir = root / f'run_{encoding}'
  cmd = _command(store_dir, workdir, root / 'jax_cache', mode)
  result = {'command': ' '.join(cmd[1:]).replace(str(root), 'TMP')}
  clock.say(f'  {encoding}: {result["command"]}')
  log_path = out_dir / f'store_training_{encoding}.log'
  result.update(cifar_main.launch(cmd, log_path, timeout))
  if result.get('timed_out') or result['returncode'] != 0:
    result['log_tail'] = log_path.read_text(errors='replace')[-2500:]
    raise part.PartFailed(f'training from the {encoding} store '
                          + ('timed out' if result.get('timed_out') else
                             f"exited {result['returncode']}")
                          + f'; its log: {log_path}', result)
  records = [json.loads(l) for l in
             (workdir / 'metrics.jsonl').read_text().splitlines() if l]
  rates = [r['images_per_sec'] for r in records
           if r.get('split') == 'train' and r.get('images_per_sec')]
  result['images_per_sec'] = statistics.median(rates) if rates else None
  result['rate_windows'] = len(rates)
  return result


def measure(mode: str, clock: part.Clock, budget_s: float,
            out_dir: pathlib.Path) -> dict:
  model, batch, size, half, steps, _, images = SHAPES[mode]
  begun = time.monotonic()
  out = {'model': model, 'batch_size': batch, 'image_size': size,
         'dtype': 'bfloat16' if half else 'float32', 'steps': steps,
         'train_images': images, 'runs': {}}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    roots = _stores(root, images, batch)
    out['stores_s'] = time.monotonic() - begun
    clock.say(f"  stores written in {out['stores_s']:.0f} s")
    out['step_alone'] = _step_alone(model, batch, size, half)
    clock.say(f"  the step alone: {out['step_alone']['step_ms']:.2f} ms, "
              f"{out['step_alone']['images_per_sec']:,.0f} img/s")
    for encoding in ENCODINGS:
      left = min(budget_s - (time.monotonic() - begun), clock.left())
      try:
        run = _run(encoding, roots[encoding], root, mode, max(left, 10.),
                   out_dir, clock)
      except part.PartFailed as e:
        out['runs'][encoding] = e.partial
        raise part.PartFailed(str(e), out) from None
      rate = run['images_per_sec']
      run['vs_step'] = (rate / out['step_alone']['images_per_sec']
                        if rate else None)
      out['runs'][encoding] = run
      clock.say(f'  {encoding}: ' + ('no rate logged' if not rate else
                                     f"{rate:,.0f} img/s, "
                                     f"{100 * run['vs_step']:.0f}% of the "
                                     'step alone'))
  return out
