"""Command line: parse flags, then `train.train_and_evaluate(config, workdir)`.

  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=DIR \
      [--config.key=value ...] [--verbose] \
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

The multi-process flags are for clusters JAX cannot detect by itself (it does
on Cloud TPU pods and under SLURM). Bad input ends with one line on stderr,
`error: ...`, and exit status 2 (--verbose adds the traceback). A SIGTERM or
SIGINT saves the current step and exits with 128 + the signal number. In a
multi-process job, a process that loses another (killed, crashed) says which
in one line and exits with status 75 within --heartbeat_timeout/2 seconds
(runtime/liveness.py); rerunning the same command resumes.
"""

import difflib
import importlib.util
import os
import sys
import traceback

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TF/XLA load.

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax.errors import Interrupted
from alexnet_jax.errors import UserError
from alexnet_jax import train
from alexnet_jax.runtime import cli
from alexnet_jax.runtime import compile_cache
from alexnet_jax.runtime import distributed
from alexnet_jax.runtime import liveness
from alexnet_jax.runtime import accelerator

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard '
                    'events go here (local or gs://); rerunning with it '
                    'resumes.')
flags.DEFINE_bool('verbose', False, 'Print the traceback of user errors too.')
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs: '
                    'HOST:PORT of process 0 (else JAX_COORDINATOR_ADDRESS, or '
                    'auto-detected on Cloud TPU pods and under SLURM).')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this one, 0..N-1.')
flags.DEFINE_integer('coordinator_timeout', 300, 'Seconds to wait for every '
                     'process to reach the coordinator.', lower_bound=1)
flags.DEFINE_integer('heartbeat_timeout', 60, 'Multi-process runs: a process '
                     'silent for half this many seconds is lost, and the '
                     'others stop (exit 75); JAX\'s own heartbeat timeout.',
                     lower_bound=4)
flags.DEFINE_integer('shutdown_timeout', 300, 'Multi-process runs: seconds a '
                     'finished process waits at exit for the others to '
                     'finish.', lower_bound=1)
flags.mark_flags_as_required(['config', 'workdir'])


def _flag_value(argv, name):
  for arg in argv:
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def explain_config_error(argv, error: Exception) -> str:
  """Why ml_collections refused the config: no get_config, or an unknown key.

  Found by loading the config file ourselves and checking each --config.KEY
  against it, not by parsing the library's message.
  """
  path = _flag_value(argv, 'config')
  try:
    spec = importlib.util.spec_from_file_location('_user_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception:  # Reported by the generic message below.
    module = None
  if module is not None and not callable(getattr(module, 'get_config', None)):
    return (f'config file {path!r} defines no get_config(); a config file '
            'is a Python file whose get_config() returns an '
            'ml_collections.ConfigDict (e.g. configs/cifar10.py)')
  if module is not None:
    config = module.get_config()
    for arg in argv:
      if not arg.startswith('--config.'):
        continue
      key = arg[len('--config.'):].split('=', 1)[0]
      node, parts = config, key.split('.')
      for i, part in enumerate(parts):
        if not hasattr(node, 'keys') or part not in node:
          known = list(node.keys()) if hasattr(node, 'keys') else []
          close = difflib.get_close_matches(part, known, n=1)
          hint = f" (did you mean {'.'.join(parts[:i] + close)!r}?)" if close \
              else ''
          return (f'unknown config key {key!r}{hint}; every field is listed '
                  'in configs/default.py')
        node = node[part]
  return f'bad --config or --config.* flag ({type(error).__name__}: {error})'


def config_load_error(e: Exception) -> str:
  """ml_collections puts the cause of a failed load on the last line."""
  return f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}'


def parse_flags(argv):
  """absl parsing, with config-file and --config.* problems as one line."""
  cli.exit_if_help(argv, __doc__)
  try:
    return FLAGS(argv)
  except (OSError, SyntaxError, ImportError) as e:  # With --config.* given.
    cli.exit_with_error(config_load_error(e), '--verbose' in argv)
  except (AttributeError, KeyError) as e:  # ml_collections' refusals.
    cli.exit_with_error(explain_config_error(argv, e), '--verbose' in argv)
  except flags.Error as e:
    cli.exit_with_error(e, '--verbose' in argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.verbose:
    cli.quiet_library_tracebacks()
  try:
    FLAGS.config.get('model')  # A config file that failed to load raises here.
  except (OSError, SyntaxError, ImportError) as e:
    cli.exit_with_error(config_load_error(e), FLAGS.verbose)
  timeouts = distributed.Timeouts(FLAGS.coordinator_timeout,
                                  FLAGS.heartbeat_timeout,
                                  FLAGS.shutdown_timeout)
  try:
    accelerator.select(FLAGS.config.platform)
    compile_cache.enable(FLAGS.config.compilation_cache)
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, timeouts)
    accelerator.check(FLAGS.config.platform)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    liveness.finish('done')
  except UserError as e:
    liveness.finish(f'exited: error: {e}'[:200])
    cli.exit_with_error(e, FLAGS.verbose)
  except Interrupted as e:
    liveness.finish('done')
    if jax.process_index() != 0:  # Process 0 has printed it with the log.
      print(f'process {jax.process_index()}: {e}', file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except Exception as e:  # pylint: disable=broad-except
    if not liveness.active():
      raise  # A bug: its traceback.
    stopped_by_unexpected_error(e)


def stopped_by_unexpected_error(e: Exception):
  """A multi-process run that failed unexpectedly, often because another
  process was lost (a collective's connection reset): one line now; the
  watchdog then names the lost process and exits 75. If nobody was lost, this
  process's own bug: its traceback, exit status 1, and the others are told
  (without the shutdown barrier, which would wait for them in vain)."""
  me = jax.process_index()
  print(f'process {me}: stopped by {type(e).__name__}: '
        f'{" ".join(str(e).split())[:300]}', file=sys.stderr, flush=True)
  liveness.await_verdict()
  traceback.print_exc()
  liveness.finish(f'exited: {type(e).__name__}')
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
