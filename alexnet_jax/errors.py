"""The errors a user can act on, under one base class.

`main` turns any `UserError` into one line, `error: <message>`, and exit
status 2 (a traceback only with --verbose); anything else is a bug and keeps
its traceback. Each module raises the subclass for its concern.
"""

class UserError(Exception):
  """Bad input or a state of the world the user can fix; the message says how."""


class ConfigError(UserError):
  """The config asks for something that cannot run."""


class DataError(UserError):
  """A dataset cannot be loaded."""


class CheckpointError(UserError):
  """Checkpoints cannot be read or written (mismatch, damage, full disk)."""


class TrainingError(UserError):
  """Training cannot go on (e.g. the loss stopped being finite)."""


class DistributedError(UserError):
  """The processes of a multi-process run could not form one job."""


class PlatformError(UserError):
  """The accelerator asked for (--config.platform) is not the one JAX found."""


class WorkdirError(UserError):
  """The workdir cannot be written (permissions, a full disk)."""


class WeightsError(UserError):
  """A weights file cannot be read, or holds another network than expected."""


class Interrupted(Exception):
  """A SIGTERM/SIGINT stopped the run after saving; rerunning resumes.

  Not a UserError: nothing was wrong. `main` exits with 128 + the signal
  number, as a process ended by that signal would, so schedulers see it.
  """

  def __init__(self, message: str, signum: int, step: int):
    super().__init__(message)
    self.signum = signum
    self.step = step
