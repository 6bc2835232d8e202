"""Orbax checkpoints in `workdir/checkpoints`: the latest K plus the best by val top-1.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it), so a run killed mid-save leaves the previous checkpoints intact
and the next run resumes from the newest complete one. Every process takes
part in saves and restores.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

BEST_METRIC = 'val_top1'


class CheckpointError(Exception):
  """A checkpoint exists but cannot be restored into the current config."""


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    policies = [ocp.checkpoint_managers.LatestN(n=max(keep, 1)),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                    keep_checkpoints_without_metrics=False)]
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            # best_fn makes orbax record metrics; preservation_policy decides.
            best_fn=lambda m: m[BEST_METRIC], best_mode='max',
            max_to_keep=None,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                policies),
            create=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    scored = [(m[BEST_METRIC], s) for s in self.manager.all_steps()
              if (m := self.manager.metrics(s)) and BEST_METRIC in m]
    return max(scored)[1] if scored else None

  def save(self, step: int, state: Any, metrics: Optional[dict] = None):
    """Starts an asynchronous save; `metrics` (host floats) rank the best."""
    self.manager.save(step, args=ocp.args.StandardSave(state),
                      metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`."""
    try:
      return self.manager.restore(
          step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # Shape/structure mismatches come in many types.
      msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
      raise CheckpointError(
          f'cannot resume from {self.directory} step {step}: the checkpoint does '
          f'not match the current config ({type(e).__name__}: {msg}); use a new '
          '--workdir or the config it was trained with') from None

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def load_state_on_host(workdir: str, step: Optional[int] = None) -> Any:
  """A saved train state as numpy arrays, whatever mesh it was saved from.

  For inspection, evaluation and tests: every array is restored onto this
  process's first device (orbax reshards), then fetched to the host.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if step is None:
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
    step = max(steps)
  path = os.path.join(directory, str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      metadata)
  return jax.device_get(checkpointer.restore(path, target))


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying target shardings, for restoring onto any mesh."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)
