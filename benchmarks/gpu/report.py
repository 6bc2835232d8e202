"""The GPU check's report: OUT/gpu_check.json (everything) and
OUT/gpu_check.md (the tables for BENCHMARKS.md), written after every part so
a run cut short keeps what it measured. `.ci/run` greps the markdown for the
input paths' table."""

import json
import pathlib
import time

from benchmarks.gpu import targets as targets_lib


def _ms(x):
  return '—' if x is None else f'{x:.2f} ms'


def _last_line(text: str) -> str:
  return (text.strip().splitlines() or [''])[-1]


def _header(report: dict) -> list:
  d = report['sections'].get('device', {})
  versions = d.get('versions', {})
  return [f"### GPU check, {report['started'][:10]}"
          + (' (--smoke, CPU: shapes too small to mean anything)'
             if report['smoke'] else ''), '',
          f"Device: {d.get('device_kind', '?')} ({d.get('platform', '?')}, "
          f"{d.get('device_count', '?')} visible), "
          f"{d.get('nvidia_smi', 'no nvidia-smi')}; {d.get('cpu_count')} "
          f"CPU cores; Python {d.get('python')}, JAX {versions.get('jax')}, "
          f"flax {versions.get('flax')}, PyTorch {versions.get('torch')}, "
          f"DALI {versions.get('nvidia-dali-cuda130', 'not installed')}. "
          f"`{report['command']}`, {report['wall_s']:.0f} s in all.", '']


def _failed_parts(sections: dict) -> list:
  lines = []
  for name, part in sections.items():
    if part.get('status') in ('error', 'skipped'):
      lines += [f"**{name}: {part['status']}**: " + _last_line(
          part.get('error', part.get('reason', ''))), '']
  return lines


def _pytorch_modes(configs) -> list:
  """The PyTorch modes any configuration ran, in order, '+amp' aside."""
  modes = []
  for c in configs:
    for r in c.get('vs_pytorch', ()):
      base = r['mode'].replace('+amp', '')
      if base not in modes:
        modes.append(base)
  return modes


def _train_row(c: dict, modes: list) -> str:
  head = f"`{c['model']}` {c['batch_size']}, {c['dtype']}"
  if 'step_ms' not in c:
    why = c.get('skipped') or _last_line(c.get('error', ''))
    return f'| {head} | {why} |' + ' |' * (1 + len(modes))
  by_mode = {r['mode'].replace('+amp', ''): r for r in c.get('vs_pytorch', ())}
  cells = []
  for m in modes:
    r = by_mode.get(m)
    cells.append('—' if r is None else
                 f"{_ms(r['step_ms'])} (**{r['speedup']:.2f}×**, MFU "
                 f"{targets_lib.pct(r.get('mfu'))})")
  return (f"| {head} | {_ms(c['step_ms'])} ({c['images_per_sec']:,.0f} "
          f"img/s) | {targets_lib.pct(c['mfu'])} | " + ' | '.join(cells)
          + ' |')


def _train_table(configs: list) -> list:
  if not configs:
    return []
  modes = _pytorch_modes(configs)
  lines = ['| model, batch, dtype | alexnet_jax | MFU | '
           + ' | '.join(f'PyTorch {m}' for m in modes) + ' |',
           '| --- | --- | --- |' + ' --- |' * len(modes)]
  lines += [_train_row(c, modes) for c in configs]
  return lines + [
      '', 'Ratios: PyTorch\'s step time / ours (> 1: ours is faster), '
      'medians of interleaved steps; MFU: XLA\'s FLOP count of our '
      'step / step time / the datasheet peak (TF32 for float32); '
      'bfloat16 rows run PyTorch under AMP.', '']


def _cifar_table(main: dict) -> list:
  if 'wall_s' not in main:
    return []
  top1 = main.get('test_top1')
  warm = main.get('warm_wall_s')
  lines = ['| CIFAR main job | data | steps per call | wall, cold cache | '
           'wall, warm cache | train epoch (this data) | train epoch at '
           '45,000 images | test top-1 |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |',
           f"| `configs/cifar10.py`, {main.get('epochs_done', 0):.1f} "
           f"epochs | {main.get('data', '?')} | {main.get('pace') or '?'} | "
           f"{main['wall_s']:.1f} s | "
           + ('—' if warm is None else f'{warm:.1f} s') + ' | '
           + ' | '.join('—' if main.get(k) is None else f'{main[k]:.2f} s'
                        for k in ('train_epoch_s', 'full_cifar_epoch_s'))
           + f" | {'—' if top1 is None else targets_lib.pct(top1)} |", '']
  if main.get('note'):
    lines += [main['note'] + '.', '']
  if main.get('warm_error'):
    lines += ['The warm run failed: ' + _last_line(main['warm_error']), '']
  return lines


def _stack_table(stack: dict) -> list:
  if 'wall_ratio' not in stack:
    return []
  one, many, n = stack['one'], stack['stack'], stack['runs']
  rate = lambda r: ('—' if r.get('train_images_per_sec') is None else
                    f"{r['train_images_per_sec']:,.0f}")
  top1 = many.get('test_top1')
  return ['| many runs in one (CIFAR main job) | wall | train images/s (all '
          'runs) | test top-1 (the mean) |', '| --- | --- | --- | --- |',
          f"| one run | {one['wall_s']:.1f} s | {rate(one)} | "
          f"{targets_lib.pct(one.get('test_top1'))} |",
          f"| `--config.runs={n}` | {many['wall_s']:.1f} s "
          f"({stack['wall_ratio']:.2f}×) | {rate(many)} | "
          f"{targets_lib.pct(top1)} |", '']


def _profile_table(prof: dict) -> list:
  if not prof.get('top'):
    return []
  xla = prof.get('xla_ms')
  lines = [f"XLA's profile of the `{prof['model']}` step, batch "
           f"{prof['batch_size']}, {prof['dtype']} ({prof['steps_traced']} "
           'steps traced; ms per step'
           + (f', {xla:.2f} ms in XLA' if xla else '') + '): by kind, '
           + ', '.join(f'{k} {v:.2f}' for k, v in prof['by_kind_ms'].items())
           + '.', '', '| op | ms per step | share | what it computes |',
           '| --- | --- | --- | --- |']
  lines += [f"| {r['op']} | {r['ms']:.3f} | {targets_lib.pct(r['share'])} | "
            f"`{r['what']}` |" for r in prof['top']]
  return lines + ['']


def _store_table(store: dict) -> list:
  alone = store.get('step_alone')
  if not alone:
    return []
  lines = [f"| training from the store (`{store['model']}`, batch "
           f"{store['batch_size']}, {store['image_size']}², {store['dtype']})"
           ' | images/s | of the step alone |', '| --- | --- | --- |',
           f"| the step alone | {alone['images_per_sec']:,.0f} | 100% |"]
  for encoding, run in store.get('runs', {}).items():
    rate = run.get('images_per_sec')
    lines.append(f'| store ({encoding}), the whole run | '
                 + ('—' if rate is None else f'{rate:,.0f}') + ' | '
                 + targets_lib.pct(run.get('vs_step')) + ' |')
  return lines + ['']


def _pipeline_table(pipe: dict) -> list:
  if not pipe.get('images_per_sec'):
    return []
  lines = ['| input path | images/s |', '| --- | --- |']
  lines += [f'| {k} | {v:,.0f} |' for k, v in pipe['images_per_sec'].items()]
  return lines + [''] + [f'{n}.' for n in pipe.get('notes', ())] + ['']


def _targets_table(targets: list) -> list:
  lines = ['| GPU target | value | status |', '| --- | --- | --- |']
  for t in targets:
    lines.append(f"| {t['target']} | "
                 f"{targets_lib.value_text(t['key'], t['value'])} | "
                 f"**{t['status']}**" + (f" ({t['note']})" if t['note'] else '')
                 + ' |')
  return lines


def markdown(report: dict) -> str:
  """The tables for BENCHMARKS.md."""
  s = report['sections']
  lines = (_header(report) + _failed_parts(s)
           + _train_table(s.get('train_step', {}).get('configs', []))
           + _profile_table(s.get('step_profile', {}))
           + _cifar_table(s.get('cifar_main', {}))
           + _stack_table(s.get('stacked_runs', {}))
           + _store_table(s.get('store_training', {}))
           + _pipeline_table(s.get('input_pipeline', {}))
           + _targets_table(report.get('targets', ())))
  return '\n'.join(lines) + '\n'


def write(report: dict, out: pathlib.Path):
  """Both files, the targets evaluated on what is measured so far."""
  report['wall_s'] = time.monotonic() - report['_start']
  report['targets'] = targets_lib.evaluate(report)
  clean = {k: v for k, v in report.items() if not k.startswith('_')}
  (out / 'gpu_check.json').write_text(json.dumps(clean, indent=2,
                                                 default=str) + '\n')
  (out / 'gpu_check.md').write_text(markdown(report))
