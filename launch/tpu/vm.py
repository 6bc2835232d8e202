"""The TPU VM: what `describe` says of it, and getting a READY one of the
requested accelerator type whatever state it is in (docs/clusters.md has the
table), directly or as a queued resource."""

import collections
import re

from tpu.options import Stop

# Capacity (a stockout, RESOURCE_EXHAUSTED) or a service briefly unavailable:
# worth waiting for. Not a bad runtime version, no permission, no quota.
TRANSIENT = re.compile(
    r'RESOURCE_EXHAUSTED|UNAVAILABLE|[Ss]tockout|[Nn]o more capacity|'
    r'[Ii]nsufficient capacity|capacity is not available|"code": ?(8|14)\D|'
    r'[Tt]ry again later')
# state: 'gone' when there is none; qr: the queued resource it came from.
Node = collections.namedtuple('Node', 'state type qr')


class Retry(Exception):
  """A try that failed in a way worth trying again, after a back-off."""


class Vm:

  def __init__(self, o, gcloud, log):
    self.o, self.gcloud, self.log = o, gcloud, log

  def _tpus(self, group, verb, *args, name=None, retry_all=False):
    """`gcloud compute tpus GROUP VERB NAME ARGS`, its output kept. Failing
    (but for a describe's NOT_FOUND: there is none) is the end, unless it is
    capacity or availability (or `retry_all`): that is tried again."""
    command = ['compute', 'tpus', group, verb, name or self.o.name]
    done = self.gcloud(*command, *self.o.gcloud_flags, *args, capture=True)
    if done.returncode and not (verb == 'describe' and
                                'NOT_FOUND' in done.stderr):
      lines = done.stderr.strip().splitlines()
      why = f'gcloud {" ".join(command)} failed: ' + next(
          (l for l in lines if 'error' in l.lower()), ' '.join(lines))[:300]
      if retry_all or TRANSIENT.search(done.stderr):
        raise Retry(why)
      self.log.fail(why)
    return done.stdout.strip()

  def describe(self):
    found = self._tpus('tpu-vm', 'describe',
                       '--format=value(state,acceleratorType,queuedResource)')
    state, kind, qr = ((found or 'gone').split('\t') + ['', ''])[:3]
    return Node(state, kind, qr.split('/')[-1])

  def _create(self, what, group, *args):
    o = self.o
    self.log.decide(f'creating {what} '
                    f'({", ".join([o.accelerator_type, o.version, *o.tiers])})')
    self._tpus(group, 'create', *args, *o.tiers)

  def acquire(self):
    """Returns once a READY VM of the requested type is there; raises Retry
    when a try failed in a way worth trying again."""
    o, vm = self.o, f'TPU VM {self.o.name}'
    while True:
      node = self.describe()
      if node.state == 'gone' and not o.queued:
        return self._create(vm, 'tpu-vm', f'--accelerator-type='
                            f'{o.accelerator_type}', f'--version={o.version}')
      if node.state == 'gone':
        if self._queue():
          return
        continue  # Describe the VM the queued resource made.
      # What to delete to delete it: it, or its queued resource (--force).
      group, name, *force = (['queued-resources', node.qr, '--force']
                             if node.qr else ['tpu-vm', o.name])
      if node.type != o.accelerator_type:
        how = ' '.join(['gcloud compute tpus', group, 'delete', name,
                        f'--zone={o.zone}', *force])
        raise Stop(f'{vm} exists with accelerator type {node.type or "?"}, '
                   f'not {o.accelerator_type}; delete it ({how}) or pick '
                   'another --name')
      if node.state == 'READY':
        return self.log.decide(f'using {vm} (READY, {node.type})')
      if node.state in ('PREEMPTED', 'TERMINATED'):
        self.log.decide(f'{vm} is {node.state}; deleting it to create it again')
        self._tpus(group, 'delete', *force, '--quiet', name=name,
                   retry_all=True)
      elif node.state == 'STOPPED':
        self.log.decide(f'{vm} is STOPPED; starting it')
        self._tpus('tpu-vm', 'start', retry_all=True)
      else:
        self.log.wait(f'{vm} is {node.state}', poll=True)

  def _queued_state(self):
    return self._tpus('queued-resources', 'describe',
                      '--format=value(state.state)') or None

  def _queue(self):
    """The queued resource named like the VM: requested (again), or the one
    there waited for, until it is ACTIVE and its VM exists. True in a dry
    run (there is no VM to describe)."""
    o, qr = self.o, f'queued resource {self.o.name}'
    state = self._queued_state()
    if state in ('SUSPENDING', 'DELETING'):
      return self.log.wait(f'{qr} is {state}', poll=True)
    if state in ('FAILED', 'SUSPENDED'):
      self.log.decide(f'{qr} is {state}; deleting it to request it again')
      self._tpus('queued-resources', 'delete', '--quiet', retry_all=True)
    if state in (None, 'FAILED', 'SUSPENDED'):
      until = o.valid_until_duration
      self._create(qr, 'queued-resources', f'--node-id={o.name}',
                   f'--accelerator-type={o.accelerator_type}',
                   f'--runtime-version={o.version}',
                   *[f'--valid-until-duration={until}'] * bool(until))
    else:
      self.log.decide(f'waiting for the existing {qr} ({state})')
    while True:
      state = self._queued_state()
      if o.dry_run or state == 'ACTIVE':
        return o.dry_run
      if state in (None, 'FAILED', 'SUSPENDING', 'SUSPENDED'):
        self.log.fail(f'{qr} is {state or "gone"} while waited for (gcloud '
                      'compute tpus queued-resources describe '
                      f'{o.name} --zone={o.zone}; rerun to request it again)')
      self.log.wait(f'{qr} is {state}', poll=True)
