"""Each decision is a line `tpu_vm.py: ...` here and a time-stamped one in
WORKDIR/logs/launcher.log, uploaded whole each time: it keeps what earlier
launchers decided, and a failed upload is made good by the next. An outage
(the VM not got back or not reached, until it is) is tried through until
--retry-for after it began; restarts are counted per --restart-window, so
that a crash loop ends while preemptions a day apart are each restarted."""

import time

from tpu.options import Stop


def stamp(seconds):
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds))


class Decisions:
  """`clock`: time() and sleep(), as the time module's."""

  def __init__(self, o, gcloud, clock, folder, err):
    self.o, self.gcloud, self.clock, self.err = o, gcloud, clock, err
    self.url = o.workdir and f'{o.workdir}/logs/launcher.log'
    self.path, self.lines, self.restarts = f'{folder}/launcher.log', [], []
    self.end_outage()

  def load(self):
    earlier = self.url and self.gcloud('storage', 'cat', self.url,
                                       capture=True)
    if earlier and not earlier.returncode:
      self.lines = earlier.stdout.splitlines()

  def decide(self, message, show=True):
    """The upload is not shown (a dry run shows it): the line stands for it."""
    if show:
      print(f'tpu_vm.py: {message}', file=self.err, flush=True)
    self.lines.append(f'{stamp(self.clock.time())} {message}')
    if self.url:
      with open(self.path, 'w') as f:
        f.write('\n'.join(self.lines) + '\n')
      if self.gcloud('storage', 'cp', '--quiet', self.path, self.url,
                     capture=True, show=False).returncode:
        print(f'tpu_vm.py: could not copy this decision to {self.url} (the '
              'next one carries it)', file=self.err, flush=True)

  def fail(self, message):
    """A failure that is not the user's input: recorded, then exit 1."""
    self.decide(f'error: {message}', show=False)
    raise Stop(message, 1)

  def end_outage(self):
    self.began, self.attempt = None, 0

  def wait(self, why, poll=False):
    """`poll`: a state that passes (CREATING, WAITING_FOR_RESOURCES), looked
    at every TPU_POLL_SECONDS; else a failure, tried again after a back-off
    from TPU_RETRY_SECONDS, doubling up to 30 min."""
    now, o = int(self.clock.time()), self.o
    self.began = now if self.began is None else self.began
    deadline = self.began + o.retry_for_s
    if now >= deadline:
      self.fail(f'{why}; giving up after {now - self.began}s '
                f'(--retry-for={o.retry_for})')
    self.attempt += not poll
    wait = o.poll_seconds if poll else min(
        o.retry_seconds << min(self.attempt - 1, 5), 1800, deadline - now)
    self.decide(f'{why}: checking again in {wait}s' if poll else
                f'{why}: trying again in {wait}s (attempt {self.attempt}; '
                f'giving up at {stamp(deadline)})')
    self.clock.sleep(wait)

  def restart(self, why):
    """True when the budget allows one more restart now."""
    now, o = self.clock.time(), self.o
    self.restarts = [t for t in self.restarts
                     if now - t < o.restart_window_s]
    window = f'in the last {o.restart_window}'
    if len(self.restarts) >= o.max_restarts:
      self.decide(f'{why}; no restarts left ({len(self.restarts)} {window}: '
                  f'--max-restarts={o.max_restarts})')
      return False
    self.restarts.append(now)
    self.decide(f'restart {len(self.restarts)}/{o.max_restarts} ({window}): '
                f'{why}; training resumes from {o.workdir}')
    return True
