#!/usr/bin/env python3
"""Trains alexnet_jax on a Cloud TPU VM slice, detached from this terminal,
through preemptions (--help; docs/clusters.md, "Cloud TPU VMs"). The standard
library only: it runs next to gcloud. gcloud runs through a runner and time
through a clock, so that tests drive it in-process (a fake cloud and clock)."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tpu import options
from tpu.supervise import Launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Runner:
  """run(): gcloud's CompletedProcess; `capture`: its output kept, not the
  user's; `show`: the command shown first. A dry run shows each on stdout,
  runs none, and each succeeds saying nothing (a dry run finds nothing)."""

  def __init__(self, dry_run, out, err):
    self.dry_run, self.out, self.err = dry_run, out, err

  def run(self, argv, capture=False, show=True):
    if self.dry_run or show:
      print('+', shlex.join(argv), file=self.out if self.dry_run else self.err,
            flush=True)
    if self.dry_run:
      return subprocess.CompletedProcess(argv, 0, '', '')
    return subprocess.run(argv, capture_output=capture, text=True)


class Terminated(KeyboardInterrupt):
  """SIGTERM to this launcher (not to training): it detaches, as on Ctrl-C."""


def main(argv, environ=os.environ, runner=None, clock=None, out=sys.stdout,
         err=sys.stderr):
  """The launcher, to its exit status."""
  try:
    o = options.parse(argv, environ, REPO)
    if runner is None and not o.dry_run and not shutil.which('gcloud'):
      options.fail('gcloud not found; install the Google Cloud CLI (or use '
                   '--dry-run)')
    with tempfile.TemporaryDirectory() as folder:
      launcher = Launcher(o, runner or Runner(o.dry_run, out, err),
                          clock or time, folder, REPO, err)
      try:
        return launcher.run()
      except KeyboardInterrupt as e:
        return launcher.detach(143 if isinstance(e, Terminated) else 130)
  except options.Stop as e:  # Bad input (2) too.
    print(f'error: {e}', file=err)
    return e.status


def on_sigterm(*_):
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  raise Terminated()


if __name__ == '__main__':
  signal.signal(signal.SIGTERM, on_sigterm)
  sys.exit(main(sys.argv[1:]))
