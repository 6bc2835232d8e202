"""The run: training brought up on a READY VM, worker 0's log followed, and
what follows how training ended (docs/clusters.md has the table); --attach,
--logs and --stop."""

import os
import re

from tpu import workers
from tpu.decisions import Decisions
from tpu.options import Stop
from tpu.vm import Retry, Vm

ENDED = {0: 'training on TPU VM {} finished (exit status 0)',
         2: 'training exited with status 2 (a usage error in its arguments); '
            'not restarting',
         200: 'training on TPU VM {} was stopped with --stop; it saved a '
              'checkpoint, and the same command resumes'}
RESTARTED = {4: 'is not running on worker 0', 75: 'lost a process (exit status '
             '75)', 130: 'got SIGINT from elsewhere (exit status 130)',
             143: 'got SIGTERM from elsewhere (exit status 143)'}
RUN_LOG = re.compile(r'/[0-9]{8}T[0-9]{6}Z-[0-9]+\.log$')


class Launcher:
  """`runner` runs gcloud, `clock` tells and passes the time (time(),
  sleep()), `folder` holds the tarball and the decision log."""

  def __init__(self, o, runner, clock, folder, repo, err):
    self.o, self.clock, self.folder, self.repo = o, clock, folder, repo
    self.gcloud = lambda *args, **kw: runner.run(['gcloud', *args], **kw)
    self.log = Decisions(o, self.gcloud, clock, folder, err)
    self.vm = Vm(o, self.gcloud, self.log)
    self.workers = workers.Workers(o, self.gcloud)

  def run(self):
    o = self.o
    self.log.load()
    if o.mode == 'launch':
      return self.follow(fresh=self.bring_up())
    state = self.vm.describe().state
    if o.mode == 'logs':
      return self.show_logs(state)
    if state != 'READY' and not o.dry_run:
      self.log.fail(f'TPU VM {o.name} is {state}; ' + (
          'nothing to attach to' if o.mode == 'attach' else
          'there is no training to stop'))
    return self.follow(fresh=False) if o.mode == 'attach' else self.stop()

  def detach(self, status):
    self.log.decide(f'detached ({"Ctrl-C" if status == 130 else "SIGTERM"}): '
                    f'training, if it runs, goes on on TPU VM {self.o.name}; '
                    '--attach follows it, --stop stops it')
    return status

  def bring_up(self):
    """Until this command trains on every worker of a READY VM: True when
    it started it (show its whole log), False when it was running."""
    o, tarball = self.o, os.path.join(self.folder, 'alexnet_jax.tar.gz')
    if not o.dry_run:
      workers.pack(self.repo, tarball)
    while True:
      try:
        self.vm.acquire()
        # 0: this command trains on worker 0, 3: another one does, 4: none.
        running = self.workers.script(f'status -- {workers.train_command(o)}')
        running = 4 if o.dry_run else running  # A dry run finds none.
        if running == 4:
          self.log.decide(f'starting training on TPU VM {o.name} (from '
                          f'{o.workdir}, if it holds checkpoints)')
        status = self.workers.start(tarball) if running == 4 else running
        if status == 3:
          raise Stop(f'TPU VM {o.name} is training another command (see '
                     'above); --stop stops it, or pick another --name')
        if status:
          raise Retry(f'starting training on TPU VM {o.name} failed (exit '
                      f'status {status})')
        if running == 0:
          self.log.decide(f'this command is already training on TPU VM '
                          f'{o.name}: following it')
        self.log.end_outage()
        return running == 4
      except Retry as e:
        self.log.wait(str(e))

  def follow(self, fresh):
    """Follows worker 0's log until training ends, then acts on how."""
    o = self.o
    while True:
      began = self.clock.time()
      status, fresh = self.workers.script(
          f'follow --lines={100000 if fresh else 20}'), False
      if o.dry_run:
        return 0
      if self.clock.time() - began >= 60:
        self.log.end_outage()  # It held a while: trouble now is a new outage.
      if status in ENDED:
        self.log.decide(ENDED[status].format(o.name))
        return 143 if status == 200 else status
      try:
        state = self.vm.describe().state
      except Retry as e:
        self.log.wait(str(e))
        continue
      if state == 'READY' and status == 255:
        self.log.wait(f'lost the connection to worker 0 of TPU VM {o.name} '
                      '(ssh exit status 255); training goes on there')
      elif o.mode == 'attach':
        if status == 4:
          self.log.fail(f'no training has run on worker 0 of TPU VM {o.name}')
        self.log.decide(f'training on TPU VM {o.name} ended with exit status '
                        f'{status} (the VM is {state}); --attach restarts '
                        'nothing')
        return status
      elif state == 'READY' and status not in RESTARTED:
        self.log.decide(f'training on TPU VM {o.name} failed with exit '
                        f'status {status}; not restarting (its log: --logs)')
        return status
      elif self.log.restart(
          f'TPU VM {o.name} is {state} (training exit status {status})'
          if state != 'READY' else
          f'training on TPU VM {o.name} (READY) {RESTARTED[status]}'):
        fresh = self.bring_up()
      else:
        return status

  def show_logs(self, state):
    """Worker 0's log of the latest run, or its copy in the workdir when
    the VM cannot be reached."""
    o = self.o
    if o.dry_run or state == 'READY':
      status = self.workers.script('logs')
      if status != 255:
        return status
    if not o.workdir:
      self.log.fail(f"TPU VM {o.name} is {state}; worker 0's log is copied to "
                    'the workdir: give --workdir to read it')
    listing = self.gcloud('storage', 'ls', f'{o.workdir}/logs/', capture=True)
    runs = sorted(u for u in listing.stdout.split() if RUN_LOG.search(u))
    if not runs:
      self.log.fail(f'no copy of a log in {o.workdir}/logs/ yet')
    return self.gcloud('storage', 'cat', runs[-1]).returncode

  def stop(self):
    o = self.o
    self.log.decide(f'stopping training on TPU VM {o.name}: SIGTERM, so that '
                    f'it saves, then SIGKILL after {o.stop_grace}s')
    if self.workers.stop():
      self.log.fail(f'stopping training on TPU VM {o.name} failed; its '
                    'workers said why, above')
    self.log.decide(f'training on TPU VM {o.name} stopped; the VM is left '
                    f'running (gcloud compute tpus tpu-vm delete {o.name} '
                    f'--zone={o.zone} deletes it)')
    return 0
