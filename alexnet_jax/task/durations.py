"""Every duration of a run in steps, and when each thing happens: the one
place where epochs become steps and the one cadence of logging, evaluating,
saving and stopping that the train step, the loop, the checkpointer and the
reporter all follow (`build.durations` makes it from the config)."""

import dataclasses

from alexnet_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Durations:
  """Steps, and the cadence of the run's bookkeeping.

  steps_per_epoch: full batches in one pass over the training split.
  total_steps: the run's last step (training stops there).
  log_every: train metrics are summed over this many steps and logged at
    its multiples (and at the last step).
  steps_per_eval: validation at multiples of it (0: at the end only).
  checkpoint_every: saves at multiples of it (0: after evaluations and at
    the end only).
  warmup_steps, lr_step_boundaries: the learning-rate schedule's steps.
  """
  steps_per_epoch: int
  total_steps: int
  log_every: int
  steps_per_eval: int
  checkpoint_every: int
  warmup_steps: int
  lr_step_boundaries: tuple

  @classmethod
  def in_steps(cls, *, steps_per_epoch: int, num_epochs: float, num_steps: int,
               log_every: int, eval_every_epochs: float,
               checkpoint_every: int, warmup_epochs: float,
               lr_step_epochs) -> 'Durations':
    """Epochs to steps (rounded), `num_steps` > 0 winning over `num_epochs`."""
    steps = lambda epochs: int(round(epochs * steps_per_epoch))
    total = num_steps if num_steps > 0 else max(1, steps(num_epochs))
    return cls(steps_per_epoch, total, log_every,
               max(steps(eval_every_epochs), 0), max(checkpoint_every, 0),
               steps(warmup_epochs),
               tuple(int(e * steps_per_epoch) for e in lr_step_epochs))

  @staticmethod
  def steps_per_epoch_of(num_train: int, batch_size: int,
                         shards: int = 1) -> int:
    """Full batches per epoch when the training set is cut into `shards`
    equal shards and each batch takes batch_size / shards of each
    (`in_memory.process_share`); a stream is one shard."""
    per_epoch = (num_train // shards) // (batch_size // shards)
    if per_epoch == 0:
      raise ConfigError(f'batch_size {batch_size} is larger than the '
                        f'{num_train} training images')
    return per_epoch

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch

  def logs_at(self, step: int) -> bool:
    return step % self.log_every == 0 or step == self.total_steps

  def evaluates_at(self, step: int) -> bool:
    return bool(self.steps_per_eval and step % self.steps_per_eval == 0) or (
        step == self.total_steps)

  def saves_at(self, step: int) -> bool:
    """A checkpoint at every evaluation, every `checkpoint_every` steps and
    at the end (a stop on a signal saves too: the loop's call)."""
    return self.evaluates_at(step) or bool(
        self.checkpoint_every and step % self.checkpoint_every == 0)

  def until_due(self, step: int) -> int:
    """Steps from `step` to the next one where something is due: a log, an
    evaluation, a save, the end. (A stop on a signal comes between steps.)"""
    def after(every):
      return (step // every + 1) * every if every else self.total_steps
    return min(after(self.log_every), after(self.steps_per_eval),
               after(self.checkpoint_every), self.total_steps) - step

  def window_start(self, step: int) -> bool:
    """Whether `step` opens a new window of summed train metrics."""
    return (step - 1) % self.log_every == 0
