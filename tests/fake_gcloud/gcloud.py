"""A fake `gcloud` for the launch/tpu_vm.sh tests: records every call and
simulates one TPU VM, one queued resource and Cloud Storage, enough for the
commands the launcher runs.

Environment:
  FAKE_GCLOUD_LOG    file that gets one JSON line per call: the argv after
                     `gcloud` (calls made from a worker go to FILE.workers)
  FAKE_GCLOUD_STATE  JSON file with the simulated world, read and written back
                     by every call but `storage` ones (see below)
  FAKE_GCS_ROOT      a directory standing for Cloud Storage: gs://B/P is
                     FAKE_GCS_ROOT/B/P (`storage cp`, `cat`, `ls`)
  FAKE_CLOCK         the fake clock's file (tests/fake_gcloud/clock), which
                     a `train` outcome's "hours" moves on
  FAKE_TPU_WORKERS   when set, a directory where the VM's workers are real
                     (execute mode): worker i is the home directory
                     FAKE_TPU_WORKERS/worker_i, and `tpu-vm ssh` runs its
                     --command there with bash, in a session of its own (as
                     sshd does), with HOME, TPU_WORKER_ID=i and PATH =
                     FAKE_WORKER_PATH; `scp` copies into it. The install
                     command is not run: the tarball is unpacked, the venv's
                     python is this interpreter, and FAKE_TRAINER becomes
                     alexnet_jax/main.py. A deleted or preempted VM's worker
                     processes are killed (SIGTERM, then SIGKILL) and, when
                     deleted, its disks wiped.
  The world (FAKE_GCLOUD_STATE):
    node: null (no VM) or {"state", "type", "qr"}; qr is the queued resource
          that made it ("projects/p/locations/z/queuedResources/NAME" or "")
    node_states: states the next `tpu-vm describe` calls report, one each,
          before node.state (e.g. ["CREATING"] then node.state)
    qr: null or {"name", "node", "type", "states"}; each `queued-resources
        describe` reports states[0] and drops it while more than one is left;
        reporting ACTIVE makes the VM (READY) if there is none
    qr_states: the states a queued resource created now goes through
        (default ["ACTIVE"])
    create_errors: stderr texts of the next `tpu-vm create` calls, which
        fail with status 1 (e.g. a stockout's RESOURCE_EXHAUSTED)
    workers: how many workers the VM has (execute mode; default 2)
    running: what `status` on worker 0 answers (record mode): 0 this
        command runs, 3 another, 4 (default) none
    start: outcomes of the `start` calls, one each: {"rc": N} (record mode:
        the status; execute mode: run it, then return N, a connection that
        dropped after the command ran)
    train: outcomes of the `follow` calls, one each (default {"rc": 0}):
        {"rc": N}           its exit status (record mode)
        {"node_state": S}   the VM's state afterwards (null deletes the VM)
        {"hours": H}        the fake clock moves on H hours meanwhile
        {"drop_after": T}   execute mode: after T s the connection drops:
                            the remote command gets SIGHUP, the call 255
        {"preempt_after": T}  execute mode: after T s the trainers get
                            SIGTERM (they save), then the VM is PREEMPTED,
                            its worker processes killed, the call 255
Like the real gcloud, `tpu-vm ssh` and `scp` fail (status 1) unless the VM
is READY, and `ssh --worker=all` returns the first non-zero status in
worker order.
"""

import json
import os
import shutil
import sys

from workers import execute, flag, homes, install, kill_workers, scp


def positional(argv):
  return next(a for a in argv if not a.startswith('-'))


def kind_of_command(command):
  """What an ssh --command is: the launcher's remote steps."""
  for word in ('status', 'start', 'follow', 'logs', 'stopped'):
    if f'tpu_worker.sh {word}' in command:
      return word
  if 'pip install' in command:
    return 'install'
  if 'pgrep' in command:
    return 'stop'
  return 'other'


def main(argv):
  log_path = os.environ['FAKE_GCLOUD_LOG']
  if os.environ.get('FAKE_GCLOUD_WORKER'):
    log_path += '.workers'
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(json.dumps(argv) + '\n')
  if argv[:1] == ['storage']:
    return storage(argv[1], argv[2:])
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


# --- Cloud Storage ---------------------------------------------------------------


def local(url):
  assert url.startswith('gs://'), url
  return os.path.join(os.environ['FAKE_GCS_ROOT'], url[len('gs://'):])


def storage(verb, rest):
  args = [a for a in rest if not a.startswith('-')]
  if verb == 'cp':
    src, dst = args
    src = local(src) if src.startswith('gs://') else src
    if not os.path.exists(src):
      print(f'ERROR: (gcloud.storage.cp) {src} not found', file=sys.stderr)
      return 1
    dst = local(dst) if dst.startswith('gs://') else dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst + '.part')
    os.replace(dst + '.part', dst)
    return 0
  [url] = args
  if verb == 'cat':
    if not os.path.isfile(local(url)):
      print(f'ERROR: (gcloud.storage.cat) {url} not found', file=sys.stderr)
      return 1
    with open(local(url), encoding='utf-8') as f:
      sys.stdout.write(f.read())
    return 0
  if verb == 'ls':
    folder = local(url)
    if not os.path.isdir(folder):
      return 1
    for entry in sorted(os.listdir(folder)):
      print(url.rstrip('/') + '/' + entry)
    return 0
  return unsupported(['storage', verb, *rest])


def unsupported(argv):
  print(f'fake gcloud: unsupported call {argv}', file=sys.stderr)
  return 3


def not_found(what):
  print(f'ERROR: (gcloud) NOT_FOUND: {what} was not found', file=sys.stderr)
  return 1


# --- The VM ----------------------------------------------------------------------


def run(argv, world):
  assert argv[:2] == ['compute', 'tpus'], argv
  group, verb, rest = argv[2], argv[3], argv[4:]
  assert flag(rest, '--zone'), argv
  if group == 'tpu-vm':
    return tpu_vm(verb, rest, world)
  if group == 'queued-resources':
    return queued_resources(verb, rest, world)
  return unsupported(argv)


def tpu_vm(verb, rest, world):
  node = world['node']
  if verb == 'describe':
    if node is None:
      return not_found('node')
    assert flag(rest, '--format') == \
        'value(state,acceleratorType,queuedResource)', rest
    state = node['state']
    if world.get('node_states'):
      state = world['node_states'].pop(0)
    print(f"{state}\t{node['type']}\t{node.get('qr', '')}")
    return 0
  if verb == 'create':
    if node is not None:
      print('ERROR: (gcloud) ALREADY_EXISTS', file=sys.stderr)
      return 1
    if world.get('create_errors'):
      print(world['create_errors'].pop(0), file=sys.stderr)
      return 1
    make_node(world, flag(rest, '--accelerator-type'), '')
    return 0
  if verb == 'delete':
    if node is None:
      return not_found('node')
    remove_node(world)
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
    if verb == 'scp':
      return scp(rest, world)
    return ssh(rest, world)
  return unsupported(['tpu-vm', verb, *rest])


def make_node(world, accelerator, qr):
  world['node'] = {'state': 'READY', 'type': accelerator, 'qr': qr}
  for home in homes(world):
    os.makedirs(home, exist_ok=True)


def remove_node(world):
  kill_workers(world)
  for home in homes(world):
    shutil.rmtree(home, ignore_errors=True)
  world['node'] = None


def queued_resources(verb, rest, world):
  qr = world['qr']
  name = positional(rest)
  if verb == 'describe':
    if qr is None or qr['name'] != name:
      return not_found('queued resource')
    assert flag(rest, '--format') == 'value(state.state)', rest
    state = qr['states'][0]
    if len(qr['states']) > 1:
      qr['states'].pop(0)
    if state == 'ACTIVE' and world['node'] is None:
      make_node(world, qr['type'],
                f'projects/p/locations/z/queuedResources/{name}')
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
    node = world['node']
    if node is not None and node.get('qr', '').endswith('/' + name):
      if '--force' not in rest:
        print('ERROR: (gcloud) the queued resource has nodes', file=sys.stderr)
        return 1
      remove_node(world)
    world['qr'] = None
    return 0
  return unsupported(['queued-resources', verb, *rest])


# --- The workers -----------------------------------------------------------------


def next_outcome(world, key):
  outcome = world.get(key) and world[key].pop(0) or {}
  return {'rc': outcome} if isinstance(outcome, int) else outcome


def ssh(rest, world):
  command = flag(rest, '--command') or ''
  what = kind_of_command(command)
  if what in ('start', 'follow'):
    outcome = next_outcome(world, 'train' if what == 'follow' else 'start')
  else:
    outcome = {}
  if not os.environ.get('FAKE_TPU_WORKERS'):  # Record mode.
    rc = outcome.get('rc', 0)
    if what == 'status':
      rc = world.get('running', 4)
    elif what == 'logs':
      print(world.get('log', ''), end='')
  elif what == 'install':
    rc = install(rest, world)
  else:
    rc = execute(command, rest, world, outcome)
    if what == 'start' and 'rc' in outcome:
      rc = outcome['rc']
  if 'hours' in outcome:
    advance_clock(outcome['hours'] * 3600)
  if 'node_state' in outcome:
    if outcome['node_state'] is None:
      remove_node(world)
    else:
      world['node']['state'] = outcome['node_state']
  return rc


def advance_clock(seconds):
  path = os.environ.get('FAKE_CLOCK')
  if path:
    with open(path) as f:
      now = int(f.read())
    with open(path, 'w') as f:
      f.write(str(now + int(seconds)))


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
