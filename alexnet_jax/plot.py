"""Learning curves of one or more runs, from WORKDIR/metrics.jsonl, as one PNG.

  python -m alexnet_jax.plot WORKDIR [WORKDIR ...] [--out FILE.png]
      [--labels a,b]

One colour per run; line style tells the split (`runtime/curves.py` draws);
one run's picture is titled by the run (its model, dataset and last step).
Workdirs and the output may be `gs://...`. Bad input is one `error:` line and
exit status 2.
"""

import argparse
import sys
from typing import Optional, Sequence

from alexnet_jax.runtime import curves
from alexnet_jax.runtime.layout import Layout


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The CLI; bad input is one `error:` line and status 2, as in `main`."""
  parser = argparse.ArgumentParser(
      prog='python -m alexnet_jax.plot',
      description='Learning curves (loss, top-1, learning rate against step) '
      'of one or more runs, from WORKDIR/metrics.jsonl, as one PNG.')
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR',
                      help='run directory (local or gs://)')
  parser.add_argument('--out', metavar='FILE.png',
                      help='default: WORKDIR/curves.png for one run, '
                      './curves.png for several')
  parser.add_argument('--labels', metavar='A,B',
                      help='comma-separated legend names, one per WORKDIR '
                      "(default: each workdir's last path component)")
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = (str(Layout.of(args.workdirs[0]).curves)
                if len(args.workdirs) == 1 else 'curves.png')
  labels = None if args.labels is None else args.labels.split(',')
  try:
    title = (curves.run_title(args.workdirs[0]) if len(args.workdirs) == 1
             else None)
    curves.plot_runs(args.workdirs, args.out, labels=labels, title=title)
  except curves.PlotError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  except OSError as e:
    message = f'cannot write {args.out} ({type(e).__name__}: {e})'
    print(f'error: {" ".join(message.split())}', file=sys.stderr)
    return 2
  print(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
