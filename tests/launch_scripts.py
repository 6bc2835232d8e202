"""Running the launch scripts as a user does, for the launcher tests: the
checkout's paths, bash, and reading a dry run's `+ command` lines."""

import pathlib
import shlex
import shutil
import subprocess

from tests import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
BASH = shutil.which('bash')


def run(script, *args, env=None):
  return subprocess.run([BASH, str(script), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=30)


def commands(stdout):
  """Dry-run output as argv lists; every line must be one `+ ` command."""
  lines = stdout.splitlines()
  assert lines and all(line.startswith('+ ') for line in lines), stdout
  return [shlex.split(line[2:]) for line in lines]


def option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def assert_one_error_line(result, expected):
  """The launchers' contract: exit 2, nothing on stdout, one `error:` line
  alone on stderr (they own every line they print)."""
  cli.assert_one_error_line(result, expected, alone=True)
