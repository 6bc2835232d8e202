"""What the launcher decides, and how much trouble it takes.

Each decision is a line `tpu_vm.py: ...` here and a time-stamped line in
WORKDIR/logs/launcher.log (the whole log uploaded after each, so the copy
keeps what earlier launchers decided and one failed upload is made good by
the next): what happened overnight can be read later, by anyone. An outage
(from the first failure to get the VM back or reach it, until it works
again) is tried through with a back-off doubling from TPU_RETRY_SECONDS to
30 min and given up --retry-for after it began; restarts are counted per
--restart-window, so a crash loop ends while preemptions a day apart are
each restarted."""

from tpu.runner import stamp


class Stop(Exception):
  """The end of this launcher: one `error:` line and `status`."""

  def __init__(self, message, status):
    super().__init__(message)
    self.status = status


class Decisions:

  def __init__(self, o, gcloud, clock, folder, err):
    self.o, self.gcloud, self.clock, self.err = o, gcloud, clock, err
    self.url = o.workdir and f'{o.workdir}/logs/launcher.log'
    self.path, self.lines, self.restarts = f'{folder}/launcher.log', [], []
    self.end_outage()

  def load(self):
    earlier = self.url and self.gcloud('storage', 'cat', self.url,
                                       capture=True)
    self.lines = earlier.out.splitlines() if earlier and not earlier.status \
        else []

  def say(self, message):
    print(f'tpu_vm.py: {message}', file=self.err, flush=True)

  def decide(self, message):
    self.say(message)
    self.record(message)

  def record(self, message):
    """Uploaded unshown (a dry run shows it): the decision's line stands
    for it."""
    self.lines.append(f'{stamp(self.clock.now())} {message}')
    if not self.url:
      return
    with open(self.path, 'w') as f:
      f.write('\n'.join(self.lines) + '\n')
    if self.gcloud('storage', 'cp', '--quiet', self.path, self.url,
                   capture=True, show=False).status:
      self.say(f'could not copy this decision to {self.url} (the next one '
               'carries it)')

  def fail(self, message):
    """A failure that is not the user's input: recorded, then exit 1."""
    self.record(f'error: {message}')
    raise Stop(message, 1)

  def end_outage(self):
    self.began, self.attempt = None, 0

  def _deadline(self, why, still_failing=False):
    now = self.clock.now()
    self.began = now if self.began is None else self.began
    if now >= self.began + self.o.retry_for:
      since = f': still failing {now - self.began} s after it began,'
      self.fail(f'{why}; giving up{since * still_failing} at {stamp(now)} '
                f'(--retry-for={self.o.retry_for_text})')
    return now, self.began + self.o.retry_for

  def backoff(self, why):
    now, deadline = self._deadline(why, still_failing=True)
    self.attempt += 1
    wait = min(self.o.retry_seconds << min(self.attempt - 1, 5), 1800,
               deadline - now)
    self.decide(f'{why}: trying again in {wait}s (attempt {self.attempt}; '
                f'giving up at {stamp(deadline)})')
    self.clock.sleep(wait)

  def wait_a_while(self, why):
    """A state that passes (CREATING, WAITING_FOR_RESOURCES)."""
    self._deadline(why)
    self.decide(f'{why}: checking again in {self.o.poll_seconds}s')
    self.clock.sleep(self.o.poll_seconds)

  def restart(self, why):
    """True when the budget allows one more restart, now."""
    now, o = self.clock.now(), self.o
    self.restarts = [t for t in self.restarts if now - t < o.restart_window]
    if len(self.restarts) >= o.max_restarts:
      self.decide(f'{why}; no restarts left ({len(self.restarts)} in the last '
                  f'{o.restart_window_text}: --max-restarts={o.max_restarts} '
                  f'--restart-window={o.restart_window_text})')
      return False
    self.restarts.append(now)
    self.decide(f'restart {len(self.restarts)}/{o.max_restarts} (in the last '
                f'{o.restart_window_text}): {why}')
    return True
