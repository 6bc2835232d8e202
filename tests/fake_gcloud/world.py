"""The simulated Google Cloud behind both fake gclouds (in-process and the
binary): one TPU VM, one queued resource, Cloud Storage, and what training
does, scripted by a test. `World.call(argv)` is one gcloud command: parsed
as gcloud parses it (spec.py), then done to the world, answering with the
status, stdout and stderr the real command gives:

  describe of a missing resource: NOT_FOUND (exit 1), worded as the real
    API error (github.com/marin-community/marin/issues/3404 shows one);
  a create of a name in use: ALREADY_EXISTS; a stockout: the test's error;
  ssh and scp need a READY VM (googlecloudsdk/command_lib/compute/tpus/
    tpu_vm/ssh.py ValidateTPUState): PREEMPTED, TERMINATED, STOPPED... are an
    error (exit 1), CREATING and the like a warning and a connection that
    fails (exit 255); --worker is parsed and checked as ParseWorkerFlag does;
  `tpu-vm ssh` exits with the remote command's status (with several
    workers, the first non-zero one in worker order: WaitForBatchCompletion),
    255 when the connection fails (ssh.CommandError's exit code);
  queued-resources delete without --force refuses a resource whose VM still
    exists unless it is FAILED or SUSPENDED (the REST reference's `force`);
  storage cp/cat/ls: a missing object is `The following URLs matched no
    objects or files`, an empty listing `One or more URLs matched no
    objects.` (googlecloudsdk/command_lib/storage), a missing bucket 404.
The gcloud configuration is the one `gcloud init` leaves: an account, a
project (`my-project`), no compute/zone (so --zone is needed).

The world is a JSON-able dict:
  node: null, or {"name", "state", "type", "qr"}; qr is the queued resource
        that made it ("projects/P/locations/Z/queuedResources/NAME" or "")
  node_states: states the next `tpu-vm describe` calls report, one each
  qr: null, or {"name", "node", "type", "states"}: each describe reports
      states[0] and drops it while more are left; ACTIVE makes the VM
  qr_states: the states a queued resource created now goes through
  create_errors: stderr of the next `create` calls, which fail (status 1)
  workers: how many workers a VM has (default 2)
  running: what `tpu_worker.sh status` answers in record mode (default 4)
  start, train: the outcomes of the `tpu_worker.sh start` and `follow` calls,
      one each: a status, or {"rc", "node_state" (null deletes the VM),
      "hours" (the clock moves on), "drop_after_line", "preempt_after_line"
      (execute mode, see workers.py)}
  log: what `tpu_worker.sh logs` prints in record mode
Record mode runs no remote command (RecordedWorkers); execute mode
(workers.py) runs them on real worker folders.
"""

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import spec

PROJECT, ACCOUNT = 'my-project', 'user@example.com'
PROJECT_ID = re.compile(r'[a-z][-a-z0-9]{4,28}[a-z0-9]')
ZONE = re.compile(r'[a-z]+-[a-z]+[0-9]+-[a-z]')
NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')
ACCELERATOR = re.compile(r'v[0-9]+[a-z]*-[0-9]+')
TERMINAL = ('PREEMPTED', 'TERMINATED')
UNUSABLE = ('STOPPED', 'STOPPING', 'DELETING', 'HIDDEN')
REMOTE = {'status': 'tpu_worker.sh status', 'start': 'tpu_worker.sh start',
          'follow': 'tpu_worker.sh follow', 'logs': 'tpu_worker.sh logs',
          'stopped': 'tpu_worker.sh stopped', 'install': 'pip install',
          'stop': 'pgrep'}
SSH_FAILED = '[/usr/bin/ssh] exited with return code [255].'


def kind_of(command):
  """Which of the launcher's remote steps an ssh --command is."""
  return next((k for k, text in REMOTE.items() if text in command), 'other')


class Failed(Exception):
  """A gcloud command that fails: its status and its stderr."""

  def __init__(self, status, message):
    super().__init__(message)
    self.status = status


class World:

  def __init__(self, state, storage, workers, clock=None, echo=None):
    self.state, self.storage, self.workers = state, storage, workers
    self.clock = clock  # advance(seconds), for the `hours` outcome.
    self.echo = echo  # A stream stderr goes to as it comes (the binary).
    for key in ('node', 'qr'):
      state.setdefault(key, None)
    state.setdefault('workers', 2)

  def call(self, argv):
    """(status, stdout, stderr) of `gcloud ARGV`."""
    try:
      call = spec.parse(argv)
    except spec.UsageError as e:
      return 2, '', f'{e}\n'
    self.prog, self.out, self.err = f'gcloud.{call.path.replace(" ", ".")}', [], []
    try:
      self._configured(call)
      verb = call.path.split()[-1]
      status = getattr(self, call.path.split()[-2].replace('-', '_') + '_' +
                       verb)(call) or 0
    except Failed as e:
      self._say(self.err, f'ERROR: ({self.prog}) {e}')
      status = e.status
    return status, ''.join(self.out), ''.join(self.err)

  def _say(self, stream, *lines):
    for line in filter(None, lines):
      line += '' if line.endswith('\n') else '\n'
      if stream is self.err and self.echo:
        self.echo.write(line)
        self.echo.flush()
      else:
        stream.append(line)

  def _configured(self, call):
    project = call.flag('--project', PROJECT)
    if not PROJECT_ID.fullmatch(project):
      self.prog = 'gcloud'
      raise Failed(1, 'The project property must be set to a valid project '
                   f'ID, [{project}] is not a valid project ID.\nTo set your '
                   'project, run:\n\n  $ gcloud config set project PROJECT_ID')
    self.project = project
    if call.path.startswith('storage') or '--zone' in call.flags:
      self.zone = call.flag('--zone')
      if self.zone is None or ZONE.fullmatch(self.zone):
        return
      raise Failed(1, f'INVALID_ARGUMENT: zone {self.zone} is not a zone')
    if call.path.split()[-1] in ('ssh', 'scp'):
      raise Failed(1, 'The required property [zone] is not currently set.\n'
                   'It can be set on a per-command basis by re-running your '
                   'command with the [--zone] flag.\n\nYou may set it for '
                   'your current workspace by running:\n\n  $ gcloud config '
                   'set compute/zone VALUE\n\nor it can be set temporarily by '
                   'the environment variable [CLOUDSDK_COMPUTE_ZONE]')
    kind = 'tpu' if 'tpu-vm' in call.path else 'queued_resource'
    raise Failed(1, f'Error parsing [{kind}].\nThe [{kind}] resource is not '
                 'properly specified.\nFailed to find attribute [zone]. The '
                 'attribute can be set in the following ways: \n- provide the '
                 f'argument `{kind}` on the command line with a fully '
                 'specified name\n- provide the argument `--zone` on the '
                 'command line\n- set the property `compute/zone`')

  # --- Resources ------------------------------------------------------------

  def _resource(self, kind, name):
    return f'projects/{self.project}/locations/{self.zone}/{kind}/{name}'

  def _not_found(self, kind, name):
    resource = self._resource(kind, name)
    return Failed(1, f"NOT_FOUND: Resource '{resource}' was not found. This "
                  f'command is authenticated as {ACCOUNT} which is the active '
                  'account specified by the [core/account] property\n- '
                  "'@type': type.googleapis.com/google.rpc.ResourceInfo\n  "
                  f'resourceName: {resource}')

  def _node(self, name, usable=False):
    node = self.state['node']
    if node is None or node['name'] != name.split('/')[-1]:
      raise self._not_found('nodes', name)
    if usable and node['state'] in TERMINAL:
      raise Failed(1, f'This TPU has terminal state "{node["state"]}", so it '
                   'cannot be used anymore.')
    if usable and node['state'] in UNUSABLE:
      raise Failed(1, f'This TPU has state "{node["state"]}", so it cannot '
                   'be currently connected to.')
    if usable and node['state'] != 'READY':
      self._say(self.err, f'WARNING: The TPU VM "{name}" is in state '
                      f'"{node["state"]}", therefore the TPU may not be '
                      'available or reachable. If the connection fails, '
                      'please try again later.')
      raise Failed(255, SSH_FAILED)
    return node

  def _print(self, call, fields):
    """--format=value(a,b,...): the fields, tab-separated (the only format
    the launcher asks for); otherwise a YAML-like listing."""
    wanted = re.fullmatch(r'value\((.*)\)', call.flag('--format', ''))
    if wanted:
      self._say(self.out, '\t'.join(fields.get(k, '') for k in
                                    wanted[1].split(',')))
    else:
      self._say(self.out, *(f'{k}: {v}' for k, v in sorted(fields.items())))

  def tpu_vm_describe(self, call):
    name = call.positionals[0]
    node, states = self._node(name), self.state.get('node_states')
    state = states.pop(0) if states else node['state']
    self._print(call, {'state': state, 'acceleratorType': node['type'],
                       'queuedResource': node['qr'],
                       'name': self._resource('nodes', node['name'])})

  def _check_new(self, call, name, kind):
    if not NAME.fullmatch(name):
      raise Failed(1, f'INVALID_ARGUMENT: {kind} id "{name}" must match '
                   '[a-z]([-a-z0-9]*[a-z0-9])?')
    if not ACCELERATOR.fullmatch(call.flag('--accelerator-type', 'v2-8')):
      raise Failed(1, 'INVALID_ARGUMENT: unknown accelerator type '
                   f'{call.flag("--accelerator-type")}')
    if call.flag('--spot') and call.flag('--reserved'):
      raise Failed(1, 'INVALID_ARGUMENT: spot and reserved exclude each other')
    if self.state.get('create_errors'):
      self._say(self.err, self.state['create_errors'].pop(0))
      return 1
    return 0

  def tpu_vm_create(self, call):
    name = call.positionals[0]
    if self.state['node'] is not None:
      raise Failed(1, f"ALREADY_EXISTS: Resource "
                   f"'{self._resource('nodes', name)}' already exists")
    if self._check_new(call, name, 'node'):
      return 1
    self._make_node(name, call.flag('--accelerator-type', 'v2-8'), '')

  def _make_node(self, name, accelerator, qr):
    self.state['node'] = {'name': name, 'state': 'READY', 'type': accelerator,
                          'qr': qr}
    self.workers.boot(self.state)

  def _remove_node(self):
    self.workers.wipe(self.state)
    self.state['node'] = None

  def tpu_vm_delete(self, call):
    self._node(call.positionals[0])
    self._remove_node()

  def tpu_vm_start(self, call):
    node = self._node(call.positionals[0])
    if node['state'] != 'STOPPED':
      raise Failed(1, f'FAILED_PRECONDITION: node is {node["state"]}, not '
                   'STOPPED')
    node['state'] = 'READY'

  def _workers(self, call, multiple):
    """gcloud's ParseWorkerFlag: all, N, N,M or N-M, within the VM."""
    n, text = self.state['workers'], call.flag('--worker', '0')
    chosen = set(range(n)) if text.upper() == 'ALL' else set()
    for part in filter(None, text.split(',') if not chosen else []):
      bounds = part.split('-')
      if not all(b.isdigit() for b in bounds) or len(bounds) > 2 or (
          len(bounds) == 2 and int(bounds[0]) >= int(bounds[1])):
        raise Failed(1, f'Invalid value for [--worker]: unable to parse '
                     f'worker ID {part}. Please only use numbers.')
      chosen.update(range(int(bounds[0]), int(bounds[-1]) + 1))
    if not chosen or max(chosen) >= n:
      raise Failed(1, f'Invalid value for [--worker]: worker index '
                   f'{max(chosen or [0])} is larger than the valid worker '
                   'indexes on this TPU VM. Please only use indexes in the '
                   f'range [0, {n - 1}], inclusive.')
    if len(chosen) > 1 and not multiple:
      raise Failed(1, 'Invalid value for [--worker]: cannot target multiple '
                   'workers without the `--command` flag.')
    return sorted(chosen)

  def tpu_vm_ssh(self, call):
    name = call.positionals[0].split('@')[-1]
    self._node(name, usable=True)
    chosen = self._workers(call, bool(call.flag('--command')))
    command = call.flag('--command', '')
    self._say(self.err, *(f'SSH: Attempting to connect to worker {i}...'
                          for i in chosen))
    what = kind_of(command)
    outcome = self._next({'start': 'start', 'follow': 'train'}.get(what))
    status, out, err = self.workers.ssh(self.state, command, chosen, outcome)
    self._say(self.out, out)
    self._say(self.err, err)
    self._after(outcome)
    if status == 255:
      raise Failed(255, SSH_FAILED)
    return status

  def _next(self, key):
    outcome = self.state[key].pop(0) if key and self.state.get(key) else {}
    return {'rc': outcome} if isinstance(outcome, int) else outcome

  def _after(self, outcome):
    if 'hours' in outcome and self.clock:
      self.clock.advance(outcome['hours'] * 3600)
    if 'node_state' in outcome:
      if outcome['node_state'] is None:
        self._remove_node()
      else:
        self.state['node']['state'] = outcome['node_state']

  def tpu_vm_scp(self, call):
    *sources, dest = call.positionals
    remote = [p for p in call.positionals if re.match(r'([^/@:]+@)?[^/:]+:',
                                                      p)]
    if remote != [dest]:
      raise Failed(1, 'All sources must be local files when destination is '
                   'remote.' if dest in remote else 'Source(s) must be remote '
                   'when destination is local.')
    name, path = dest.split('@')[-1].split(':', 1)
    self._node(name, usable=True)
    chosen = self._workers(call, True)
    for source in sources:
      if not os.path.isfile(source):
        raise Failed(1, '[/usr/bin/scp] exited with return code [1].')
    return self.workers.scp(self.state, sources, path, chosen)

  # --- Queued resources ---------------------------------------------------

  def _qr(self, name):
    qr = self.state['qr']
    if qr is None or qr['name'] != name.split('/')[-1]:
      raise self._not_found('queuedResources', name)
    return qr

  def queued_resources_describe(self, call):
    name = call.positionals[0]
    qr = self._qr(name)
    state = qr['states'][0]
    if len(qr['states']) > 1:
      qr['states'].pop(0)
    if state == 'ACTIVE' and self.state['node'] is None:
      self._make_node(qr['node'], qr['type'],
                      self._resource('queuedResources', qr['name']))
    self._print(call, {'state.state': state,
                       'name': self._resource('queuedResources', qr['name'])})

  def queued_resources_create(self, call):
    name = call.positionals[0]
    if self.state['qr'] is not None:
      raise Failed(1, 'ALREADY_EXISTS: Resource '
                   f"'{self._resource('queuedResources', name)}' already "
                   'exists')
    duration = call.flag('--valid-until-duration')
    if duration and not re.fullmatch(r'([0-9]+[smhd])+', duration):
      self.prog = 'gcloud'
      raise Failed(1, f"Duration unit '{duration}' must be preceded by a "
                   'number.')
    if self._check_new(call, name, 'queued resource'):
      return 1
    self.state['qr'] = {'name': name, 'node': call.flag('--node-id'),
                        'type': call.flag('--accelerator-type'),
                        'states': list(self.state.get('qr_states') or
                                       ['ACTIVE'])}

  def queued_resources_delete(self, call):
    qr = self._qr(call.positionals[0])
    node = self.state['node']
    if node and node['qr'].endswith('/' + qr['name']):
      if not call.flag('--force') and qr['states'][0] not in ('FAILED',
                                                             'SUSPENDED'):
        raise Failed(1, 'FAILED_PRECONDITION: the queued resource has nodes; '
                     'delete them first, or pass --force')
      self._remove_node()
    self.state['qr'] = None

  # --- Cloud Storage --------------------------------------------------------

  def storage_cp(self, call):
    *sources, dest = call.positionals
    if not sources:
      raise Failed(1, 'Must have URL arguments if not reading paths from '
                   'stdin.')
    for source in sources:
      data = self.storage.read(source) if source.startswith('gs://') else (
          open(source, 'rb').read() if os.path.isfile(source) else None)
      if data is None:
        raise Failed(1, 'The following URLs matched no objects or files:\n'
                     f'{source}')
      target = dest + os.path.basename(source) if dest.endswith('/') else dest
      if target.startswith('gs://'):
        self.storage.write(target, data)
      else:
        with open(target, 'wb') as f:
          f.write(data)

  def storage_cat(self, call):
    for url in call.positionals:
      if not url.startswith('gs://'):
        raise Failed(1, 'cat only works for valid cloud URLs.')
      data = self.storage.read(url)
      if data is None:
        raise Failed(1, f'The following URLs matched no objects or files:\n'
                     f'{url}')
      self.out.append(data.decode())  # As stored: no newline added.

  def storage_ls(self, call):
    found = [u for path in call.positionals for u in self.storage.list(path)]
    if not found:
      raise Failed(1, 'One or more URLs matched no objects.')
    self._say(self.out, *found)


class RecordedWorkers:
  """Record mode: no remote command runs; the launcher's remote steps answer
  as the world's script says."""

  def boot(self, state):
    pass

  wipe = boot

  def ssh(self, state, command, chosen, outcome):
    what = kind_of(command)
    if what == 'status':
      return state.get('running', 4), '', ''
    if what == 'logs':
      return 0, state.get('log', ''), ''
    return outcome.get('rc', 0), '', ''

  def scp(self, state, sources, path, chosen):
    return 0


# --- Cloud Storage backends ------------------------------------------------


def _split(url):
  bucket, _, name = url[len('gs://'):].partition('/')
  return bucket, name


class FolderStorage:
  """gs://BUCKET/NAME is ROOT/BUCKET/NAME; a bucket is a folder that
  exists."""

  def __init__(self, root):
    self.root = root

  def _path(self, url):
    bucket, name = _split(url)
    if not os.path.isdir(os.path.join(self.root, bucket)):
      raise Failed(1, f'HTTPError 404: The destination bucket gs://{bucket} '
                   'does not exist or the write to the destination must be '
                   'restarted')
    return os.path.join(self.root, bucket, name)

  def read(self, url):
    path = self._path(url)
    return open(path, 'rb').read() if os.path.isfile(path) else None

  def write(self, url, data):
    path = self._path(url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.part', 'wb') as f:
      f.write(data)
    os.replace(path + '.part', path)

  def list(self, url):
    folder = self._path(url)
    if not os.path.isdir(folder):
      return []
    return [url.rstrip('/') + '/' + e + ('/' if os.path.isdir(
        os.path.join(folder, e)) else '') for e in sorted(os.listdir(folder))]


class EmulatorStorage:
  """Cloud Storage's JSON API at STORAGE_EMULATOR_HOST (fake-gcs-server,
  tests/gcs_emulator.py): the trainer's checkpoints, the launcher's decision
  log and worker 0's log copies in one bucket."""

  def __init__(self, host):
    self.host = host.rstrip('/')

  def _request(self, path, data=None, method=None):
    request = urllib.request.Request(self.host + path, data=data,
                                     method=method)
    try:
      with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()
    except urllib.error.HTTPError as e:
      if e.code == 404:
        return None
      raise

  def read(self, url):
    bucket, name = _split(url)
    return self._request(f'/storage/v1/b/{bucket}/o/'
                         f'{urllib.parse.quote(name, safe="")}?alt=media')

  def write(self, url, data):
    bucket, name = _split(url)
    if self._request(f'/upload/storage/v1/b/{bucket}/o?uploadType=media&'
                     f'name={urllib.parse.quote(name, safe="")}', data,
                     'POST') is None:
      raise Failed(1, f'HTTPError 404: The destination bucket gs://{bucket} '
                   'does not exist or the write to the destination must be '
                   'restarted')

  def list(self, url):
    bucket, prefix = _split(url)
    listing = self._request(f'/storage/v1/b/{bucket}/o?delimiter=/&prefix='
                            f'{urllib.parse.quote(prefix, safe="")}')
    found = json.loads(listing or b'{}')
    return sorted([f'gs://{bucket}/{o["name"]}' for o in
                   found.get('items', [])] + [f'gs://{bucket}/{p}' for p in
                                              found.get('prefixes', [])])
