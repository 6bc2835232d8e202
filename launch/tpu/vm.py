"""The TPU VM: what `describe` says of it, and getting a READY one of the
requested accelerator type, whatever state it is found in (see the table in
--help), directly or as a queued resource."""

import dataclasses
import re

from tpu.decisions import Stop

# Capacity (a stockout, RESOURCE_EXHAUSTED) or a service briefly
# unavailable: worth waiting for. Anything else (a bad runtime version, no
# permission, no quota at all) is not.
TRANSIENT = re.compile(
    r'RESOURCE_EXHAUSTED|UNAVAILABLE|[Ss]tockout|[Nn]o more capacity|'
    r'[Ii]nsufficient capacity|capacity is not available|"code": ?(8|14)\D|'
    r'[Tt]ry again later')


class Retry(Exception):
  """A try that failed in a way worth trying again, after a back-off."""


@dataclasses.dataclass
class Node:
  state: str
  type: str
  qr: str  # The queued resource it came from: projects/P/.../NAME, or ''.


def first_error(stderr):
  lines = stderr.strip().splitlines()
  return next((l for l in lines if 'error' in l.lower()), ' '.join(lines))


class Vm:

  def __init__(self, o, gcloud, log, outage):
    self.o, self.gcloud, self.log, self.outage = o, gcloud, log, outage
    self.name, self.flags = o.name, o.gcloud_flags

  def _tpus(self, group, verb, name, *flags, **kwargs):
    return self.gcloud('compute', 'tpus', group, verb, name, *self.flags,
                       *flags, **kwargs)

  def _lookup(self, group, field):
    """The resource's `field`, or None when it does not exist (or in a dry
    run); other failures are retried when transient, else the end."""
    found = self._tpus(group, 'describe', self.name,
                       f'--format=value({field})', capture=True)
    if found.status == 0 and found.out.strip():
      return found.out.rstrip('\n')
    if found.status == 0 or self.o.dry_run or 'NOT_FOUND' in found.err:
      return None
    what = {'tpu-vm': 'TPU VM'}.get(group, 'queued resource')
    why = f'describing {what} {self.name} failed: {first_error(found.err)}'
    if TRANSIENT.search(found.err):
      raise Retry(why)
    self.log.fail(why)

  def describe(self):
    found = self._lookup('tpu-vm', 'state,acceleratorType,queuedResource')
    return found and Node(*(found.split('\t') + ['', ''])[:3])

  def _act(self, why, group, verb, *flags):
    if self._tpus(group, verb, self.name, *flags).status:
      raise Retry(why)

  def _create(self, what, group, *flags):
    made = self._tpus(group, 'create', self.name, *flags, *self.o.tiers)
    if made.status:
      error = first_error(made.err)
      if not TRANSIENT.search(made.err):
        self.log.fail(f'could not create {what}: {error[:300]}')
      raise Retry(f'{what} could not be created, for lack of capacity or '
                  f'availability ({error[:200]})')

  def acquire(self):
    """Returns once a READY VM of the requested type is there; raises Retry
    when a try failed in a way worth trying again."""
    o = self.o
    while True:
      node = self.describe()
      if node is None and not o.queued:
        self.log.decide(f'TPU VM {o.name} does not exist: creating it '
                        f'({", ".join([o.accelerator_type, o.version] + o.tiers)})')
        return self._create(f'TPU VM {o.name}', 'tpu-vm',
                            f'--accelerator-type={o.accelerator_type}',
                            f'--version={o.version}')
      if node is None:
        self._queue()
        if o.dry_run:
          return
        continue  # Describe the VM the queued resource made.
      self._check_type(node)
      if node.state == 'READY':
        return self.log.decide(f'using TPU VM {o.name} (READY, {node.type})')
      if node.state in ('PREEMPTED', 'TERMINATED'):
        self.log.decide(f'TPU VM {o.name} is {node.state}; deleting it to '
                        'create it again')
        if node.qr:  # Its queued resource goes with it (--force: its nodes).
          self._qr_delete(node.qr.split('/')[-1], '--force')
        else:
          self._act(f'deleting TPU VM {o.name} failed', 'tpu-vm', 'delete',
                    '--quiet')
      elif node.state == 'STOPPED':
        self.log.decide(f'TPU VM {o.name} is STOPPED; starting it')
        self._act(f'starting TPU VM {o.name} failed', 'tpu-vm', 'start')
      else:
        self.outage.wait_a_while(f'TPU VM {o.name} is {node.state}')

  def _check_type(self, node):
    o = self.o
    if node.type == o.accelerator_type:
      return
    how = f'gcloud compute tpus tpu-vm delete {o.name} --zone={o.zone}'
    if node.qr:
      how = ('gcloud compute tpus queued-resources delete '
             f'{node.qr.split("/")[-1]} --zone={o.zone} --force')
    raise Stop(f'TPU VM {o.name} exists with accelerator type '
               f'{node.type or "unknown"}, not {o.accelerator_type}; delete '
               f'it ({how}) or pick another --name', 2)

  def _qr_delete(self, name, *flags):
    if self.gcloud('compute', 'tpus', 'queued-resources', 'delete', name,
                   *self.flags, *flags, '--quiet').status:
      raise Retry(f'deleting queued resource {name} failed')

  def _queue(self):
    """A queued resource named like the VM: requested (again), or the one
    there waited for until ACTIVE, when its VM exists."""
    o = self.o
    state = self._lookup('queued-resources', 'state.state')
    if state in ('SUSPENDING', 'DELETING'):
      return self.outage.wait_a_while(f'queued resource {o.name} is {state}')
    if state in ('FAILED', 'SUSPENDED'):
      self.log.decide(f'queued resource {o.name} is {state}; deleting it '
                      'and requesting again')
      self._qr_delete(o.name)
    if state in (None, 'FAILED', 'SUSPENDED'):
      if state is None:
        self.log.decide(f'requesting TPU VM {o.name} as queued resource '
                        f'{o.name} ({", ".join([o.accelerator_type] + o.tiers)})')
      until = o.valid_until_duration
      self._create(f'queued resource {o.name}', 'queued-resources',
                   f'--node-id={o.name}',
                   f'--accelerator-type={o.accelerator_type}',
                   f'--runtime-version={o.version}',
                   *([f'--valid-until-duration={until}'] if until else []))
    else:
      self.log.decide(f'waiting for the existing queued resource {o.name} '
                      f'({state})')
    while True:
      state = self._lookup('queued-resources', 'state.state')
      if o.dry_run or state == 'ACTIVE':
        return
      if state is None:
        self.log.fail(f'queued resource {o.name} not found while waiting for '
                      'it (rerun to request it again)')
      if state in ('FAILED', 'SUSPENDING', 'SUSPENDED'):
        self.log.fail(f'queued resource {o.name} is {state}; see: gcloud '
                      f'compute tpus queued-resources describe {o.name} '
                      f'--zone={o.zone} (rerun to delete it and request it '
                      'again)')
      self.outage.wait_a_while(f'queued resource {o.name} is {state}')
