"""The GPU targets (BENCHMARKS.md, "Targets"), each read off the report as
met, not met, or not measured (and why)."""

TARGET_MODEL, TARGET_BATCH = 'alexnet_torchvision', 256
_STEP = f'`{TARGET_MODEL}`, batch {TARGET_BATCH}, bfloat16'
TARGETS = (  # (key, what, threshold, higher is better); issue 24's.
    ('mfu', f'MFU ≥ 30% ({_STEP}; 40% the stretch)', 0.30, True),
    ('vs_best_pytorch', f'step ≥ 1.2× the best PyTorch mode ({_STEP})', 1.2,
     True),
    ('main_warm', 'CIFAR main job ≤ 15 s start to finish, warm compilation '
     'cache (the cold time beside it)', 15.0, False),
    ('cifar_epoch', 'CIFAR-10 epoch ≤ 0.5 s (45,000 images at the main '
     'job\'s measured rate)', 0.5, False),
    ('store_vs_step', 'training from the store ≥ 80% of the step\'s own '
     f'rate (JPEG and raw, the worse; {_STEP})', 0.8, True),
    ('stack_vs_one', 'the CIFAR main job with --config.runs=8 in ≤ 1.5× the '
     'time of one run (1 epoch each, wall; issue 25)', 1.5, False),
)


def _target_row(report):
  rows = report['sections'].get('train_step', {}).get('configs', [])
  for row in rows:
    if (row.get('model'), row.get('batch_size'), row.get('dtype')) == (
        TARGET_MODEL, TARGET_BATCH, 'bfloat16') and 'step_ms' in row:
      return row
  return None


def _why_not_measured(report, row):
  """None where the figures count: a GPU, full shapes."""
  device = report['sections'].get('device', {})
  if report['smoke']:
    return '--smoke (tiny shapes)'
  if device.get('platform', (row or {}).get('device', '')[:3]) != 'gpu':
    return ('not on a GPU ('
            f"{device.get('platform') or (row or {}).get('device', '?')})")
  return None


def _store_ratio(report):
  """The worse of the JPEG and raw runs' share of the step's rate; None
  unless both were measured."""
  runs = report['sections'].get('store_training', {}).get('runs', {})
  ratios = [runs.get(e, {}).get('vs_step') for e in ('jpeg', 'raw')]
  return None if None in ratios else min(ratios)


def evaluate(report: dict) -> list:
  """Each GPU target: met / not met / not measured (and why)."""
  row = _target_row(report)
  main = report['sections'].get('cifar_main', {})
  values = {'mfu': (row or {}).get('mfu'),
            'vs_best_pytorch': (row or {}).get('speedup_vs_best_pytorch'),
            'main_warm': main.get('warm_wall_s'),
            'cifar_epoch': main.get('full_cifar_epoch_s'),
            'store_vs_step': _store_ratio(report),
            'stack_vs_one': report['sections'].get('stacked_runs', {}).get(
                'wall_ratio')}
  why_none = _why_not_measured(report, row)
  out = []
  for key, what, threshold, higher in TARGETS:
    value = values[key]
    if why_none or value is None:
      status, note = 'not measured', why_none or 'no figure (see its part)'
    else:
      met = value >= threshold if higher else value <= threshold
      status, note = ('met' if met else 'not met'), ''
    out.append({'key': key, 'target': what, 'threshold': threshold,
                'value': value, 'status': status, 'note': note})
  return out


def pct(x) -> str:
  return '—' if x is None else f'{100 * x:.1f}%'


def value_text(key, value) -> str:
  """A target's figure as the report prints it."""
  if value is None:
    return '—'
  if key in ('mfu', 'store_vs_step'):
    return pct(value)
  if key in ('cifar_epoch', 'main_warm'):
    return f'{value:.2f} s'
  return f'{value:.2f}×'
