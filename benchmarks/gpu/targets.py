"""The GPU targets (BENCHMARKS.md, "Targets"), each read off the report as
met, not met, or not measured (and why)."""

TARGET_MODEL, TARGET_BATCH = 'alexnet_torchvision', 256
TARGETS = (  # (key, what, threshold, higher is better)
    ('bf16_vs_amp_eager', 'bfloat16 step ≥ 1.3× PyTorch AMP eager '
     f'(`{TARGET_MODEL}`, batch {TARGET_BATCH})', 1.3, True),
    ('bf16_vs_compile', 'bfloat16 step ≥ 1.0× `torch.compile` (AMP) '
     f'(`{TARGET_MODEL}`, batch {TARGET_BATCH})', 1.0, True),
    ('mfu', f'MFU ≥ 40% (bfloat16 step, `{TARGET_MODEL}`, batch '
     f'{TARGET_BATCH})', 0.40, True),
    ('cifar_epoch', 'CIFAR epoch ≤ 1 s (the main job\'s train epoch: 45,000 '
     'images at its measured rate)', 1.0, False),
)


def _target_row(report):
  rows = report['sections'].get('train_step', {}).get('configs', [])
  for row in rows:
    if (row.get('model'), row.get('batch_size'), row.get('dtype')) == (
        TARGET_MODEL, TARGET_BATCH, 'bfloat16') and 'step_ms' in row:
      return row
  return None


def _speedup(row, mode):
  for r in (row or {}).get('vs_pytorch', ()):
    if r['mode'] == mode:
      return r['speedup']
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


def evaluate(report: dict) -> list:
  """Each GPU target: met / not met / not measured (and why)."""
  row = _target_row(report)
  main = report['sections'].get('cifar_main', {})
  values = {'bf16_vs_amp_eager': _speedup(row, 'eager+amp'),
            'bf16_vs_compile': _speedup(row, 'compile+amp'),
            'mfu': (row or {}).get('mfu'),
            'cifar_epoch': main.get('full_cifar_epoch_s')}
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
  if key == 'mfu':
    return pct(value)
  if key == 'cifar_epoch':
    return f'{value:.2f} s'
  return f'{value:.2f}×'
