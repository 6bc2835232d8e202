"""Orbax checkpoints in `workdir/checkpoints`: the latest K plus the best by val top-1.

Paths go through `etils.epath` (orbax's own path library), so the workdir may
be local or `gs://...`. Saves are asynchronous and atomic (orbax writes a
temporary directory and renames or commits it), so a run killed mid-save
leaves the previous checkpoints intact.

Resuming (`Checkpointer.restore_latest`) walks the steps newest first and
takes the first one that restores. A damaged step (a truncated, missing or
garbled file; a half-written directory) is named in the log and moved aside
into `workdir/checkpoints_damaged/`, never deleted. A step saved by another
model or config is not damage: it stops the run with its own message. Every
process takes part in saves and restores.
"""

import functools
import json
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from etils import epath

from alexnet_jax.errors import CheckpointError
from alexnet_jax.runtime.layout import Layout

BEST_METRIC = 'val_top1'

# Orbax warns at every save without metrics; between evaluations that is by
# design here (such steps are kept by recency, not rank). Reading a step's
# item folder directly (`read_array_metadata`) warns that the step's own
# metadata file is not in it: it is one level up, also by design.
_EXPECTED_WARNINGS = ('did not provide metrics',
                      'Metadata file does not exist')


@functools.cache
def _quiet_expected_warnings():
  """Installed once, by the first use of orbax here, not at import."""
  absl_logging.get_absl_logger().addFilter(
      lambda record: not any(w in record.getMessage()
                             for w in _EXPECTED_WARNINGS))


class _Damaged(Exception):
  """A step that cannot be read; the message says which file and why."""


def _first_line(e: BaseException, limit: int = 200) -> str:
  text = ' '.join(str(e).split()).split('. See full TensorStore')[0]
  return f'{type(e).__name__}: {text[:limit]}' if text else type(e).__name__


def tree_signature(tree) -> dict:
  """{'params/conv1/kernel': (shape, dtype)} for arrays or their metadata."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'):
          (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in flat}


def describe_mismatch(saved: dict, wanted: dict) -> str:
  """The first difference between two tree signatures, in words."""
  # Parameters first: they say most plainly which model it was.
  for key in sorted(set(saved) | set(wanted),
                    key=lambda k: (not k.startswith('params/'), k)):
    if key not in saved:
      return f'{key} is missing from the checkpoint'
    if key not in wanted:
      return f'the checkpoint has {key}, which this model does not'
    if saved[key] != wanted[key]:
      return (f'{key} is {saved[key][0]} {saved[key][1]} there, '
              f'{wanted[key][0]} {wanted[key][1]} here')
  return 'no difference'


class Checkpointer:
  """The run's CheckpointManager, with damage-tolerant resume and clear errors."""

  def __init__(self, workdir, keep: int,
               log: Callable[[str], None] = None):
    """`workdir`: a path or a `Layout`; the latest `keep` steps are kept, and
    the best by val top-1. When to save is the run's to say
    (`Durations.saves_at`, a stop): `save` always writes."""
    self.layout = Layout.of(workdir)
    self.workdir = self.layout.root
    self._log = log or _print_on_process_0
    self.directory = self.layout.checkpoints
    self._pending = None  # Step of the save that may still be in flight.
    _quiet_expected_warnings()
    try:
      self._set_aside_unreadable_steps()
      self.manager = self._open_manager(keep)
    except OSError as e:
      raise CheckpointError(
          f'cannot open checkpoints in {self.directory} ({_first_line(e)}); '
          'check that the workdir is writable') from None

  def _open_manager(self, keep: int):
    managers = ocp.checkpoint_managers
    policies = [managers.LatestN(n=max(keep, 1)),
                managers.BestN(
                    get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                    keep_checkpoints_without_metrics=False)]
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            # best_fn makes orbax record metrics; preservation_policy decides.
            best_fn=lambda m: m[BEST_METRIC], best_mode='max',
            max_to_keep=None, cleanup_tmp_directories=True,
            preservation_policy=managers.AnyPreservationPolicy(policies),
            create=True))

  # --- Damage ----------------------------------------------------------------

  def _step_dirs(self):
    return [self.directory / str(step)
            for step in sorted(saved_steps(self.workdir), reverse=True)]

  @staticmethod
  def _check_json_files(step_dir: epath.Path):
    """Orbax parses these when it opens the directory; a torn one stops it."""
    meta = step_dir / '_CHECKPOINT_METADATA'
    if not meta.exists():
      raise _Damaged(f'{meta.name} is missing (a half-written step)')
    for path in (meta, step_dir / 'metrics' / 'metrics'):
      if path.exists():
        try:
          json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
          raise _Damaged(f'{path.relative_to(step_dir)} is not valid JSON '
                         f'({_first_line(e, 80)})') from None

  def _set_aside(self, step_dir: epath.Path, reason: str):
    """Moves a damaged step out of orbax's sight, keeping it for inspection."""
    self._log(f'checkpoint step {step_dir.name} in {self.directory} is unusable '
        f'({reason}); moved to {self.layout.damaged_checkpoints}, resuming from '
        'the newest good one')
    _sync('alexnet_jax:before_set_aside')
    if jax.process_index() == 0:
      target = self.layout.damaged_checkpoints / step_dir.name
      if target.exists():
        target = target.parent / f'{step_dir.name}.{int(time.time())}'
      target.parent.mkdir(parents=True, exist_ok=True)
      step_dir.rename(target)
    _sync('alexnet_jax:after_set_aside')

  def _set_aside_unreadable_steps(self):
    for step_dir in self._step_dirs():
      try:
        ok, reason = True, ''
        self._check_json_files(step_dir)
      except _Damaged as e:
        ok, reason = False, str(e)
      if not _all_processes(ok):
        self._set_aside(step_dir, reason or 'unreadable on another process')

  # --- Resume ------------------------------------------------------------------

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """Whether the processes of a multi-process job agreed to stop at this
    step (JAX's preemption sync point, through orbax)."""
    return self.manager.reached_preemption(step)

  def best_step(self) -> Optional[int]:
    return self.manager.best_step()

  def _signature_check(self, step: int, abstract_state: Any):
    path = self.layout.checkpoint(step)
    try:
      saved = tree_signature(read_array_metadata(path))
    except Exception as e:  # Torn _METADATA: JSON, KeyError, ... .
      raise _Damaged(f'its array metadata cannot be read '
                     f'({_first_line(e, 120)})') from None
    if not saved:
      raise _Damaged('its array metadata (default/_METADATA) is missing or '
                     'unreadable')
    wanted = tree_signature(abstract_state)
    if saved != wanted:
      raise CheckpointError(
          f'checkpoint step {step} in {self.directory} was saved by a '
          f'different model or config ({describe_mismatch(saved, wanted)}); '
          'use a new --workdir, or the config it was trained with')

  def restore_latest(self, abstract_state: Any):
    """(step, state) of the newest step that restores, or (None, None).

    `abstract_state` carries the target shapes, dtypes and shardings, so a
    run saved on N devices resumes on M.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        ok, reason = True, ''
        self._signature_check(step, abstract_state)
        state = self.manager.restore(
            step, args=ocp.args.StandardRestore(abstract_state))
      except _Damaged as e:
        ok, reason = False, str(e)
      except CheckpointError:
        raise
      except Exception as e:  # TensorStore, JSON, OS errors: a damaged file.
        ok, reason = False, f'its arrays cannot be read ({_first_line(e, 120)})'
      if _all_processes(ok):
        return step, state
      self._set_aside(self.directory / str(step),
                      reason or 'unreadable on another process')
      self.manager.reload()
    return None, None

  def restore(self, step: int, abstract_state: Any) -> Any:
    """A step known to be good (e.g. the best), into `abstract_state`."""
    return self.manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))

  # --- Save --------------------------------------------------------------------

  def _write_error(self, e: BaseException, step) -> CheckpointError:
    good = [s for s in self.manager.all_steps() if s != step]
    kept = (f'the checkpoints already written (latest: step {max(good)}) are '
            'intact' if good else 'no earlier checkpoint exists')
    return CheckpointError(
        f'cannot write checkpoint step {step} to {self.directory} '
        f'({_write_reason(e)}); {kept}. Free space or fix permissions, then '
        'rerun the same command to resume')

  def save(self, step: int, state: Any, metrics: Optional[dict] = None):
    """Starts an asynchronous save; `metrics` (host floats) rank the best.

    The previous save (asynchronous) must have succeeded first: its failure
    is raised here as a CheckpointError naming that step.
    """
    self.wait()
    try:
      self._pending = step
      self.manager.save(step, args=ocp.args.StandardSave(state),
                        metrics=metrics, force=True)
    except Exception as e:  # OSError, or orbax's wrapper around one.
      raise self._write_error(e, step) from None

  def wait(self):
    """Blocks until the last save is on disk (or raises what stopped it)."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      raise self._write_error(e, self._pending) from None

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()


# What a failed write says, by the OS's own words; TensorStore and orbax wrap
# the OSError, so its errno is not always at hand.
_OS_REASONS = ('No space left on device', 'Disk quota exceeded',
               'Read-only file system', 'Permission denied')


def _write_reason(e: BaseException) -> str:
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e)
  for reason in _OS_REASONS:
    if reason.lower() in text.lower():
      return reason
  return _first_line(e, 160)


def _print_on_process_0(message: str):
  if jax.process_index() == 0:
    print(message, flush=True)


def _all_processes(ok: bool) -> bool:
  """True where every process says ok (one process: just `ok`)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def saved_steps(workdir: str) -> list:
  """The finalized step numbers under WORKDIR/checkpoints, oldest first,
  without opening a CheckpointManager (orbax's own listing)."""
  return sorted(ocp.utils.checkpoint_steps(Layout.of(workdir).checkpoints))


def latest_step_on_disk(workdir: str) -> Optional[int]:
  steps = saved_steps(workdir)
  return steps[-1] if steps else None


def read_array_metadata(path: epath.Path):
  """The saved tree of ArrayMetadata (shape, dtype) of a step's item, or None."""
  _quiet_expected_warnings()
  metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
  return getattr(metadata, 'tree', metadata)


def load_variables_on_host(workdir: str, step: Optional[int] = None):
  """(step, {'params', ['batch_stats']} as numpy) of a saved train state,
  without its optimizer state (half the bytes): what inference and
  fine-tuning need.

  A missing workdir, no checkpoints or a step that is not there is a
  CheckpointError naming what is.
  """
  steps = saved_steps(workdir)
  if not steps:
    raise CheckpointError(f'no checkpoints in {Layout.of(workdir).root} (expected '
                          'checkpoints/<step>/ written by a training run or '
                          'by alexnet_jax.convert)')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f'no checkpoint step {step} in '
                          f'{Layout.of(workdir).checkpoints}; saved '
                          f'steps: {", ".join(map(str, steps))}')
  path = Layout.of(workdir).checkpoint(step)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    saved = read_array_metadata(path)
    target = {key: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        saved[key]) for key in ('params', 'batch_stats') if saved.get(key)}
    restored = ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  except Exception as e:  # A torn or foreign step: JSON, KeyError, OS errors.
    raise CheckpointError(f'checkpoint step {step} in {path.parent.parent} '
                          f'cannot be read ({_first_line(e, 120)})') from None
  return step, jax.device_get(restored)


def saved_params_signature(workdir: str, step: int) -> dict:
  """{'conv1/kernel': (shape, dtype)} of a step's params, from metadata only."""
  path = Layout.of(workdir).checkpoint(step)
  return tree_signature(read_array_metadata(path)['params'])


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying target shardings, for restoring onto any mesh."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)
