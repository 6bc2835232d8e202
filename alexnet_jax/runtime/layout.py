"""Every file and folder of a run's workdir, named in one place.

The trainer writes them; `evaluate`, `predict`, `visualize`, `plot`,
`convert` and fine-tuning (`--config.init_from`) read them; the launchers
copy their logs into `logs/` (docs/training.md, "What a run writes", lists
the same names). A workdir is a local folder or a gs:// URI: paths are
etils' epath, which orbax uses too.
"""

import dataclasses

from etils import epath


@dataclasses.dataclass(frozen=True)
class Layout:
  """A workdir's paths. `root` is absolute: orbax refuses relative paths,
  and a relative workdir (`--workdir=workdirs/cifar10`) is the README's own;
  gs:// and other URIs are absolute already."""
  root: epath.Path

  @classmethod
  def of(cls, workdir) -> 'Layout':
    if isinstance(workdir, Layout):
      return workdir
    path = epath.Path(workdir)
    return cls(path if path.is_absolute() else path.absolute())

  @property
  def checkpoints(self) -> epath.Path:
    """orbax's steps, `checkpoints/<step>/`."""
    return self.root / 'checkpoints'

  def checkpoint(self, step: int) -> epath.Path:
    """The saved train state of one step (orbax's item directory)."""
    return self.checkpoints / str(step) / 'default'

  @property
  def damaged_checkpoints(self) -> epath.Path:
    """Steps that would not restore, set aside for inspection, never deleted."""
    return self.root / 'checkpoints_damaged'

  @property
  def config(self) -> epath.Path:
    """The config with the values the run used."""
    return self.root / 'config.json'

  @property
  def metrics(self) -> epath.Path:
    """One JSON record per logged step and evaluated split."""
    return self.root / 'metrics.jsonl'

  @property
  def final_metrics(self) -> epath.Path:
    return self.root / 'final_metrics.json'

  @property
  def curves(self) -> epath.Path:
    return self.root / 'curves.png'

  @property
  def logs(self) -> epath.Path:
    """The launchers' copies of the trainers' logs and their decisions."""
    return self.root / 'logs'

  @property
  def profile(self) -> epath.Path:
    """XLA profiles (`--config.profile_steps`), where TensorBoard looks."""
    return self.root / 'plugins' / 'profile'

  @property
  def process_check(self) -> epath.Path:
    """The token every process of a job reads back (a shared workdir)."""
    return self.root / '.process_check'

  # TensorBoard's event files are written into `root` by clu's writer.
  EVENTS_GLOB = 'events.out.tfevents.*'
