"""The mutation check: is each promised behaviour guarded by a test?

  python -m tests.mutation               every mutant in tests/mutants.py
  python -m tests.mutation --sample 6    six drawn at random (the seed is
                                         printed; --seed repeats a draw)
  python -m tests.mutation --only NAME   one mutant (repeatable)
  python -m tests.mutation --list        the mutants and what they break
  python -m tests.mutation --check       only that each mutant still fits
                                         its file (no tests run)

Each mutant is a small, plausible bug put into one file of a copy of the
checkout (the package, configs, benchmarks, launchers and tests; `../shared`
linked beside it, as beside the checkout). The tests the mutant names run
against the copy, from the copy's root, so everything they import or start
is the mutated code; a mutant that names no tests gets the whole fast tier.
A mutant is killed when those tests fail, survives when they pass. Every
mutant must be killed: exit status 1 when one survives, 2 when the list is
stale (a mutant's text is not in its file exactly once, or its tests are
not collected: a renamed test must not turn into a silent pass).
"""

import argparse
import dataclasses
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# What the copy holds: everything the tests import, run or read.
COPIED = ('alexnet_jax', 'configs', 'benchmarks', 'launch', 'tests', 'docs',
          'README.md', 'BENCHMARKS.md', 'pytest.ini', 'pyproject.toml',
          'requirements.txt', 'requirements-train.txt',
          'requirements-parity.txt', 'requirements-dali.txt', '.dockerignore',
          '.ci')
# pytest: no tests collected / usage error (a stale test id).
_STALE = {4, 5}


@dataclasses.dataclass(frozen=True)
class Mutant:
  """`old` (exactly once in `path`) becomes `new`: a bug in `behaviour`.

  `tests`: pytest arguments (files, node ids, `-k EXPR`) whose failure
  kills it; slow-tier tests need `--full` among them.
  """
  name: str
  behaviour: str
  path: str
  old: str
  new: str
  tests: tuple = ()


class StaleMutant(Exception):
  """The list no longer fits the code."""


def copy_checkout(into: pathlib.Path) -> pathlib.Path:
  """The checkout's files the tests need, under `into`/repo, with
  `into`/shared pointing at the real ../shared."""
  root = into / 'repo'
  root.mkdir()
  skip = shutil.ignore_patterns('__pycache__', '.pytest_cache', '*.pyc')
  for name in COPIED:
    src = REPO / name
    if src.is_dir():
      shutil.copytree(src, root / name, ignore=skip, symlinks=True)
    elif src.exists():
      shutil.copy2(src, root / name)
  shared = REPO.parent / 'shared'
  if shared.exists():
    (into / 'shared').symlink_to(shared)
  return root


def apply(root: pathlib.Path, mutant: Mutant) -> str:
  """Writes the mutant into the copy; returns the original text."""
  path = root / mutant.path
  if not path.is_file():
    raise StaleMutant(f'{mutant.name}: {mutant.path} does not exist')
  text = path.read_text()
  if text.count(mutant.old) != 1:
    raise StaleMutant(f'{mutant.name}: its text occurs {text.count(mutant.old)}'
                      f' times in {mutant.path}, not once')
  path.write_text(text.replace(mutant.old, mutant.new))
  return text


def run_tests(root: pathlib.Path, mutant: Mutant, timeout: float):
  """(pytest's exit status or 'timeout', seconds, the output's tail)."""
  args = list(mutant.tests) or []
  workers = ['-n', '0'] if args else []  # The whole fast tier: xdist's 2.
  env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE='1')
  env.pop('PYTEST_ADDOPTS', None)
  command = [sys.executable, '-m', 'pytest', '-x', '-q', '-p',
             'no:cacheprovider', *workers, *args]
  start = time.monotonic()
  try:
    done = subprocess.run(command, cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return 'timeout', time.monotonic() - start, ''
  tail = '\n'.join((done.stdout + done.stderr).splitlines()[-15:])
  return done.returncode, time.monotonic() - start, tail


def check(root: pathlib.Path, mutant: Mutant, timeout: float) -> dict:
  """Applies, runs and reverts one mutant: its verdict."""
  original = apply(root, mutant)
  try:
    status, seconds, tail = run_tests(root, mutant, timeout)
  finally:
    (root / mutant.path).write_text(original)
  if status in _STALE:
    raise StaleMutant(f'{mutant.name}: its tests are not collected '
                      f'(pytest exit status {status}):\n{tail}')
  verdict = ('killed' if status == 1 or status == 'timeout' else
             'survived' if status == 0 else 'error')
  by = next((line.split()[1] for line in tail.splitlines()
             if line.startswith(('FAILED ', 'ERROR '))), 'the timeout' if
            status == 'timeout' else '')
  return {'name': mutant.name, 'verdict': verdict, 'status': status,
          'seconds': seconds, 'tail': tail, 'by': by}


def check_fits(mutants) -> int:
  """0 when every mutant's text is in its file exactly once and the names
  are unique; else 2, each misfit named."""
  bad = [f'{m.name}: {m.path} holds its text '
         f'{(REPO / m.path).read_text().count(m.old) if (REPO / m.path).is_file() else 0}'
         ' times, not once' for m in mutants
         if not (REPO / m.path).is_file() or
         (REPO / m.path).read_text().count(m.old) != 1]
  names = [m.name for m in mutants]
  bad += [f'{n}: named twice' for n in sorted(set(names)) if names.count(n) > 1]
  for line in bad:
    print(f'error: stale mutant {line}', file=sys.stderr)
  if not bad:
    print(f'{len(mutants)} mutants, each fits its file')
  return 2 if bad else 0


def choose(mutants, only, sample, seed):
  names = {m.name for m in mutants}
  unknown = [n for n in only if n not in names]
  if unknown:
    raise SystemExit(f'error: unknown mutant(s) {", ".join(unknown)}; '
                     '--list shows them')
  if only:
    return [m for m in mutants if m.name in only]
  if sample:
    return random.Random(seed).sample(mutants, min(sample, len(mutants)))
  return list(mutants)


def main(argv=None):
  from tests.mutants import MUTANTS  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='python -m tests.mutation', description=__doc__.split('\n\n')[0])
  parser.add_argument('--only', action='append', default=[], metavar='NAME')
  parser.add_argument('--sample', type=int, default=0, metavar='N')
  parser.add_argument('--seed', type=int, default=None)
  parser.add_argument('--timeout', type=float, default=900,
                      help='seconds for one mutant\'s tests (default 900)')
  parser.add_argument('--list', action='store_true')
  parser.add_argument('--check', action='store_true')
  args = parser.parse_args(argv)
  if args.list:
    for m in MUTANTS:
      print(f'{m.name:36} {m.behaviour:40} {m.path}')
    return 0
  if args.check:
    return check_fits(MUTANTS)
  seed = args.seed if args.seed is not None else random.randrange(10 ** 6)
  chosen = choose(MUTANTS, args.only, args.sample, seed)
  print(f'mutation check: {len(chosen)} of {len(MUTANTS)} mutants'
        + (f' (sample, --seed {seed})' if args.sample else ''), flush=True)
  results = []
  with tempfile.TemporaryDirectory(prefix='alexnet_jax_mutants_') as tmp:
    root = copy_checkout(pathlib.Path(tmp))
    try:
      for mutant in chosen:
        result = check(root, mutant, args.timeout)
        results.append(result)
        print(f"{result['verdict']:8} {result['seconds']:6.0f} s  "
              f'{mutant.name}: {mutant.behaviour}'
              + (f"  (by {result['by']})" if result['by'] else ''),
              flush=True)
        if result['verdict'] != 'killed':
          print('  ' + result['tail'].replace('\n', '\n  '), flush=True)
    except StaleMutant as e:
      print(f'error: stale mutant list: {e}', file=sys.stderr)
      return 2
  killed = sum(r['verdict'] == 'killed' for r in results)
  print(f'score: {killed}/{len(results)} killed'
        f' ({100 * killed / max(len(results), 1):.0f}%)')
  return 0 if killed == len(results) else 1


if __name__ == '__main__':
  sys.exit(main())
