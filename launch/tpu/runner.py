"""How a gcloud command runs, and what time it is: one small interface each,
so that tests drive the whole state machine in-process (a fake cloud, a
fake clock)."""

import collections
import dataclasses
import shlex
import subprocess
import sys
import time


@dataclasses.dataclass
class Result:
  status: int
  out: str = ''
  err: str = ''


def shown(argv):
  return '+ ' + shlex.join(argv)


class SubprocessRunner:
  """`capture`: a question, its answer parsed, nothing shown. Otherwise the
  output is the user's: stdout straight through, stderr as it comes, its
  last lines kept (a create's error says whether to retry)."""

  def __init__(self, err=sys.stderr):
    self.err = err

  def run(self, argv, capture=False, show=True):
    if show:
      print(shown(argv), file=self.err, flush=True)
    if capture:
      done = subprocess.run(argv, capture_output=True, text=True)
      return Result(done.returncode, done.stdout, done.stderr)
    kept = collections.deque(maxlen=200)
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
      for line in proc.stderr:
        self.err.write(line)
        self.err.flush()
        kept.append(line)
      return Result(proc.wait(), '', ''.join(kept))
    except BaseException:  # Ctrl-C, SIGTERM: this command goes too.
      proc.kill()
      proc.wait()
      raise


class DryRunner:
  """--dry-run: each command as one `+ ...` line on stdout, none run; every
  one succeeds with no output (the launcher knows a dry run finds nothing)."""

  def __init__(self, out=sys.stdout):
    self.out = out

  def run(self, argv, capture=False, show=True):
    print(shown(argv), file=self.out, flush=True)
    return Result(0)


class SystemClock:
  """Whole seconds, as the decision log and the back-off count them."""
  now = staticmethod(lambda: int(time.time()))
  sleep = staticmethod(time.sleep)


def stamp(seconds):
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds))
