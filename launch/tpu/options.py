"""The command line: parsed by argparse and checked before anything runs, each
bad value one `error:` line that names it and what is valid (exit 2); and
what follows from it (the runtime version, seconds, the gcloud flags)."""

import argparse
import os
import re

# Google's "TPU software versions" table (cloud.google.com/tpu/docs/runtimes).
VERSIONS = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
            'v4': 'tpu-ubuntu2204-base', 'v5litepod': 'v2-alpha-tpuv5-lite',
            'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
DEFAULTS = {'name': 'alexnet-jax', 'zone': 'us-central2-b',
            'accelerator-type': 'v4-32', 'config': 'configs/cifar10.py',
            'worker-python': 'python3.11', 'node-count': '1',
            'max-restarts': '3', 'restart-window': '24h', 'retry-for': '24h',
            'stop-grace': '120', 'version': '', 'project': '', 'workdir': '',
            'tfds-data-dir': '', 'data-dir': '', 'valid-until-duration': ''}
SWITCHES = ('dry-run', 'queued', 'spot', 'reserved', 'help')
DURATION = '([0-9]+)([smhd]?)'
SHAPES = (  # Each option's shape, and in words; a name's is GCP's rule.
    ('name', '[a-z]([-a-z0-9]{0,61}[a-z0-9])?', 'lowercase letters, digits '
     'and hyphens, starting with a letter'),
    ('worker-python', '[A-Za-z0-9._+-]+', 'a command name such as '
     'python3.11'),
    ('accelerator-type', '[a-z][a-z0-9]*-[1-9][0-9]*', 'FAMILY-SIZE such as '
     'v4-32, v5litepod-16, v5p-8 or v6e-8'),
    ('node-count', '[1-9][0-9]*', 'a positive integer'),
    ('max-restarts', '[0-9]+', 'a non-negative integer'),
    ('stop-grace', '[0-9]+', 'a non-negative integer (seconds)'),
    ('restart-window', DURATION, 'a duration such as 90m, 24h, 2d or 3600 '
     '(seconds)'),
    ('retry-for', DURATION, 'a duration such as 90m, 24h, 2d or 3600 '
     '(seconds)'),
    ('valid-until-duration', '([0-9][0-9a-z]*)?', 'a gcloud duration such '
     'as 6h or 2d'))
SECONDS = {'TPU_POLL_SECONDS': 30, 'TPU_RETRY_SECONDS': 60,
           'TPU_LOG_COPY_SECONDS': 60}
UNITS = {'': 1, 's': 1, 'm': 60, 'h': 3600, 'd': 86400}
# argparse's messages, in this launcher's words.
PLAIN = ((r'argument (\S+): expected one argument', '{0} needs a value'),
         (r'argument (\S+): ignored explicit', '{0} takes no value'),
         (r'argument (\S+): not allowed with argument (\S+)',
          '{1} and {0} exclude each other'),
         (r'unrecognized arguments: (-[^=\s]+)', 'unknown option: {0} (see '
          '--help)'),
         (r'unrecognized arguments: (\S+)', 'unexpected argument: {0} '
          '(arguments for alexnet_jax.main go after --)'))
SHARED = "every TPU host reads it; a worker's disk is its own"


class UsageError(Exception):
  """Bad input: one `error:` line, exit 2, nothing run."""


class Help(Exception):
  """-h/--help: the help text, exit 0."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    for pattern, words in PLAIN:
      match = re.match(pattern, message)
      if match:
        fail(words.format(*match.groups()))
    fail(message)


def fail(message):
  raise UsageError(message)


def _key(option):
  return option.replace('-', '_')


def parse(argv, environ=os.environ, repo='.'):
  """argparse's namespace (dashes as underscores), plus `mode`, `main_args`
  and what follows from the options."""
  cut = argv.index('--') if '--' in argv else len(argv)
  parser = _Parser(prog='tpu_vm.py', add_help=False, allow_abbrev=False)
  for option in DEFAULTS:
    parser.add_argument('--' + option)
  for option in SWITCHES:
    parser.add_argument('--' + option, *['-h'] * (option == 'help'),
                        action='store_true')
  modes = parser.add_mutually_exclusive_group()
  for mode in ('attach', 'logs', 'stop'):
    modes.add_argument('--' + mode, action='store_true')
  o = parser.parse_args(argv[:cut])
  if o.help:
    raise Help()
  for option, default in DEFAULTS.items():
    value = getattr(o, _key(option))
    if value == '':
      fail(f'--{option} needs a non-empty value')
    setattr(o, _key(option), default if value is None else value)
  o.mode = next((m for m in ('attach', 'logs', 'stop') if getattr(o, m)),
                'launch')
  o.main_args = argv[cut + 1:]
  _check_paths(o, repo)
  _check_values(o, environ)
  o.gcloud_flags = [f'--zone={o.zone}'] + [f'--project={o.project}'] * bool(
      o.project)
  o.tiers = ['--spot'] * o.spot + ['--reserved'] * o.reserved
  return o


def _check_paths(o, repo):
  if o.mode == 'launch' and not o.workdir:
    fail('--workdir is required (a gs:// path shared by all TPU hosts)')
  if o.mode == 'launch' and not (o.tfds_data_dir or o.data_dir):
    fail('--tfds-data-dir is required (a gs:// TFDS data dir), or '
         '--data-dir (a gs:// data_dir)')
  if o.mode != 'launch' and o.main_args:
    fail(f'arguments after -- are for starting a run, not --{o.mode}')
  paths = [('--workdir', o.workdir, 'every TPU host writes there'),
           ('--tfds-data-dir', o.tfds_data_dir, 'every TPU host reads it'),
           ('--data-dir', o.data_dir, SHARED)] + [
               (key, value, SHARED) for key, _, value in (
                   a.partition('=') for a in o.main_args)
               if key in ('--config.data_dir', '--config.tfds_data_dir')]
  for option, value, why in paths:
    if value and not re.match(r'gs://[^/]+', value):
      fail(f'{option} must be a gs:// path ({why}), got: {value}')
  config = o.config.split(':')[0]  # config_flags takes PATH:ARG.
  if not os.path.isfile(os.path.join(repo, config)):
    fail(f'--config {config} not found in {repo} (it is shipped with the code)')


def _check_values(o, environ):
  for option, shape, what in SHAPES:
    if not re.fullmatch(shape, getattr(o, _key(option))):
      fail(f'--{option} must be {what}, got: {getattr(o, _key(option))}')
  family = o.accelerator_type.rsplit('-', 1)[0]
  o.version = o.version or VERSIONS.get(family) or fail(
      f'no default --version for accelerator family {family} (known: v2, '
      'v3, v4, v5litepod (v5e), v5p, v6e); pass --version explicitly')
  if o.node_count != '1':
    fail(f'--node-count={o.node_count}: Multislice (more than one slice) is '
         'not supported by this launcher; use one larger slice')
  if o.spot and o.reserved:
    fail('--spot and --reserved exclude each other')
  if o.valid_until_duration and not o.queued:
    fail('--valid-until-duration needs --queued')
  o.max_restarts, o.stop_grace = int(o.max_restarts), int(o.stop_grace)
  for option in ('restart_window', 'retry_for'):
    text = getattr(o, option)
    number, unit = re.fullmatch(DURATION, text).groups()
    setattr(o, option + '_text', text)
    setattr(o, option, int(number) * UNITS[unit])
  if not o.restart_window:
    fail(f'--restart-window must be longer than 0, got: '
         f'{o.restart_window_text}')
  for var, default in SECONDS.items():
    value = environ.get(var) or str(default)
    if not re.fullmatch(r'[0-9]+', value):
      fail(f'{var} must be a non-negative integer, got: {value}')
    setattr(o, var[4:].lower(), int(value))
  if not o.log_copy_seconds:
    fail('TPU_LOG_COPY_SECONDS must be a positive integer, got: 0')
