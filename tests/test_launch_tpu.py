"""launch/tpu_vm.py's command line, run as users run it (a process of its
own): the exact commands its dry run prints, its help, one `error:` line and
exit 2 for each bad input, the standard library only; and the remote
command that stops training processes, run here against a real process.
The state machine: test_launch_tpu_states.py; on real (fake) workers:
test_launch_tpu_runs.py."""

import ast
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from tests.launch_scripts import BASH, REPO, assert_one_error_line, commands
from tests.tpu_fakes import LAUNCHER, TPU_ARGS, kind, option, wait_for



@pytest.fixture
def no_gcloud(tmp_path):
  """A PATH with nothing on it: no gcloud to call."""
  (tmp_path / 'empty').mkdir()
  return {'PATH': str(tmp_path / 'empty')}


def run(*args, env):
  # -S: no site-packages; the launcher needs the standard library only.
  return subprocess.run([sys.executable, '-S', str(LAUNCHER), *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=60)


def dry_gcloud(*args, env):
  """The gcloud calls of a dry run, the decision-log uploads left out."""
  result = run('--dry-run', *args, env=env)
  assert result.returncode == 0, result.stderr
  return [a[1:] for a in commands(result.stdout)
          if a[0] == 'gcloud' and a[1] != 'storage']


def remote(argv):
  """A remote command's words, and where alexnet_jax.main is among them."""
  words = shlex.split(option(argv, '--command'))
  return words, words.index('alexnet_jax.main')


def test_tpu_dry_run_commands(no_gcloud):
  result = run('--dry-run', '--name=my-tpu', '--project', 'proj-1', *TPU_ARGS,
               '--', '--config.num_epochs=90', 'two words', env=no_gcloud)
  assert result.returncode == 0, result.stderr
  gcloud = [a for a in commands(result.stdout)
            if a[0] == 'gcloud' and a[1] != 'storage']
  assert [kind(a[1:]) for a in gcloud] == [
      'describe', 'create', 'status', 'scp', 'stop', 'install', 'start',
      'follow']
  for argv in gcloud:
    assert argv[1:4] == ['compute', 'tpus', 'tpu-vm']
    assert '--zone=us-central2-b' in argv and '--project=proj-1' in argv
  describe, create, status, scp, stop, install, start, follow = gcloud
  for argv in (describe, create, status, stop, install, start, follow):
    assert argv[5] == 'my-tpu'
  assert option(describe, '--format') == \
      'value(state,acceleratorType,queuedResource)'
  assert scp[5].endswith('/alexnet_jax.tar.gz')
  assert scp[6] == 'my-tpu:alexnet_jax.tar.gz'
  assert not os.path.exists(scp[5])  # A dry run packs nothing.
  assert '--accelerator-type=v4-32' in create
  assert '--version=tpu-ubuntu2204-base' in create
  assert not {'--spot', '--reserved'} & set(create)
  for argv in (scp, stop, install, start):
    assert '--worker=all' in argv
  for argv in (status, follow):  # Worker 0 answers and shows the log.
    assert '--worker=0' in argv

  # Workers get the training requirements only, not the test tools.
  setup = option(install, '--command')
  assert "-r ~/alexnet_jax/requirements-train.txt 'jax[tpu]==0.10.2'" in setup
  assert 'requirements.txt' not in setup and 'pytest' not in setup
  assert '-m venv' in setup

  # Training starts detached on every worker, its log copied to the workdir,
  # on the TPU unless the user's arguments (which come last) say otherwise.
  words, main = remote(start)
  assert words[words.index('launch/tpu_worker.sh'):][:4] == [
      'launch/tpu_worker.sh', 'start',
      '--copy-log-to=gs://bucket/runs/a1/logs/', '--copy-every=60']
  assert words[main - 2].endswith('/bin/python') and words[main - 1] == '-m'
  assert words[main + 1:] == [
      '--config=configs/cifar10.py', '--workdir=gs://bucket/runs/a1',
      '--config.tfds_data_dir=gs://bucket/tfds', '--config.platform=tpu',
      '--config.num_epochs=90', 'two words']
  # The same command is what `status` compares with what runs.
  words, main = remote(status)
  assert words[main - 2:] == remote(start)[0][remote(start)[1] - 2:]
  assert 'tpu_worker.sh follow' in option(follow, '--command')


def test_the_users_platform_comes_after_the_tpu_one(no_gcloud):
  """absl keeps the last --config.platform: the user's, after --."""
  gcloud = dry_gcloud(*TPU_ARGS, '--', '--config.platform=cpu', env=no_gcloud)
  [start] = [a for a in gcloud if kind(a) == 'start']
  words, main = remote(start)
  assert words[main + 1:][-2:] == ['--config.platform=tpu',
                                   '--config.platform=cpu']


def test_tpu_dry_run_shows_the_decision_log_uploads(no_gcloud):
  """Every decision is also copied into the workdir, and the log there is
  read first so that the copy keeps what earlier launchers decided."""
  result = run('--dry-run', *TPU_ARGS, env=no_gcloud)
  argvs = commands(result.stdout)
  storage = [a for a in argvs if a[:3] == ['gcloud', 'storage', 'cp']]
  assert argvs[0][:3] == ['gcloud', 'storage', 'cat']
  assert argvs[0][3] == 'gs://bucket/runs/a1/logs/launcher.log'
  decisions = [l for l in result.stderr.splitlines()
               if l.startswith('tpu_vm.py: ')]
  assert len(storage) == len(decisions) >= 2
  assert all(a[-1] == 'gs://bucket/runs/a1/logs/launcher.log' for a in storage)


def test_tpu_options_override_defaults(no_gcloud):
  gcloud = dry_gcloud('--zone=europe-west4-a', '--accelerator-type',
                      'v5litepod-16', '--version=v2-alpha-tpuv5-lite',
                      '--config=configs/cifar10_227.py', *TPU_ARGS,
                      env=no_gcloud)
  create = gcloud[1]
  assert create[4] == 'alexnet-jax'
  assert '--accelerator-type=v5litepod-16' in create
  assert '--version=v2-alpha-tpuv5-lite' in create
  assert all('--zone=europe-west4-a' in a for a in gcloud)
  assert not any(x.startswith('--project') for a in gcloud for x in a)
  [start] = [a for a in gcloud if kind(a) == 'start']
  assert '--config=configs/cifar10_227.py' in shlex.split(
      option(start, '--command'))


# Google's "TPU software versions" table (cloud.google.com/tpu/docs/runtimes).
FAMILY_VERSIONS = [
    ('v2-8', 'tpu-ubuntu2204-base'), ('v3-32', 'tpu-ubuntu2204-base'),
    ('v4-32', 'tpu-ubuntu2204-base'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-8', 'v2-alpha-tpuv5'), ('v6e-8', 'v2-alpha-tpuv6e')]


@pytest.mark.parametrize('accelerator,version', FAMILY_VERSIONS)
def test_tpu_version_follows_accelerator_family(accelerator, version,
                                                no_gcloud):
  gcloud = dry_gcloud(f'--accelerator-type={accelerator}', *TPU_ARGS,
                      env=no_gcloud)
  [create] = [a for a in gcloud if kind(a) == 'create']
  assert f'--accelerator-type={accelerator}' in create
  assert option(create, '--version') == version

  gcloud = dry_gcloud('--queued', f'--accelerator-type={accelerator}',
                      *TPU_ARGS, env=no_gcloud)
  [create] = [a for a in gcloud if kind(a) == 'qr-create']
  assert option(create, '--runtime-version') == version


@pytest.mark.parametrize('accelerator', ['v6e-8', 'v7x-8'])
def test_tpu_explicit_version_wins(accelerator, no_gcloud):
  # Also for a family the table does not know.
  gcloud = dry_gcloud(f'--accelerator-type={accelerator}', '--version=my-image',
                      *TPU_ARGS, env=no_gcloud)
  [create] = [a for a in gcloud if kind(a) == 'create']
  assert option(create, '--version') == 'my-image'


def test_tpu_dry_run_queued(no_gcloud):
  gcloud = dry_gcloud('--queued', '--spot', '--valid-until-duration=6h',
                      '--name=q-tpu', '--accelerator-type=v5p-8',
                      '--project=proj-1', *TPU_ARGS, env=no_gcloud)
  assert [kind(a) for a in gcloud] == [
      'describe', 'qr-describe', 'qr-create', 'qr-describe', 'status', 'scp',
      'stop', 'install', 'start', 'follow']
  create = gcloud[2]
  assert create[:5] == ['compute', 'tpus', 'queued-resources', 'create', 'q-tpu']
  for flag in ('--node-id=q-tpu', '--accelerator-type=v5p-8',
               '--runtime-version=v2-alpha-tpuv5', '--spot',
               '--valid-until-duration=6h', '--zone=us-central2-b',
               '--project=proj-1'):
    assert flag in create
  for describe in (gcloud[1], gcloud[3]):
    assert describe[4] == 'q-tpu'
    assert option(describe, '--format') == 'value(state.state)'


def test_tpu_dry_run_spot_and_reserved(no_gcloud):
  [create] = [a for a in dry_gcloud('--spot', *TPU_ARGS, env=no_gcloud)
              if kind(a) == 'create']
  assert '--spot' in create
  [create] = [a for a in dry_gcloud('--queued', '--reserved', *TPU_ARGS,
                                    env=no_gcloud)
              if kind(a) == 'qr-create']
  assert '--reserved' in create and '--spot' not in create


@pytest.mark.parametrize('mode, kinds', [
    ('--attach', ['describe', 'follow']),
    ('--logs', ['describe', 'logs']),
    ('--stop', ['describe', 'stopped']),
])
def test_tpu_dry_run_of_the_other_modes(no_gcloud, mode, kinds):
  """--attach, --logs and --stop need only the VM's name and zone."""
  gcloud = dry_gcloud(mode, '--name=my-tpu', env=no_gcloud)
  assert [kind(a) for a in gcloud] == kinds
  assert '--worker=all' in gcloud[-1] if mode == '--stop' else \
      '--worker=0' in gcloud[-1]


# Every option, and the default its --help entry gives (None: none).
OPTION_DEFAULTS = {
    '--name': 'alexnet-jax', '--zone': 'us-central2-b',
    '--accelerator-type': 'v4-32', '--version': None, '--project': "gcloud's",
    '--config': 'configs/cifar10.py', '--workdir': None,
    '--tfds-data-dir': None, '--data-dir': None,
    '--valid-until-duration': None, '--node-count': '1', '--retry-for': '24h',
    '--max-restarts': '3', '--restart-window': '24h', '--stop-grace': '120',
    '--worker-python': 'python3.11', '--queued': None, '--spot': None,
    '--reserved': None, '--dry-run': None, '--attach': None, '--logs': None,
    '--stop': None, '--help': None}


def help_entries(text):
  """Each option's entry in --help: its line and the lines wrapped under it."""
  entries, option = {}, None
  for line in text.split('\noptions:\n')[1].split('\n\n')[0].splitlines():
    match = re.match(r'  (?:-h, )?(--[a-z-]+)', line)
    option = match[1] if match else option
    entries[option] = (entries.get(option, '') + ' ' + line.strip()).strip()
  return entries


def test_tpu_help_lists_every_option_with_its_default(no_gcloud):
  result = run('--help', env=no_gcloud)
  assert result.returncode == 0 and result.stderr == ''
  assert result.stdout.startswith('usage: tpu_vm.py --workdir=gs://')
  entries = help_entries(result.stdout)
  assert sorted(entries) == sorted(OPTION_DEFAULTS)
  for option, default in OPTION_DEFAULTS.items():
    if default:
      assert entries[option].endswith(f'(default: {default})'), option
    else:
      assert '(default: ' not in entries[option], option
  # The runtime version's default, by family, is Google's table.
  for accelerator, version in FAMILY_VERSIONS:
    assert f' {accelerator.split("-")[0]} {version}' in entries['--version']
  # The environment's defaults; what the help leaves to the docs.
  text = ' '.join(result.stdout.split())
  assert 'TPU_POLL_SECONDS=30, TPU_RETRY_SECONDS=60, TPU_LOG_COPY_SECONDS=60' \
      in text
  assert 'docs/clusters.md, "Cloud TPU VMs"' in text


# (arguments, what the one error line says): each bad input its own message.
TPU_BAD_INPUT = {
    'no-workdir': (('--tfds-data-dir=gs://bucket/tfds',),
                   '--workdir is required'),
    'local-workdir': (('--workdir=/tmp/run', '--tfds-data-dir=gs://bucket/tfds'),
                      '--workdir must be a gs:// path'),
    'no-tfds': (('--workdir=gs://bucket/run',), '--tfds-data-dir is required'),
    'local-tfds': (('--workdir=gs://bucket/run', '--tfds-data-dir=/data/tfds'),
                   '--tfds-data-dir must be a gs:// path'),
    'no-value': ((*TPU_ARGS, '--zone'), '--zone needs a value'),
    'option-as-value': (('--zone', '--workdir=gs://b/r',
                         '--tfds-data-dir=gs://b/t'), '--zone needs a value'),
    'empty-value': ((*TPU_ARGS, '--zone='),
                    '--zone needs a non-empty value'),
    'unknown': ((*TPU_ARGS, '--bogus=1'), 'unknown option: --bogus (see '
                '--help)'),
    'abbreviated': ((*TPU_ARGS, '--acc=v4-8'), 'unknown option: --acc'),
    'positional': ((*TPU_ARGS, 'stray'), 'unexpected argument: stray'),
    'bad-name': ((*TPU_ARGS, '--name=Bad_Name'),
                 '--name must be lowercase letters'),
    'missing-config': ((*TPU_ARGS, '--config=configs/missing.py'),
                       '--config configs/missing.py not found'),
    'type-no-size': ((*TPU_ARGS, '--accelerator-type=v4'),
                     '--accelerator-type must be FAMILY-SIZE'),
    'type-upper': ((*TPU_ARGS, '--accelerator-type=V4-32'),
                   '--accelerator-type must be FAMILY-SIZE'),
    'unknown-family': ((*TPU_ARGS, '--accelerator-type=v7x-8'),
                       'no default --version for accelerator family v7x'),
    'v5e-name': ((*TPU_ARGS, '--accelerator-type=v5e-8'),
                 'no default --version for accelerator family v5e'),
    'multislice': ((*TPU_ARGS, '--node-count=2'),
                   '--node-count must be 1: Multislice (more than one slice) '
                   'is not supported; use one larger slice, got: 2'),
    'zero-nodes': ((*TPU_ARGS, '--node-count=0'),
                   '--node-count must be 1: Multislice'),
    'negative-restarts': ((*TPU_ARGS, '--max-restarts=-1'),
                          '--max-restarts must be a non-negative integer'),
    'text-restarts': ((*TPU_ARGS, '--max-restarts=x'),
                      '--max-restarts must be a non-negative integer, got: x'),
    'fractional-grace': ((*TPU_ARGS, '--stop-grace=1.5'),
                         '--stop-grace must be a non-negative integer'),
    'spot-and-reserved': ((*TPU_ARGS, '--spot', '--reserved'),
                          '--spot and --reserved exclude each other'),
    'valid-until-unqueued': ((*TPU_ARGS, '--valid-until-duration=6h'),
                             '--valid-until-duration needs --queued'),
    'bad-duration': ((*TPU_ARGS, '--queued', '--valid-until-duration=six'),
                     '--valid-until-duration must be a gcloud duration'),
    'switch-with-value': ((*TPU_ARGS, '--queued=yes'),
                          '--queued takes no value'),
    'local-data-dir': (('--workdir=gs://bucket/run', '--data-dir=/data/cifar'),
                       '--data-dir must be a gs:// path'),
    'local-data-dir-after-dashes': (
        (*TPU_ARGS, '--', '--config.data_dir=/home/me/cifar'),
        "--config.data_dir must be a gs:// path (every TPU host uses it; a "
        "worker's disk is its own), got: /home/me/cifar"),
    'bad-retry-for': ((*TPU_ARGS, '--retry-for=soon'),
                      '--retry-for must be a duration such as 90m, 24h'),
    'bad-window': ((*TPU_ARGS, '--restart-window=1w'),
                   '--restart-window must be a duration'),
    'zero-window': ((*TPU_ARGS, '--restart-window=0'),
                    '--restart-window must be a duration longer than 0, such '
                    'as 90m, 24h, 2d or 3600 (seconds), got: 0'),
    'two-modes': (('--attach', '--stop'), '--attach and --stop exclude each '
                  'other'),
    'args-when-attaching': (('--attach', '--', '--config.seed=1'),
                            'arguments after -- are for starting a run, not '
                            '--attach'),
    'attach-local-workdir': (('--logs', '--workdir=/tmp/w'),
                             '--workdir must be a gs:// path'),
}


@pytest.mark.parametrize('args, expected', list(TPU_BAD_INPUT.values()),
                         ids=list(TPU_BAD_INPUT))
def test_tpu_bad_input(args, expected, no_gcloud):
  # --dry-run too: validation must not depend on gcloud being there.
  assert_one_error_line(run('--dry-run', *args, env=no_gcloud), expected)


def test_tpu_unknown_family_error_lists_known_ones(no_gcloud):
  result = run('--dry-run', *TPU_ARGS, '--accelerator-type=v7x-8',
               env=no_gcloud)
  assert_one_error_line(result, 'no default --version')
  for family in ('v2', 'v3', 'v4', 'v5litepod', 'v5p', 'v6e', '--version'):
    assert family in result.stderr


@pytest.mark.parametrize('var', ['TPU_POLL_SECONDS', 'TPU_RETRY_SECONDS',
                                 'TPU_LOG_COPY_SECONDS'])
def test_tpu_bad_seconds_variable(no_gcloud, var):
  assert_one_error_line(run('--dry-run', *TPU_ARGS, env=dict(no_gcloud,
                                                             **{var: 'soon'})),
                        f'{var} must be a non-negative integer, got: soon')


def test_without_gcloud_a_real_run_is_one_error(no_gcloud):
  assert_one_error_line(run(*TPU_ARGS, env=no_gcloud),
                        'gcloud not found; install the Google Cloud CLI (or '
                        'use --dry-run)')


def test_the_launcher_imports_the_standard_library_only():
  """It runs on a laptop next to gcloud: no jax, nothing to pip install."""
  files = [LAUNCHER, *sorted((REPO / 'launch' / 'tpu').glob('*.py'))]
  for path in files:
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module] if isinstance(node, ast.ImportFrom) else [])
      for name in names:
        top = name.split('.')[0]
        assert top == 'tpu' or top in sys.stdlib_module_names, (path, name)


# --- The remote command that stops leftover training processes ---------------

DUMMY_MAIN = '''
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ['DUMMY_OUT'])
def on_term(*_):
  (out / 'sigterm').write_text('1')
  if not os.environ.get('DUMMY_IGNORE_TERM'):
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
(out / 'ready').write_text(str(os.getpid()))
while True:
  time.sleep(0.05)
'''


@pytest.fixture
def worker_home(tmp_path):
  """A fake worker: HOME with the launcher's venv path and a dummy
  alexnet_jax.main that records SIGTERM."""
  home = tmp_path / 'home'
  venv_bin = home / 'alexnet_jax_venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'python').symlink_to(os.path.realpath(sys.executable))
  package = home / 'alexnet_jax' / 'alexnet_jax'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'main.py').write_text(DUMMY_MAIN)
  return home


def stop_command(grace, env):
  gcloud = dry_gcloud(f'--stop-grace={grace}', *TPU_ARGS, env=env)
  [stop] = [a for a in gcloud if kind(a) == 'stop']
  return option(stop, '--command')


def test_stop_mode_marks_the_run_then_stops_it(no_gcloud):
  """--stop leaves the mark that makes `follow` say "stopped on purpose",
  then runs the same stopping command."""
  [call] = dry_gcloud('--stop', env=no_gcloud)[-1:]
  command = option(call, '--command')
  marker, rest = command.split('; ', 1)
  assert 'tpu_worker.sh stopped' in marker
  assert rest == stop_command(120, no_gcloud)


def start_dummy(home, out, ignore_term=False):
  out.mkdir()
  env = dict(os.environ, HOME=str(home), DUMMY_OUT=str(out))
  env.pop('PYTHONPATH', None)
  if ignore_term:
    env['DUMMY_IGNORE_TERM'] = '1'
  # The command line the launcher's training ssh runs, ~ expanded.
  proc = subprocess.Popen(
      [str(home / 'alexnet_jax_venv' / 'bin' / 'python'), '-m',
       'alexnet_jax.main', '--config=configs/cifar10.py'],
      cwd=home / 'alexnet_jax', env=env)
  wait_for(lambda: (out / 'ready').exists() or proc.poll() is not None,
           what='the dummy trainer')
  assert proc.poll() is None, 'dummy trainer died'
  return proc


def run_stop(command, home):
  env = dict(os.environ, HOME=str(home))
  return subprocess.run([BASH, '-c', command], env=env, capture_output=True,
                        text=True, timeout=30)


def test_stop_leaves_the_wrapper_whose_arguments_name_the_trainer(
    worker_home, tmp_path, no_gcloud):
  """tpu_worker.sh's wrapper runs the trainer and outlives it to record its
  exit status: the stop signals the trainer, whose command line starts with
  the venv's python, never a process that only mentions it."""
  out = tmp_path / 'out'
  proc = start_dummy(worker_home, out)
  trainer = f'{worker_home}/alexnet_jax_venv/bin/python -m alexnet_jax.main'
  wrapper = subprocess.Popen(  # `; true`: bash stays, not exec'd into sleep.
      [BASH, '-c', 'sleep 60; true', 'tpu_worker.sh', '_run', trainer],
      start_new_session=True)
  try:
    result = run_stop(stop_command(5, no_gcloud), worker_home)
    assert result.returncode == 0, result.stderr
    assert proc.wait(timeout=5) == 143
    assert f'stopping training processes {proc.pid}\n' in result.stderr
    assert wrapper.poll() is None
  finally:
    for p in (proc, wrapper):
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.parametrize('ignore_term', [False, True],
                         ids=['exits-on-sigterm', 'ignores-sigterm'])
def test_stop_leftovers_sigterm_then_sigkill(worker_home, tmp_path, no_gcloud,
                                             ignore_term):
  out = tmp_path / 'out'
  proc = start_dummy(worker_home, out, ignore_term=ignore_term)
  try:
    result = run_stop(stop_command(1, no_gcloud), worker_home)
    assert result.returncode == 0, result.stderr
    assert 'stopping training processes' in result.stderr
    assert (out / 'sigterm').exists()  # SIGTERM first: a checkpoint is saved.
    # Gone when the command returns (reaping the zombie is our job here).
    status = proc.wait(timeout=5)
    assert status == (-signal.SIGKILL if ignore_term else 143)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def test_stop_leftovers_without_leftovers(worker_home, no_gcloud):
  result = run_stop(stop_command(120, no_gcloud), worker_home)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
