"""What every part of the GPU check shares: the run's clock, a failure that
keeps its partial results, and what is installed."""

import importlib.metadata
import importlib.util
import time
import traceback


class Clock:
  """The run's clock and its progress lines."""

  def __init__(self, budget_s: float):
    self.start, self.budget_s = time.monotonic(), budget_s

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def say(self, message: str):
    print(f'[gpu_check {self.elapsed():5.0f} s] {message}', flush=True)


class PartFailed(Exception):
  """A part that failed with results worth keeping."""

  def __init__(self, message, partial):
    super().__init__(message)
    self.partial = partial


def version(dist: str):
  """The installed version of a distribution, or None."""
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def error_text(e: BaseException) -> str:
  """The traceback's last 3000 characters: where it failed, kept short."""
  return ''.join(traceback.format_exception(type(e), e, e.__traceback__)
                 )[-3000:]
