"""Many runs in one process: seeds and a hyperparameter sweep trained
together by one compiled step over a stacked train state (`jax.vmap`).

`plan` turns `--config.runs=N` and `--config.sweep` into one `Run` per
stacked slot: run i of a sweep point takes seed `seed + i` (init, dropout,
augmentation and data order), so run 0 of `runs=1` is the single run of
before. Only values the step can take as numbers vary inside it
(`SWEEPABLE`); anything that changes shapes or the program (batch size,
model, image size) is refused by name. `summary` gives each split's mean,
standard deviation and a 95% confidence interval over the runs that
finished.
"""

import dataclasses
import itertools
import math
from typing import Optional

from alexnet_jax.errors import ConfigError

# What may differ between the runs of one compiled step: the optimizer's
# numbers (traced into the update; the schedule's shape is shared) and the
# dropout rate (traced into the model, `layers.Dropout`).
OPTIMIZER_FIELDS = ('learning_rate', 'weight_decay', 'momentum')
SWEEPABLE = OPTIMIZER_FIELDS + ('dropout_rate',)
SWEEP_MODES = ('cross', 'zip')

@dataclasses.dataclass(frozen=True)
class Run:
  """One slot of the stack: its seed and its values of the sweep's fields."""
  index: int
  seed: int
  values: dict  # field -> value, every SWEEPABLE field.

  def optimizer_values(self) -> dict:
    return {k: self.values[k] for k in OPTIMIZER_FIELDS}

  def describe(self) -> str:
    swept = ', '.join(f'{k}={v:g}' for k, v in self.values.items())
    return f'run {self.index} (seed {self.seed}, {swept})'


def parse_sweep(text: str) -> dict:
  """'learning_rate=0.01,0.02 weight_decay=0,5e-4' -> {field: [values]}.

  Raises ConfigError naming the bad part and what is valid."""
  sweep = {}
  for part in text.replace(';', ' ').split():
    field, eq, values = part.partition('=')
    if not eq or not values:
      raise ConfigError(
          f'--config.sweep: {part!r} is not FIELD=V1,V2,... (e.g. '
          "'learning_rate=0.005,0.01,0.02 momentum=0.9,0.95')")
    if field not in SWEEPABLE:
      raise ConfigError(
          f'--config.sweep: {field!r} cannot vary inside one compiled step; '
          f'the fields that can: {", ".join(SWEEPABLE)} (a batch size, model '
          'or image size needs runs of its own)')
    if field in sweep:
      raise ConfigError(f'--config.sweep: {field} is given twice')
    try:
      sweep[field] = [float(v) for v in values.split(',')]
    except ValueError:
      raise ConfigError(f'--config.sweep: {field} values {values!r} are not '
                        'numbers') from None
  return sweep


def plan(runs: int, sweep_text: str, mode: str, base: dict,
         seed: int) -> list:
  """The stack's runs: each point of the sweep (`mode` 'cross': every
  combination; 'zip': the lists side by side) times `runs` seeds."""
  if mode not in SWEEP_MODES:
    raise ConfigError(f'--config.sweep_mode: {mode!r} is not one of '
                      f'{", ".join(SWEEP_MODES)}')
  sweep = parse_sweep(sweep_text)
  fields = list(sweep)
  if mode == 'zip':
    lengths = {len(v) for v in sweep.values()}
    if len(lengths) > 1:
      raise ConfigError(
          '--config.sweep with sweep_mode=zip needs lists of one length; got '
          + ', '.join(f'{k}: {len(v)}' for k, v in sweep.items()))
    points = list(zip(*sweep.values()))
  else:
    points = list(itertools.product(*sweep.values()))
  out = []
  for point in points or [()]:
    for i in range(runs):
      values = {k: base[k] for k in SWEEPABLE}
      values.update(zip(fields, point))
      out.append(Run(len(out), seed + i, values))
  return out


def points(plan: list) -> list:
  """[(values, [run indices])]: the sweep's points in order, each with the
  seeds' runs that share its values (the runs a spread is taken over)."""
  out = {}
  for r in plan:
    out.setdefault(tuple(sorted(r.values.items())), []).append(r.index)
  return [(dict(k), v) for k, v in out.items()]


def is_multi(runs: int, sweep_text: str) -> bool:
  return runs > 1 or bool(sweep_text.strip())


def summary(values: list) -> Optional[dict]:
  """{'mean', 'std' (n-1), 'ci95': (low, high), 'n'} of finite values:
  the interval is Student's t over the n runs (seeds), two-sided 95%."""
  xs = [v for v in values if v is not None and math.isfinite(v)]
  if not xs:
    return None
  n = len(xs)
  mean = sum(xs) / n
  if n == 1:
    return {'mean': mean, 'std': None, 'ci95': None, 'n': 1}
  std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
  from scipy import stats  # jax depends on scipy; imported when needed
  half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
  return {'mean': mean, 'std': std, 'ci95': (mean - half, mean + half),
          'n': n}


def describe_summary(s: Optional[dict], scale: float = 100.,
                     unit: str = '%') -> str:
  """'68.12 ± 0.41% (95% CI 67.61..68.63, 4 runs)'."""
  if s is None:
    return 'no finished run'
  if s['std'] is None:
    return f'{scale * s["mean"]:.2f}{unit} (1 run)'
  lo, hi = s['ci95']
  return (f'{scale * s["mean"]:.2f} ± {scale * s["std"]:.2f}{unit} (95% CI '
          f'{scale * lo:.2f}..{scale * hi:.2f}, {s["n"]} runs)')
