"""Part 5 of the GPU check: many runs in one (issue 25): the main job with
`--config.runs=8` against the same job with one run, each its own process
with its own empty compilation cache, the real command: wall times and their
ratio (the target: 8 runs in at most 1.5x the time of one), the train rates
(images/s over all runs) and the stack's mean test top-1."""

import os
import pathlib
import tempfile
import time

from benchmarks.gpu import cifar_main
from benchmarks.gpu import part

RUNS = {'gpu': 8, 'smoke': 2}


def _job(name, extra, cifar_dir, mode, root, timeout, out_dir, clock):
  workdir = root / name
  log_path = out_dir / f'stacked_runs_{name}.log'
  # --smoke: the tiny net (the path, not the figures, is what CI checks).
  tiny = ['--config.model=alexnet_tiny'] if mode == 'smoke' else []
  cmd = cifar_main.main_command(
      workdir, cifar_dir and os.path.abspath(cifar_dir), mode,
      0 if mode == 'smoke' else 1) + tiny + extra + [
          f'--config.compilation_cache={root / name}_cache']
  result = {'command': ' '.join(cmd[1:]).replace(str(root), 'TMP')}
  clock.say(f'  {name}: {result["command"]} (timeout {timeout:.0f} s)')
  result.update(cifar_main.launch(cmd, log_path, timeout))
  log = log_path.read_text(errors='replace')
  result.update(cifar_main.read_run(workdir, log, result['wall_s']))
  if result.get('timed_out') or result['returncode'] != 0:
    result['log_tail'] = log[-2500:]
    raise part.PartFailed(f'the main job ({name}) did not finish; its log: '
                          f'{log_path}', result)
  clock.say(f"  {name}: {result['wall_s']:.1f} s")
  return result


def measure(mode: str, clock: part.Clock, budget_s: float, cifar_dir: str,
            out_dir: pathlib.Path) -> dict:
  runs = RUNS[mode]
  begun = time.monotonic()
  out = {'runs': runs, 'epochs': 1 if mode != 'smoke' else None}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    left = lambda: max(min(budget_s - (time.monotonic() - begun),
                           clock.left()), 10.)
    # One run takes about a third of the part, the stack of 8 the rest.
    one = _job('one_run', [], cifar_dir, mode, root, left() * 0.4, out_dir,
               clock)
    out['one'] = one
    stack = _job(f'runs{runs}', [f'--config.runs={runs}'], cifar_dir, mode,
                 root, left(), out_dir, clock)
    out['stack'] = stack
  out['wall_ratio'] = stack['wall_s'] / one['wall_s']
  if one.get('train_images_per_sec') and stack.get('train_images_per_sec'):
    out['train_rate_ratio'] = (stack['train_images_per_sec'] /
                               one['train_images_per_sec'])
  clock.say(f"  {runs} runs take {out['wall_ratio']:.2f}x one run's time")
  return out
