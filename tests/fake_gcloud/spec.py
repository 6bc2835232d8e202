"""The gcloud commands the TPU launcher and launch/tpu_worker.sh use, parsed
as gcloud parses them: one spec for the in-process fake (tests/tpu_fakes.py)
and the fake `gcloud` binary (gcloud.py), so a flag the real tool would
refuse fails the tests, with the real tool's words and exit status.

Source: Google Cloud SDK 528.0.0 (`gcloud version`), whose flags are those of
its static completion tree (data/cli/gcloud_completions.py) and of the
reference pages:
  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/create
  .../tpu-vm/delete, .../tpu-vm/describe, .../tpu-vm/ssh, .../tpu-vm/scp,
  .../tpu-vm/start
  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create
  .../queued-resources/delete, .../queued-resources/describe
  https://cloud.google.com/sdk/gcloud/reference/storage/cp, .../storage/cat,
  .../storage/ls
  https://cloud.google.com/sdk/gcloud/reference (GCLOUD WIDE FLAGS)
The errors are calliope's (googlecloudsdk/calliope/parser_extensions.py,
parser_errors.py, usage_text.py): an unknown flag is `ERROR: (gcloud.X.Y)
unrecognized arguments: ...` with `did you mean` from difflib over the
command's and gcloud-wide flags and the `gcloud help` hint, a missing
required argument `argument NAME: Must be specified.` with the usage, a
flag without its value `expected one argument`; all exit 2. Each was checked
against the real gcloud 528.0.0 (tests/test_fake_gcloud.py repeats that
where a gcloud is installed). Hidden flags are not modelled: refused here.
"""

import dataclasses
import difflib

# Flag: 1 takes a value, 0 is a switch. GCLOUD WIDE FLAGS (-q is --quiet).
GLOBAL = {'--access-token-file': 1, '--account': 1, '--billing-project': 1,
          '--configuration': 1, '--flags-file': 1, '--flatten': 1,
          '--format': 1, '--help': 0, '-h': 0,
          '--impersonate-service-account': 1, '--log-http': 0, '--project': 1,
          '--quiet': 0, '--trace-token': 1, '--user-output-enabled': 0,
          '--verbosity': 1}
SHORT = {'-q': '--quiet'}
CHOICES = {'--verbosity': 'critical debug error info none warning',
           '--type': 'v2 v3 v4', '--strict-host-key-checking': 'ask no yes',
           '--retention-mode': 'Locked Unlocked'}
HINT = ('To search the help text of gcloud commands, run:\n'
        '  gcloud help -- SEARCH_TERMS')
SSH_KEYS = {'--dry-run': 0, '--force-key-file-overwrite': 0,
            '--internal-ip': 0, '--plain': 0, '--ssh-key-expiration': 1,
            '--ssh-key-expire-after': 1, '--ssh-key-file': 1,
            '--strict-host-key-checking': 1, '--worker': 1, '--zone': 1}
TPU = ('TPU', 'resource')
QR = ('QUEUED_RESOURCE', 'resource')
NODE = {'--accelerator-type': 1, '--async': 0, '--data-disk': 1,
        '--description': 1, '--internal-ips': 0, '--labels': 1,
        '--metadata': 1, '--metadata-from-file': 1, '--network': 1,
        '--range': 1, '--reserved': 0, '--scopes': 1, '--service-account': 1,
        '--shielded-secure-boot': 0, '--spot': 0, '--subnetwork': 1,
        '--tags': 1, '--topology': 1, '--type': 1, '--zone': 1}
STORAGE = {'--additional-headers': 1, '--decryption-keys': 1}


@dataclasses.dataclass
class Command:
  usage: str  # What `Usage: gcloud PATH` is followed by.
  flags: dict
  positionals: tuple = ()  # (metavar, nargs): 1, '+', '*' or 'resource'.
  required: tuple = ()
  one_of: tuple = ()  # Required groups: (usage, the first flag of each).
  shorts: dict = dataclasses.field(default_factory=dict)
  remainder: bool = False  # `-- ARGS` goes to ssh.


COMMANDS = {
    'compute tpus tpu-vm create': Command(
        '(TPU : --zone=ZONE) --version=VERSION [optional flags]',
        dict(NODE, **{'--version': 1, '--preemptible': 0,
                      '--queue-count': 1}), (TPU,), ('--version',)),
    'compute tpus tpu-vm delete': Command(
        '(TPU : --zone=ZONE) [optional flags]', {'--async': 0, '--zone': 1},
        (TPU,)),
    'compute tpus tpu-vm describe': Command(
        '(TPU : --zone=ZONE) [optional flags]', {'--zone': 1}, (TPU,)),
    'compute tpus tpu-vm start': Command(
        '(TPU : --zone=ZONE) [optional flags]', {'--async': 0, '--zone': 1},
        (TPU,)),
    'compute tpus tpu-vm ssh': Command(
        '[USER@]TPU [optional flags] [-- SSH_ARGS ...]',
        dict(SSH_KEYS, **{'--command': 1, '--output-directory': 1,
                          '--ssh-flag': 1}), (('[USER@]TPU', 1),),
        remainder=True),
    'compute tpus tpu-vm scp': Command(
        '[[USER@]INSTANCE:]SRC [[[USER@]INSTANCE:]SRC ...] '
        '[[USER@]INSTANCE:]DEST [optional flags]',
        dict(SSH_KEYS, **{'--compress': 0, '--recurse': 0, '--scp-flag': 1}),
        (('[[USER@]INSTANCE:]SRC [[[USER@]INSTANCE:]SRC ...]', '+'),
         ('[[USER@]INSTANCE:]DEST', 1))),
    'compute tpus queued-resources create': Command(
        '(QUEUED_RESOURCE : --zone=ZONE) --runtime-version=RUNTIME_VERSION '
        '(--accelerator-type=ACCELERATOR_TYPE | --topology=TOPOLOGY '
        '--type=TYPE) (--node-id=NODE_ID | [--node-count=NODE_COUNT : '
        '--node-prefix=NODE_PREFIX]) [optional flags]',
        dict(NODE, **{'--guaranteed': 0, '--node-count': 1, '--node-id': 1,
                      '--node-prefix': 1, '--reservation-host-folder': 1,
                      '--reservation-host-organization': 1,
                      '--reservation-host-project': 1,
                      '--runtime-version': 1, '--valid-after-duration': 1,
                      '--valid-after-time': 1, '--valid-until-duration': 1,
                      '--valid-until-time': 1}),
        (QR,), ('--runtime-version',),
        (('(--accelerator-type | --topology --type)',
          ('--accelerator-type', '--topology')),
         ('(--node-id | [--node-count : --node-prefix])',
          ('--node-id', '--node-count')))),
    'compute tpus queued-resources delete': Command(
        '(QUEUED_RESOURCE : --zone=ZONE) [optional flags]',
        {'--async': 0, '--force': 0, '--zone': 1}, (QR,)),
    'compute tpus queued-resources describe': Command(
        '(QUEUED_RESOURCE : --zone=ZONE) [optional flags]', {'--zone': 1},
        (QR,)),
    'storage cp': Command(
        '[SOURCE ...] DESTINATION [optional flags]',
        dict(STORAGE, **{
            '--all-versions': 0, '--cache-control': 1, '--canned-acl': 1,
            '--clear-custom-metadata': 0, '--content-disposition': 1,
            '--content-encoding': 1, '--content-language': 1,
            '--content-md5': 1, '--content-type': 1, '--continue-on-error': 0,
            '--custom-metadata': 1, '--custom-time': 1, '--daisy-chain': 0,
            '--do-not-decompress': 0, '--encryption-key': 1,
            '--gzip-in-flight': 1, '--gzip-in-flight-all': 0,
            '--gzip-local': 1, '--gzip-local-all': 0,
            '--if-generation-match': 1, '--if-metageneration-match': 1,
            '--ignore-symlinks': 0, '--include-managed-folders': 0,
            '--manifest-path': 1, '--no-clobber': 0, '--preserve-acl': 0,
            '--preserve-posix': 0, '--preserve-symlinks': 0,
            '--print-created-message': 0, '--read-paths-from-stdin': 0,
            '--recursive': 0, '--remove-custom-metadata': 1,
            '--retain-until': 1, '--retention-mode': 1,
            '--skip-unsupported': 0, '--storage-class': 1,
            '--update-custom-metadata': 1}),
        (('SOURCE', '*'), ('DESTINATION', 1)),
        shorts={'-A': '--all-versions', '-n': '--no-clobber',
                '-c': '--continue-on-error', '-D': '--daisy-chain',
                '-L': '--manifest-path', '-P': '--preserve-posix',
                '-v': '--print-created-message', '-I': '--read-paths-from-stdin',
                '-R': '--recursive', '-r': '--recursive',
                '-U': '--skip-unsupported', '-s': '--storage-class',
                '-a': '--canned-acl', '--predefined-acl': '--canned-acl',
                '-p': '--preserve-acl', '--no-preserve-acl': '--preserve-acl',
                '-j': '--gzip-in-flight', '-J': '--gzip-in-flight-all',
                '-z': '--gzip-local', '-Z': '--gzip-local-all'}),
    'storage cat': Command(
        'URL [URL ...] [optional flags]',
        dict(STORAGE, **{'--display-url': 0, '--range': 1}),
        (('URL [URL ...]', '+'),), shorts={'-d': '--display-url',
                                           '-r': '--range'}),
    'storage ls': Command(
        '[PATH ...] [optional flags]',
        dict(STORAGE, **{'--all-versions': 0, '--buckets': 0, '--etag': 0,
                         '--exhaustive': 0,
                         '--fetch-encrypted-object-hashes': 0, '--format': 1,
                         '--full': 0, '--json': 0, '--long': 0,
                         '--next-page-token': 1, '--read-paths-from-stdin': 0,
                         '--readable-sizes': 0, '--recursive': 0,
                         '--soft-deleted': 0}),
        (('PATH', '*'),),
        shorts={'-a': '--all-versions', '-b': '--buckets', '-e': '--etag',
                '-I': '--read-paths-from-stdin', '-R': '--recursive',
                '-r': '--recursive', '-L': '--full', '-j': '--json',
                '-l': '--long'}),
}


class UsageError(Exception):
  """What gcloud prints on stderr for a command line it refuses; exit 2."""


@dataclasses.dataclass
class Call:
  path: str  # 'compute tpus tpu-vm ssh'
  flags: dict  # Long name: value (True for a switch); the last one wins.
  positionals: list
  remainder: list

  def flag(self, name, default=None):
    return self.flags.get(name, default)


def parse(argv):
  """The call, or UsageError with the words gcloud 528.0.0 prints."""
  path = next((p for p in COMMANDS if argv[:len(p.split())] == p.split()),
              None)
  if path is None:
    raise UsageError(f'ERROR: (gcloud) fake gcloud models no command {argv}')
  command, rest = COMMANDS[path], argv[len(path.split()):]
  remainder = []
  if command.remainder and '--' in rest:
    rest, remainder = rest[:rest.index('--')], rest[rest.index('--') + 1:]
  call, unknown = Call(path, {}, [], remainder), []
  words = iter(rest)
  for word in words:
    if not word.startswith('-') or word == '-':
      call.positionals.append(word)
      continue
    name, has_value, value = word.partition('=')
    name = command.shorts.get(name, SHORT.get(name, name))
    kind = command.flags.get(name, GLOBAL.get(name))
    if kind is None:
      unknown.append(word)
    elif kind == 0 and has_value:
      _refuse(path, f"argument {_shown(command, name)}: ignored explicit "
              f"argument '{value}'")
    elif kind == 0:
      call.flags[name] = True
    else:
      if not has_value:
        value = next(words, None)
        if value is None or value.startswith('-'):
          _refuse(path, f'argument {_shown(command, name)}: expected one '
                  'argument')
      if name in CHOICES and value not in CHOICES[name].split():
        raise UsageError(
            f'ERROR: ({_prog(path)}) argument {name}: Invalid choice: '
            f"'{value}'.\n\nValid choices are "
            f"[{', '.join(CHOICES[name].split())}].")
      call.flags[name] = value
  counts = _fit(command, len(call.positionals))
  unknown += call.positionals[sum(counts):]
  if unknown:
    raise UsageError(_unrecognized(path, command, unknown))
  _check_required(path, command, call, counts)
  return call


def _prog(path):
  return 'gcloud.' + path.replace(' ', '.')


def _shown(command, name):
  """How argparse names a flag: its short forms first, then the long one
  (the gcloud-wide --quiet/-q the other way round)."""
  if name == '--quiet':
    return '--quiet/-q'
  shorts = [s for s, n in command.shorts.items() if n == name and
            not s.startswith('--')]
  return '/'.join(shorts + [name])


def _fit(command, n):
  """How many positionals each metavar takes, the way argparse assigns
  them (fewest to the greedy ones first)."""
  counts = []
  for i, (_, nargs) in enumerate(command.positionals):
    later = sum(1 for _, k in command.positionals[i + 1:] if k in (1,
                                                                  'resource'))
    take = min(1, n) if nargs in (1, 'resource') else max(n - later, 0)
    if nargs == '+' and n and not take:
      take = 1
    counts.append(take)
    n -= take
  return counts


def usage(path, command):
  """The usage block gcloud prints after an argument error."""
  optional = sorted((set(command.flags) - set(command.required)) |
                    {'--help'}, key=lambda f: f[5:] if f.startswith('--no-')
                    else f[2:])
  lines, line = [], '  optional flags may be '
  for i, flag in enumerate(optional):
    word = flag + (' |' if i < len(optional) - 1 else '')
    if len(line) + 1 + len(word) > 80:
      lines.append(line)
      line = ' ' * 24
    line += ' ' + word
  lines.append(line)
  return (f'Usage: gcloud {path} {command.usage}\n' + '\n'.join(lines) +
          f'\n\nFor detailed information on this command and its flags, '
          f'run:\n  gcloud {path} --help')


def _refuse(path, message):
  raise UsageError(f'ERROR: ({_prog(path)}) {message}\n' +
                   usage(path, COMMANDS[path]))


def _unrecognized(path, command, unknown):
  choices = list(command.flags) + list(GLOBAL) + list(command.shorts) + ['-q']
  said = []
  for word in unknown:
    flag, _, value = word.partition('=')
    match = difflib.get_close_matches(flag.lower(), choices, 1)
    if (flag.startswith('--') or value) and match:
      said.append(f"{word} (did you mean '{match[0]}'?)")
    else:
      said.append(word)
  if len(said) > 1:
    return (f'ERROR: ({_prog(path)}) unrecognized arguments:\n  ' +
            '\n  '.join(said + [HINT]))
  return f'ERROR: ({_prog(path)}) unrecognized arguments: {said[0]} \n\n{HINT}'


def _check_required(path, command, call, counts):
  """calliope's order: a resource named by its flags but not its
  positional, then each required group, then every other missing one."""
  missing = []
  for (metavar, nargs), count in zip(command.positionals, counts):
    if count:
      continue
    if nargs == 'resource' and '--zone' in call.flags:
      _refuse(path, f'argument --zone: {metavar} must be specified.')
    if nargs == 'resource':
      missing.append(f'({metavar} : --zone=ZONE)')
    elif nargs != '*':
      missing.append(metavar)
  for group, flags in command.one_of:
    if sum(f in call.flags for f in flags) != 1:
      _refuse(path, f'Exactly one of {group} must be specified.')
  missing += [f for f in command.required if f not in call.flags]
  if missing:
    _refuse(path, f'argument {" ".join(missing)}: Must be specified.')

