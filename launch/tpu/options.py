"""The command line, from one table (the parser, --help and the checks): each
bad value is one `error:` line that names it and what is valid, exit 2,
before anything runs."""

import argparse
import os
import re
import textwrap

# Google's "TPU software versions" table (cloud.google.com/tpu/docs/runtimes).
VERSIONS = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
            'v4': 'tpu-ubuntu2204-base', 'v5litepod': 'v2-alpha-tpuv5-lite',
            'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
DURATION = '([0-9]+)([smhd]?)'
SUCH_AS = 'such as 90m, 24h, 2d or 3600 (seconds)'
COUNT = ('[0-9]+', 'a non-negative integer')
# --OPTION: default, metavar, help, and a value's shape: a regular expression
# and what it means (a name's is GCP's rule).
OPTIONS = {
    'name': ('alexnet-jax', 'NAME', 'the TPU VM', '[a-z]([-a-z0-9]{0,61}'
             '[a-z0-9])?', 'lowercase letters, digits and hyphens, starting '
             'with a letter'),
    'zone': ('us-central2-b', 'ZONE', 'its zone'),
    'accelerator-type': ('v4-32', 'TYPE', 'FAMILY-SIZE', '[a-z][a-z0-9]*-'
                         '[1-9][0-9]*', 'FAMILY-SIZE such as v4-32, '
                         'v5litepod-16, v5p-8 or v6e-8'),
    'version': ('', 'RUNTIME', 'TPU software version (default, by family: ' +
                ', '.join(f'{f} {v}' for f, v in VERSIONS.items()) + ')'),
    'project': ('', 'PROJECT', "GCP project (default: gcloud's)"),
    'config': ('configs/cifar10.py', 'PATH', 'config file in this checkout'),
    'workdir': ('', 'gs://...', 'checkpoints, metrics, logs (to start)'),
    'tfds-data-dir': ('', 'gs://...', '--config.tfds_data_dir (to start: it '
                      'or --data-dir)'),
    'data-dir': ('', 'gs://...', '--config.data_dir'),
    'valid-until-duration': ('', 'D', 'with --queued: give the request up '
                             'after D', '([0-9][0-9a-z]*)?', 'a gcloud '
                             'duration such as 6h or 2d'),
    'node-count': ('1', 'N', '1 only: no Multislice', '1', '1: Multislice '
                   '(more than one slice) is not supported; use one larger '
                   'slice'),
    'retry-for': ('24h', 'D', 'how long to get the TPU back and reconnect, '
                  'from when the trouble began', DURATION,
                  f'a duration {SUCH_AS}'),
    'max-restarts': ('3', 'N', 'restarts per --restart-window', *COUNT),
    'restart-window': ('24h', 'D', '', '0*[1-9][0-9]*[smhd]?', 'a duration '
                       f'longer than 0, {SUCH_AS}'),
    'stop-grace': ('120', 'SECONDS', 'SIGTERM to SIGKILL, for trainers to '
                   'save', *COUNT),
    'worker-python': ('python3.11', 'CMD', "the workers' venv interpreter, "
                      'apt-installed if missing', '[A-Za-z0-9._+-]+',
                      'a command name such as python3.11')}
SWITCHES = {'queued': 'get the TPU as a queued resource named NAME',
            'spot': 'Spot capacity: cheaper, preempted at any time',
            'reserved': 'reserved capacity',
            'dry-run': 'print every command (`+ ...`), run none'}
MODES = {'attach': 'follow the running training to its end; restart nothing',
         'logs': "print the latest run's log (worker 0's, or its copy in "
                 '--workdir)',
         'stop': 'SIGTERM to training on every worker: it saves and exits'}
SECONDS = {'TPU_POLL_SECONDS': 30, 'TPU_RETRY_SECONDS': 60,
           'TPU_LOG_COPY_SECONDS': 60}
HELP = dict(
    usage='%(prog)s --workdir=gs://... --tfds-data-dir=gs://... [OPTIONS] '
    '[-- MAIN_ARGS...]\n       %(prog)s --name=NAME --zone=ZONE '
    '--attach|--logs|--stop', description='Trains alexnet_jax on a Cloud '
    "TPU VM slice through preemptions, following worker 0's log: `python -m "
    'alexnet_jax.main --config.platform=tpu MAIN_ARGS` on every worker, '
    'detached from this terminal. The same command already training is '
    'followed.', epilog='Environment: ' + ', '.join(
        f'{k}={v}' for k, v in SECONDS.items()) + '. The VM\'s states, '
    "training's outcomes, exit statuses: docs/clusters.md, \"Cloud TPU VMs\".")
# argparse's messages, in this launcher's words.
PLAIN = ((r'argument (\S+): expected one argument', '{0} needs a value'),
         (r'argument (\S+): ignored explicit', '{0} takes no value'),
         (r'argument (\S+): not allowed with argument (\S+)',
          '{1} and {0} exclude each other'),
         (r'unrecognized arguments: (-[^=\s]+)', 'unknown option: {0} (see '
          '--help)'),
         (r'unrecognized arguments: (\S+)', 'unexpected argument: {0} '
          '(arguments for alexnet_jax.main go after --)'))


class Stop(Exception):
  """The end of this launcher: one `error:` line, and `status` (2: bad input,
  nothing run)."""

  def __init__(self, message, status=2):
    super().__init__(message)
    self.status = status


class _Formatter(argparse.HelpFormatter):

  def _split_lines(self, text, width):  # Not inside tpu-ubuntu2204-base.
    return textwrap.wrap(text, width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    fail(next((words.format(*m.groups()) for pattern, words in PLAIN
               if (m := re.match(pattern, message))), message))


def fail(message):
  raise Stop(message)


def parse(argv, environ=os.environ, repo='.'):
  """argparse's namespace (dashes as underscores), plus `mode`, `main_args`
  and what follows from the options."""
  cut = argv.index('--') if '--' in argv else len(argv)
  parser = _Parser('tpu_vm.py', **HELP, formatter_class=_Formatter,
                   allow_abbrev=False)  # -h, --help: printed, exit 0.
  for name, (default, metavar, words, *_) in OPTIONS.items():
    parser.add_argument('--' + name, metavar=metavar, help=(
        f'{words} (default: {default})' if default else words).strip())
  tiers, modes = (parser.add_mutually_exclusive_group() for _ in range(2))
  for name, words in {**SWITCHES, **MODES}.items():
    group = modes if name in MODES else tiers if name in ('spot',
                                                          'reserved') else parser
    group.add_argument('--' + name, action='store_true', help=words)
  o = parser.parse_args(argv[:cut])
  o.mode = next((m for m in MODES if getattr(o, m)), 'launch')
  o.main_args = argv[cut + 1:]
  for name, (default, _, _, *shape) in OPTIONS.items():
    value = getattr(o, name.replace('-', '_'))
    if value == '':
      fail(f'--{name} needs a non-empty value')
    value = default if value is None else value
    if shape and not re.fullmatch(shape[0], value):
      fail(f'--{name} must be {shape[1]}, got: {value}')
    setattr(o, name.replace('-', '_'), value)
  _check(o, environ, repo)
  o.gcloud_flags = [f'--zone={o.zone}'] + [f'--project={o.project}'] * bool(
      o.project)
  o.tiers = ['--spot'] * o.spot + ['--reserved'] * o.reserved
  return o


def _check(o, environ, repo):
  if o.mode == 'launch' and not o.workdir:
    fail('--workdir is required (a gs:// path shared by all TPU hosts)')
  if o.mode == 'launch' and not (o.tfds_data_dir or o.data_dir):
    fail('--tfds-data-dir is required (a gs:// TFDS data dir), or --data-dir')
  if o.mode != 'launch' and o.main_args:
    fail(f'arguments after -- are for starting a run, not --{o.mode}')
  for option, value in [('--workdir', o.workdir), ('--tfds-data-dir',
                        o.tfds_data_dir), ('--data-dir', o.data_dir)] + [
      a.split('=', 1) for a in o.main_args
      if a.startswith(('--config.data_dir=', '--config.tfds_data_dir='))]:
    if value and not re.match(r'gs://[^/]+', value):
      fail(f'{option} must be a gs:// path (every TPU host uses it; a '
           f"worker's disk is its own), got: {value}")
  config = o.config.split(':')[0]  # config_flags takes PATH:ARG.
  if not os.path.isfile(os.path.join(repo, config)):
    fail(f'--config {config} not found in {repo} (it is shipped with the code)')
  family = o.accelerator_type.rsplit('-', 1)[0]
  o.version = o.version or VERSIONS.get(family) or fail(
      f'no default --version for accelerator family {family} (known: '
      f'{", ".join(VERSIONS)}); pass --version')
  if o.valid_until_duration and not o.queued:
    fail('--valid-until-duration needs --queued')
  o.max_restarts, o.stop_grace = int(o.max_restarts), int(o.stop_grace)
  for option in ('restart_window', 'retry_for'):
    number, unit = re.fullmatch(DURATION, getattr(o, option)).groups()
    setattr(o, option + '_s', int(number) * {'m': 60, 'h': 3600,
                                              'd': 86400}.get(unit, 1))
  for var, default in SECONDS.items():
    value = environ.get(var) or str(default)
    if not re.fullmatch(r'[0-9]+', value):
      fail(f'{var} must be a non-negative integer, got: {value}')
    setattr(o, var[4:].lower(), int(value))
  if not o.log_copy_seconds:
    fail('TPU_LOG_COPY_SECONDS must be a positive integer, got: 0')
