"""The TPU VM: what `describe` says of it, and getting a READY one of the
requested accelerator type whatever state it is in (the table in --help),
directly or as a queued resource."""

import collections
import re

from tpu.decisions import Stop

# Capacity (a stockout, RESOURCE_EXHAUSTED) or a service briefly
# unavailable: worth waiting for. Anything else (a bad runtime version, no
# permission, no quota at all) is not.
TRANSIENT = re.compile(
    r'RESOURCE_EXHAUSTED|UNAVAILABLE|[Ss]tockout|[Nn]o more capacity|'
    r'[Ii]nsufficient capacity|capacity is not available|"code": ?(8|14)\D|'
    r'[Tt]ry again later')
# qr: the queued resource it came from (projects/P/.../NAME), or ''.
Node = collections.namedtuple('Node', 'state type qr')


class Retry(Exception):
  """A try that failed in a way worth trying again, after a back-off."""


def first_error(stderr):
  lines = stderr.strip().splitlines()
  return next((l for l in lines if 'error' in l.lower()), ' '.join(lines))


class Vm:

  def __init__(self, o, gcloud, log):
    self.o, self.gcloud, self.log = o, gcloud, log

  def _tpus(self, group, verb, *args, name=None, **kwargs):
    return self.gcloud('compute', 'tpus', group, verb, name or self.o.name,
                       *self.o.gcloud_flags, *args, **kwargs)

  def _lookup(self, group, field):
    """The resource's `field`, None when there is none (or in a dry run);
    failing otherwise is retried when transient, else the end."""
    found = self._tpus(group, 'describe', f'--format=value({field})',
                       capture=True)
    if found.status == 0 or self.o.dry_run or 'NOT_FOUND' in found.err:
      return found.out.rstrip('\n') or None
    what = 'TPU VM' if group == 'tpu-vm' else 'queued resource'
    why = f'describing {what} {self.o.name} failed: {first_error(found.err)}'
    if TRANSIENT.search(found.err):
      raise Retry(why)
    self.log.fail(why)

  def describe(self):
    found = self._lookup('tpu-vm', 'state,acceleratorType,queuedResource')
    return found and Node(*(found.split('\t') + ['', ''])[:3])

  def _act(self, why, group, verb, *args, name=None):
    if self._tpus(group, verb, *args, name=name).status:
      raise Retry(why)

  def _create(self, what, group, *args):
    made = self._tpus(group, 'create', *args, *self.o.tiers)
    if made.status and not TRANSIENT.search(made.err):
      self.log.fail(f'could not create {what}: {first_error(made.err)[:300]}')
    if made.status:
      raise Retry(f'{what} could not be created, for lack of capacity or '
                  f'availability ({first_error(made.err)[:200]})')

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
          qr = node.qr.split('/')[-1]
          self._act(f'deleting queued resource {qr} failed',
                    'queued-resources', 'delete', '--force', '--quiet',
                    name=qr)
        else:
          self._act(f'deleting TPU VM {o.name} failed', 'tpu-vm', 'delete',
                    '--quiet')
      elif node.state == 'STOPPED':
        self.log.decide(f'TPU VM {o.name} is STOPPED; starting it')
        self._act(f'starting TPU VM {o.name} failed', 'tpu-vm', 'start')
      else:
        self.log.wait_a_while(f'TPU VM {o.name} is {node.state}')

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

  def _queue(self):
    """The queued resource named like the VM: requested (again), or the one
    there waited for, until it is ACTIVE and its VM exists."""
    o, state = self.o, self._lookup('queued-resources', 'state.state')
    if state in ('SUSPENDING', 'DELETING'):
      return self.log.wait_a_while(f'queued resource {o.name} is {state}')
    if state in ('FAILED', 'SUSPENDED'):
      self.log.decide(f'queued resource {o.name} is {state}; deleting it '
                      'and requesting again')
      self._act(f'deleting queued resource {o.name} failed',
                'queued-resources', 'delete', '--quiet')
    elif state:
      self.log.decide(f'waiting for the existing queued resource {o.name} '
                      f'({state})')
    else:
      self.log.decide(f'requesting TPU VM {o.name} as queued resource '
                      f'{o.name} ({", ".join([o.accelerator_type] + o.tiers)})')
    if state in (None, 'FAILED', 'SUSPENDED'):
      until = o.valid_until_duration
      self._create(f'queued resource {o.name}', 'queued-resources',
                   f'--node-id={o.name}',
                   f'--accelerator-type={o.accelerator_type}',
                   f'--runtime-version={o.version}',
                   *[f'--valid-until-duration={until}'] * bool(until))
    while True:
      state = self._lookup('queued-resources', 'state.state')
      if o.dry_run or state == 'ACTIVE':
        return
      if state in (None, 'FAILED', 'SUSPENDING', 'SUSPENDED'):
        self.log.fail(f'queued resource {o.name} is {state or "gone"} while '
                      'waited for; see: gcloud compute tpus queued-resources '
                      f'describe {o.name} --zone={o.zone} (rerun to request '
                      'it again)')
      self.log.wait_a_while(f'queued resource {o.name} is {state}')
