"""A fake `gcloud` for the launch/tpu_vm.sh tests: records every call and
simulates one TPU VM and one queued resource, enough for the commands the
launcher runs.

Environment:
  FAKE_GCLOUD_LOG    file that gets one JSON line per call: the argv after
                     `gcloud`
  FAKE_GCLOUD_STATE  JSON file with the simulated world, read and written back
                     by every call:
    node: null (no VM) or {"state", "type", "qr"}; qr is the queued resource
          that made it ("projects/p/locations/z/queuedResources/NAME" or "")
    node_states: states the next `tpu-vm describe` calls report, one each,
          before node.state (e.g. ["CREATING"] then node.state)
    qr: null or {"name", "node", "type", "states"}; each `queued-resources
        describe` reports states[0] and drops it while more than one is left;
        reporting ACTIVE makes the VM (READY) if there is none
    qr_states: the states a queued resource created now goes through
        (default ["ACTIVE"])
    train: exit statuses of the training ssh calls, one each (default 0),
           e.g. [{"rc": 255, "node_state": "PREEMPTED"}] for a preemption;
           node_state null deletes the VM
Like the real gcloud, `tpu-vm ssh` and `scp` fail (status 1) unless the VM
is READY. The `--command` of ssh is recorded, never run.
"""

import json
import os
import sys


def flag(argv, name):
  for arg in argv:
    if arg.startswith(name + '='):
      return arg.split('=', 1)[1]
  return None


def positional(argv):
  return next(a for a in argv if not a.startswith('-'))


def main(argv):
  with open(os.environ['FAKE_GCLOUD_LOG'], 'a', encoding='utf-8') as log:
    log.write(json.dumps(argv) + '\n')
  path = os.environ['FAKE_GCLOUD_STATE']
  with open(path, encoding='utf-8') as f:
    world = json.load(f)
  world.setdefault('node', None)
  world.setdefault('qr', None)
  try:
    return run(argv, world)
  finally:
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(world, f)


def not_found(what):
  print(f'ERROR: (gcloud) NOT_FOUND: {what} was not found', file=sys.stderr)
  return 1


def run(argv, world):
  assert argv[:2] == ['compute', 'tpus'], argv
  group, verb, rest = argv[2], argv[3], argv[4:]
  assert flag(rest, '--zone'), argv
  node = world['node']
  if group == 'tpu-vm':
    if verb == 'describe':
      if node is None:
        return not_found('node')
      assert flag(rest, '--format') == \
          'value(state,acceleratorType,queuedResource)', argv
      state = node['state']
      if world.get('node_states'):
        state = world['node_states'].pop(0)
      print(f"{state}\t{node['type']}\t{node.get('qr', '')}")
      return 0
    if verb == 'create':
      if node is not None:
        print('ERROR: (gcloud) ALREADY_EXISTS', file=sys.stderr)
        return 1
      world['node'] = {'state': 'READY', 'qr': '',
                       'type': flag(rest, '--accelerator-type')}
      return 0
    if verb == 'delete':
      if node is None:
        return not_found('node')
      world['node'] = None
      return 0
    if verb == 'start':
      if node is None or node['state'] != 'STOPPED':
        return 1
      node['state'] = 'READY'
      return 0
    if verb in ('scp', 'ssh'):
      if node is None or node['state'] != 'READY':
        print('ERROR: (gcloud) the TPU VM is not READY', file=sys.stderr)
        return 1
      command = flag(rest, '--command') or ''
      if verb == 'ssh' and ' -m alexnet_jax.main ' in command:
        outcome = world.get('train') and world['train'].pop(0) or {'rc': 0}
        if isinstance(outcome, int):
          outcome = {'rc': outcome}
        if 'node_state' in outcome:
          if outcome['node_state'] is None:
            world['node'] = None
          else:
            node['state'] = outcome['node_state']
        return outcome['rc']
      return 0
  if group == 'queued-resources':
    qr = world['qr']
    name = positional(rest)
    if verb == 'describe':
      if qr is None or qr['name'] != name:
        return not_found('queued resource')
      assert flag(rest, '--format') == 'value(state.state)', argv
      state = qr['states'][0]
      if len(qr['states']) > 1:
        qr['states'].pop(0)
      if state == 'ACTIVE' and world['node'] is None:
        world['node'] = {
            'state': 'READY', 'type': qr['type'],
            'qr': f'projects/p/locations/z/queuedResources/{name}'}
      print(state)
      return 0
    if verb == 'create':
      if qr is not None:
        print('ERROR: (gcloud) ALREADY_EXISTS', file=sys.stderr)
        return 1
      world['qr'] = {'name': name, 'node': flag(rest, '--node-id'),
                     'type': flag(rest, '--accelerator-type'),
                     'states': list(world.get('qr_states') or ['ACTIVE'])}
      return 0
    if verb == 'delete':
      if qr is None or qr['name'] != name:
        return not_found('queued resource')
      if node is not None and node.get('qr', '').endswith('/' + name):
        if '--force' not in rest:
          print('ERROR: (gcloud) the queued resource has nodes', file=sys.stderr)
          return 1
        world['node'] = None
      world['qr'] = None
      return 0
  print(f'fake gcloud: unsupported call {argv}', file=sys.stderr)
  return 3


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
