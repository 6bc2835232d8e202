"""The launcher's command line, parsed by argparse and checked before anything
runs: each bad value is one `error:` line (exit 2) that names it and what is
valid. What follows from the options (the runtime version, seconds from
durations, the gcloud flags) is worked out here too."""

import argparse
import os
import re

# Google's "TPU software versions" table (cloud.google.com/tpu/docs/runtimes).
VERSIONS = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
            'v4': 'tpu-ubuntu2204-base', 'v5litepod': 'v2-alpha-tpuv5-lite',
            'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
VALUED = {'--name': 'alexnet-jax', '--zone': 'us-central2-b',
          '--accelerator-type': 'v4-32', '--version': '', '--project': '',
          '--config': 'configs/cifar10.py', '--workdir': '',
          '--tfds-data-dir': '', '--data-dir': '', '--worker-python': 'python3.11',
          '--valid-until-duration': '', '--node-count': '1',
          '--max-restarts': '3', '--restart-window': '24h', '--retry-for': '24h',
          '--stop-grace': '120'}
SWITCHES = ('--dry-run', '--queued', '--spot', '--reserved')
MODES = ('--attach', '--logs', '--stop')
SECONDS = {'TPU_POLL_SECONDS': 30, 'TPU_RETRY_SECONDS': 60,
           'TPU_LOG_COPY_SECONDS': 60}
UNITS = {'': 1, 's': 1, 'm': 60, 'h': 3600, 'd': 86400}
SHARED = "every TPU host reads it; a worker's disk is its own"


class UsageError(Exception):
  """Bad input: one `error:` line, exit 2, nothing run."""


class Help(Exception):
  """-h/--help: the help text, exit 0."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UsageError(_plain(message))


def _plain(message):
  """argparse's message in this launcher's words."""
  rules = ((r'argument (\S+): expected one argument', '{0} needs a value'),
           (r'argument (\S+): ignored explicit', '{0} takes no value'),
           (r'argument (\S+): not allowed with argument (\S+)',
            '{1} and {0} exclude each other'),
           (r'unrecognized arguments: (-[^=\s]+)', 'unknown option: {0} (see '
            '--help)'),
           (r'unrecognized arguments: (\S+)', 'unexpected argument: {0} '
            '(arguments for alexnet_jax.main go after --)'))
  for pattern, words in rules:
    match = re.match(pattern, message)
    if match:
      return words.format(*match.groups())
  return message


def fail(message):
  raise UsageError(message)


def parse(argv, environ=os.environ, repo='.'):
  """The options (argparse's namespace, dashes as underscores) plus `mode`,
  `main_args` and the numbers worked out from them."""
  cut = argv.index('--') if '--' in argv else len(argv)
  argv, main_args = argv[:cut], argv[cut + 1:]
  parser = _Parser(prog='tpu_vm.py', add_help=False, allow_abbrev=False)
  for flag in VALUED:
    parser.add_argument(flag)
  for flag in SWITCHES + ('-h', '--help'):
    parser.add_argument(flag, action='store_true')
  modes = parser.add_mutually_exclusive_group()
  for flag in MODES:
    modes.add_argument(flag, action='store_true')
  o = parser.parse_args(argv)
  if o.help:
    raise Help()
  for flag, default in VALUED.items():
    key = flag[2:].replace('-', '_')
    if getattr(o, key) == '':
      fail(f'{flag} needs a non-empty value')
    setattr(o, key, default if getattr(o, key) is None else getattr(o, key))
  o.mode = next((m[2:] for m in MODES if getattr(o, m[2:])), 'launch')
  o.main_args = main_args
  _check_paths(o)
  _check_tpu(o)
  _check_numbers(o, environ)
  config = o.config.split(':')[0]  # config_flags takes PATH:ARG.
  if not os.path.isfile(os.path.join(repo, config)):
    fail(f'--config {config} not found in {repo} (it is shipped with the code)')
  o.gcloud_flags = [f'--zone={o.zone}'] + (
      [f'--project={o.project}'] if o.project else [])
  o.tiers = [f for f in ('--spot', '--reserved') if getattr(o, f[2:])]
  return o


def _gs(option, value, why):
  if value and not re.match(r'gs://[^/]+', value):
    fail(f'{option} must be a gs:// path ({why}), got: {value}')


def _check_paths(o):
  if o.mode == 'launch':
    if not o.workdir:
      fail('--workdir is required (a gs:// path shared by all TPU hosts)')
    if not (o.tfds_data_dir or o.data_dir):
      fail('--tfds-data-dir is required (a gs:// TFDS data dir), or '
           '--data-dir (a gs:// data_dir)')
  elif o.main_args:
    fail(f'arguments after -- are for starting a run, not --{o.mode}')
  _gs('--workdir', o.workdir, 'every TPU host writes there')
  _gs('--tfds-data-dir', o.tfds_data_dir, 'every TPU host reads it')
  _gs('--data-dir', o.data_dir, SHARED)
  for arg in o.main_args:
    key, _, value = arg.partition('=')
    if key in ('--config.data_dir', '--config.tfds_data_dir'):
      _gs(key, value, SHARED)


def _check_tpu(o):
  # GCP's rule for TPU node names: checked here, not minutes into a create.
  if not re.fullmatch(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?', o.name):
    fail('--name must be lowercase letters, digits and hyphens, starting '
         f'with a letter, got: {o.name}')
  if not re.fullmatch(r'[A-Za-z0-9._+-]+', o.worker_python):
    fail('--worker-python must be a command name such as python3.11, got: '
         f'{o.worker_python}')
  family = re.fullmatch(r'([a-z][a-z0-9]*)-[1-9][0-9]*', o.accelerator_type)
  if not family:
    fail('--accelerator-type must be FAMILY-SIZE such as v4-32, '
         f'v5litepod-16, v5p-8 or v6e-8, got: {o.accelerator_type}')
  o.version = o.version or VERSIONS.get(family[1]) or fail(
      f'no default --version for accelerator family {family[1]} (known: v2, '
      'v3, v4, v5litepod (v5e), v5p, v6e); pass --version explicitly')
  if not re.fullmatch(r'[1-9][0-9]*', o.node_count):
    fail(f'--node-count must be a positive integer, got: {o.node_count}')
  if o.node_count != '1':
    fail(f'--node-count={o.node_count}: Multislice (more than one slice) is '
         'not supported by this launcher; use one larger slice')
  if o.spot and o.reserved:
    fail('--spot and --reserved exclude each other')
  if o.valid_until_duration and not o.queued:
    fail('--valid-until-duration needs --queued')
  if o.valid_until_duration and not re.fullmatch(r'[0-9][0-9a-z]*',
                                                 o.valid_until_duration):
    fail('--valid-until-duration must be a gcloud duration such as 6h or 2d, '
         f'got: {o.valid_until_duration}')


def _seconds(option, text):
  match = re.fullmatch(r'([0-9]+)([smhd]?)', text)
  if not match:
    fail(f'{option} must be a duration such as 90m, 24h, 2d or 3600 '
         f'(seconds), got: {text}')
  return int(match[1]) * UNITS[match[2]]


def _check_numbers(o, environ):
  for option, what in (('--max-restarts', 'a non-negative integer'),
                       ('--stop-grace', 'a non-negative integer (seconds)')):
    value = getattr(o, option[2:].replace('-', '_'))
    if not re.fullmatch(r'[0-9]+', value):
      fail(f'{option} must be {what}, got: {value}')
  o.max_restarts, o.stop_grace = int(o.max_restarts), int(o.stop_grace)
  o.window_text, o.retry_text = o.restart_window, o.retry_for
  o.restart_window = _seconds('--restart-window', o.window_text)
  o.retry_for = _seconds('--retry-for', o.retry_text)
  if not o.restart_window:
    fail(f'--restart-window must be longer than 0, got: {o.window_text}')
  for var, default in SECONDS.items():
    value = environ.get(var) or str(default)
    if not re.fullmatch(r'[0-9]+', value):
      fail(f'{var} must be a non-negative integer, got: {value}')
    setattr(o, var[4:].lower(), int(value))
  if not o.log_copy_seconds:
    fail('TPU_LOG_COPY_SECONDS must be a positive integer, got: 0')
