"""The run: training brought up on a READY VM, worker 0's log followed, and
what follows how training ended (the table in --help); --attach, --logs and
--stop."""

import os
import re

from tpu import workers
from tpu.decisions import Decisions, Stop
from tpu.vm import Retry, Vm

ENDED = {0: 'training on TPU VM {name} finished (exit status 0)',
         2: 'training exited with status 2 (a usage error in its arguments); '
            'not restarting',
         200: 'training on TPU VM {name} was stopped with --stop; it saved a '
              'checkpoint, and the same command resumes'}
WHY = {4: 'is not running on worker 0',
       75: 'stopped because one of its processes was lost (exit status 75)'}
RUN_LOG = re.compile(r'/[0-9]{8}T[0-9]{6}Z-[0-9]+\.log$')


class Launcher:
  """One launcher: `runner` runs gcloud, `clock` tells and passes the time,
  `folder` holds its files (the tarball, the decision log)."""

  def __init__(self, o, runner, clock, folder, repo, err):
    self.o, self.clock, self.folder, self.repo = o, clock, folder, repo
    self.gcloud = lambda *args, **kw: runner.run(['gcloud', *args], **kw)
    self.log = Decisions(o, self.gcloud, clock, folder, err)
    self.vm = Vm(o, self.gcloud, self.log)
    self.workers = workers.Workers(o, self.gcloud)

  def run(self):
    self.log.load()
    if self.o.mode == 'launch':
      return self.supervise(fresh=self.bring_up())
    if self.o.mode == 'attach':
      self.require_ready('nothing to attach to')
      return self.supervise(fresh=False)
    return self.show_logs() if self.o.mode == 'logs' else self.stop()

  def detach(self, status):
    self.log.decide(f'detached ({"Ctrl-C" if status == 130 else "SIGTERM"}): '
                    'training, if it was running, goes on on TPU VM '
                    f'{self.o.name}; follow it with --attach, stop it with '
                    '--stop')
    return status

  def bring_up(self):
    """Until this command trains on every worker of a READY VM: the VM got
    (back), then the training already there followed (False), or the
    workers prepared and training started (True: show its whole log)."""
    o, tarball = self.o, os.path.join(self.folder, 'alexnet_jax.tar.gz')
    if not o.dry_run:
      workers.pack(self.repo, tarball)
    while True:
      try:
        self.vm.acquire()
        running = self.workers.status()
        if running == 4:
          self.log.decide(f'starting training on every worker of TPU VM '
                          f'{o.name}; it resumes from the checkpoints in '
                          f'{o.workdir}, if any')
          running = self.workers.start(tarball) or 'started'
        if running == 3:
          raise Stop(f'TPU VM {o.name} is training another command (its '
                     'workers said which, above); stop it with --stop, or '
                     'pick another --name', 2)
        if running == 0:
          self.log.decide(f'this command is already training on TPU VM '
                          f'{o.name}: following it, not starting another')
        if running in (0, 'started'):
          self.log.end_outage()
          return running == 'started'
        raise Retry(f'asking about, preparing or starting training on TPU VM '
                    f'{o.name} failed (exit status {running})')
      except Retry as e:
        self.log.backoff(str(e))

  def supervise(self, fresh):
    """Follows worker 0's log until training ends, then acts on how."""
    o = self.o
    while True:
      began = self.clock.now()
      status, fresh = self.workers.follow(100000 if fresh else 20), False
      if o.dry_run:
        return 0
      if self.clock.now() - began >= 60:
        self.log.end_outage()  # It held a while: trouble now is a new outage.
      if status in ENDED:
        self.log.decide(ENDED[status].format(name=o.name))
        return 143 if status == 200 else status
      try:
        node = self.vm.describe()
      except Retry as e:
        self.log.backoff(str(e))
        continue
      state = node.state if node else 'gone'
      if state == 'READY' and status == 255:
        self.log.backoff(f'lost the connection to worker 0 of TPU VM '
                            f'{o.name} (ssh exit status 255); training goes '
                            'on there')
        continue
      if o.mode == 'attach' and status == 4:
        self.log.fail(f'no training has run on worker 0 of TPU VM {o.name}')
      if o.mode == 'attach':
        self.log.decide(f'training on TPU VM {o.name} ended with exit status '
                        f'{status} (the VM is {state}); --attach restarts '
                        'nothing')
        return status
      if state == 'READY' and status not in (4, 75, 130, 143):
        self.log.decide(f'training on TPU VM {o.name} failed with exit '
                        f'status {status}; not restarting (its log: --logs)')
        return status
      why = (f'training on TPU VM {o.name} (READY) ' + WHY.get(
          status, f'got a signal nobody here sent (exit status {status})') +
             f'; starting it again, it resumes from {o.workdir}')
      if state != 'READY':
        why = (f'TPU VM {o.name} is {state} (training exit status {status}): '
               'getting it back and starting training again, which resumes '
               f'from {o.workdir}')
      if not self.log.restart(why):
        return status
      fresh = self.bring_up()

  def require_ready(self, why):
    node = self.vm.describe()
    if not self.o.dry_run and (node is None or node.state != 'READY'):
      self.log.fail(f'TPU VM {self.o.name} is '
                    f'{node.state if node else "not there"}; {why}')

  def show_logs(self):
    """Worker 0's log of the latest run, or, when the VM cannot be reached,
    its copy in the workdir."""
    o, node = self.o, self.vm.describe()
    if o.dry_run or (node and node.state == 'READY'):
      status = self.workers.logs()
      if (status != 255) if not o.dry_run else not o.workdir:
        return status
    if not o.workdir:
      self.log.fail(f'TPU VM {o.name} is {node.state if node else "not there"}'
                    "; worker 0's log is copied to the workdir: give "
                    '--workdir to read it')
    listing = self.gcloud('storage', 'ls', f'{o.workdir}/logs/', capture=True)
    runs = sorted(u for u in listing.out.split() if RUN_LOG.search(u))
    latest = f'{o.workdir}/logs/RUN.log' if o.dry_run else (runs or [''])[-1]
    if not latest:
      self.log.fail(f'no copy of a log in {o.workdir}/logs/ yet')
    return self.gcloud('storage', 'cat', latest).status

  def stop(self):
    o = self.o
    self.require_ready('there is no training to stop')
    self.log.decide(f'stopping training on every worker of TPU VM {o.name}: '
                    'SIGTERM, so that it saves a checkpoint (SIGKILL after '
                    f'{o.stop_grace}s)')
    status = self.workers.stop()
    if status and not o.dry_run:
      self.log.fail(f'stopping training on TPU VM {o.name} failed (exit '
                    f'status {status}); its workers said why, above')
    self.log.decide(f'training on TPU VM {o.name} stopped; the VM is left '
                    f'running (gcloud compute tpus tpu-vm delete {o.name} '
                    f'--zone={o.zone} deletes it)')
    return 0
