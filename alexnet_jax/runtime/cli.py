"""What every command line shares: bad input is one `error:` line and exit
status 2, `--help` prints the command's help and exits 0, and library
tracebacks stay quiet unless --verbose."""

import argparse
import sys
import threading
import traceback

HELP_FLAGS = ('--help', '-h', '--helpshort', '-?')


def exit_with_error(message, verbose: bool = False):
  """One line on stderr, exit status 2: the bad-input contract of every CLI."""
  if verbose:
    traceback.print_exc()
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose refusals are the house's one `error:` line, exit 2
  (argparse's own print the usage block first)."""

  def error(self, message):
    exit_with_error(message)


def exit_if_help(argv, doc: str):
  """`--help`: the command's docstring and its own flags on stdout, exit 0
  (absl's own --help exits 1 and lists every library's flags)."""
  if not any(a in HELP_FLAGS or a == '--helpfull' for a in argv[1:]):
    return
  from absl import flags  # pylint: disable=g-import-not-at-top
  print(doc.strip() + '\n')
  if '--helpfull' in argv:
    print(flags.FLAGS.get_help())
  else:
    print('flags:\n' + flags.FLAGS.main_module_help().split('\n', 1)[-1])
    print('\n(--helpfull lists the libraries\' flags too)')
  sys.exit(0)


def quiet_library_tracebacks():
  """Library tracebacks off (the one `error:` line says what happened).

  When a write fails, orbax's background threads log the exception with its
  traceback, and asyncio reports coroutines it could not finish. Without
  --verbose those become one-line log records or nothing.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top

  def strip_traceback(record):
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True

  logging.get_absl_handler().addFilter(strip_traceback)
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None
