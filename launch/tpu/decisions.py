"""What the launcher decides, and how much trouble it takes: every decision
is a line `tpu_vm.py: ...` here and a time-stamped line in
WORKDIR/logs/launcher.log (so that what happened overnight can be read
later, by anyone); back-off through an outage, until --retry-for; restarts
counted per --restart-window."""

import os

from tpu.runner import stamp


class Stop(Exception):
  """The end of this launcher: one `error:` line and `status`."""

  def __init__(self, message, status):
    super().__init__(message)
    self.status = status


class DecisionLog:
  """The whole log is uploaded after each decision, so the copy in the
  workdir keeps what earlier launchers decided, and one failed upload is made
  good by the next. A dry run shows the upload; a real one does not (the
  decision's own line stands for it)."""

  def __init__(self, gcloud, clock, workdir, folder, err):
    self.gcloud, self.clock, self.err = gcloud, clock, err
    self.url = workdir and f'{workdir}/logs/launcher.log'
    self.path = os.path.join(folder, 'launcher.log')
    self.lines = []

  def load(self):
    if self.url:
      earlier = self.gcloud('storage', 'cat', self.url, capture=True)
      if earlier.status == 0:
        self.lines = earlier.out.splitlines()

  def decide(self, message):
    print(f'tpu_vm.py: {message}', file=self.err, flush=True)
    self.record(message)

  def record(self, message):
    self.lines.append(f'{stamp(self.clock.now())} {message}')
    if not self.url:
      return
    with open(self.path, 'w') as f:
      f.write('\n'.join(self.lines) + '\n')
    copy = self.gcloud('storage', 'cp', '--quiet', self.path, self.url,
                       capture=True, show=False)
    if copy.status:
      print(f'tpu_vm.py: could not copy this decision to {self.url} (the '
            'next one carries it)', file=self.err, flush=True)

  def fail(self, message):
    """A failure that is not the user's input: recorded, then exit 1."""
    self.record(f'error: {message}')
    raise Stop(message, 1)


class Outage:
  """From the first failure to get the VM back or reach it, until it works
  again: tries spaced by a back-off doubling from TPU_RETRY_SECONDS to
  30 min, given up --retry-for after the outage began."""

  def __init__(self, o, clock, log):
    self.o, self.clock, self.log = o, clock, log
    self.end()

  def end(self):
    self.began, self.attempt = None, 0

  def _now(self):
    now = self.clock.now()
    self.began = now if self.began is None else self.began
    return now, self.began + self.o.retry_for

  def backoff(self, why):
    now, deadline = self._now()
    if now >= deadline:
      self.log.fail(f'{why}; giving up: still failing {now - self.began} s '
                    f'after it began, at {stamp(now)} '
                    f'(--retry-for={self.o.retry_text})')
    self.attempt += 1
    wait = min(self.o.retry_seconds * 2 ** min(self.attempt - 1, 5), 1800,
               deadline - now)
    self.log.decide(f'{why}: trying again in {wait}s (attempt '
                    f'{self.attempt}; giving up at {stamp(deadline)})')
    self.clock.sleep(wait)

  def wait_a_while(self, why):
    """A state that passes (CREATING, WAITING_FOR_RESOURCES): checked again
    every TPU_POLL_SECONDS, within the outage's deadline."""
    now, deadline = self._now()
    if now >= deadline:
      self.log.fail(f'{why}; giving up at {stamp(now)} '
                    f'(--retry-for={self.o.retry_text})')
    self.log.decide(f'{why}: checking again in {self.o.poll_seconds}s')
    self.clock.sleep(self.o.poll_seconds)


class Restarts:
  """--max-restarts per --restart-window: a crash loop stops, while a
  preemption a day apart from the last is restarted every time."""

  def __init__(self, o, clock, log):
    self.o, self.clock, self.log = o, clock, log
    self.times = []

  def use(self, why):
    now, o = self.clock.now(), self.o
    self.times = [t for t in self.times if now - t < o.restart_window]
    if len(self.times) >= o.max_restarts:
      self.log.decide(f'{why}; no restarts left ({len(self.times)} in the '
                      f'last {o.window_text}: --max-restarts={o.max_restarts} '
                      f'--restart-window={o.window_text})')
      return False
    self.times.append(now)
    self.log.decide(f'restart {len(self.times)}/{o.max_restarts} (in the '
                    f'last {o.window_text}): {why}')
    return True
