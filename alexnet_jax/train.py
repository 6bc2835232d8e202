"""The training run, top to bottom: build everything (failing on bad input
before the workdir is touched), then train, log, evaluate, save, stop on a
signal and finish.

The config is read by the builders (`build.py`) alone; what they make takes
what it needs as arguments. The step itself is `task/steps.py`, the input's
way to the model `data/input_spec.py`, evaluation `task/evaluation.py`, the
cadence of it all `task/durations.py`, the workdir's files
`runtime/layout.py`.
"""

import contextlib
import json
from typing import Optional

import jax
import numpy as np
import ml_collections

from alexnet_jax import build
from alexnet_jax.errors import Interrupted
from alexnet_jax.errors import TrainingError
from alexnet_jax.runtime import checkpoints
from alexnet_jax.runtime import distributed
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.runtime import preemption
from alexnet_jax.runtime import reporting
from alexnet_jax.runtime.layout import Layout
from alexnet_jax.task import evaluation
from alexnet_jax.task import optim
from alexnet_jax.task import runs as runs_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps
from alexnet_jax.task import validation


# --- Set-up --------------------------------------------------------------------

def finished_run(layout: Layout, total_steps: int) -> Optional[dict]:
  """The final metrics of a run in the workdir that already reached
  total_steps."""
  if not layout.final_metrics.exists():
    return None
  try:
    final = json.loads(layout.final_metrics.read_text())
  except ValueError:  # Torn by a kill: redo the final evaluation.
    return None
  if (final.get('step') != total_steps or
      checkpoints.latest_step_on_disk(layout) != total_steps):
    return None
  return final


def _say_finished(workdir: str, done: dict):
  if jax.process_index() == 0:
    print(f'the run in {workdir} already finished at step {done["step"]} '
          f'(test top-1 {100 * done["test"]["top1"]:.2f}%, see '
          'final_metrics.json); nothing to do. To train longer raise '
          '--config.num_epochs (or num_steps); to start over use a new '
          '--workdir', flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluating on val as it goes and on test at the end; resumes.

  Returns the final metrics (also written to WORKDIR/final_metrics.json).
  Raises a `UserError` on bad input, and `Interrupted` once a SIGTERM or
  SIGINT has been answered by saving the current step.
  """
  validation.validate_config(config)
  mesh = build.device_mesh(config)
  data = build.dataset(config)
  side = build.input_side(config, data)
  feed = build.feed(config, mesh, data, side)
  durations = build.durations_of_feed(config, feed)
  model = build.model(config, feed.num_classes)
  build.check_input_side(config, model, side)
  tx, lr_schedule = build.optimizer(config, durations)
  apply_fn = build.apply_fn(config, model, mesh)
  sized = build.check_stack_fits(config, feed, durations, model, tx, side,
                                 mesh, apply_fn)
  state, abstract_state = build.train_state(config, model, tx, side, mesh,
                                            apply_fn)
  state = build.finetuned(config, workdir, state)
  distributed.check_shared_workdir(workdir)
  layout = Layout.of(workdir)
  done = finished_run(layout, durations.total_steps)
  if done is not None:  # Change nothing; say so.
    _say_finished(workdir, done)
    return done

  # Only now, with config, data and model known good, touch the workdir.
  reporting.prepare_workdir(layout)
  with contextlib.ExitStack() as stack:
    ckpt = build.checkpointer(config, layout)
    stack.callback(ckpt.close)
    start_step, restored = ckpt.restore_latest(abstract_state)
    state = state if restored is None else restored
    reporter = build.reporter(config, layout, durations, start_step)
    stack.callback(reporter.close)
    stop = stack.enter_context(preemption.StopRequest(ckpt.reached_preemption))
    reporter.write_json(layout.config, build.resolved_config(
        config, model, feed.num_classes, side))
    pieces = (feed, durations, mesh,
              build.train_steps(config, feed, durations, start_step or 0),
              build.evaluator(config, feed, apply_fn, mesh), lr_schedule,
              ckpt, reporter, stop)
    plan = build.run_plan(config)
    run = _Run(*pieces) if plan is None else _Stack(
        *pieces, plan=plan, sized=sized, schedules=[
            build.optimizer_with(config, durations, **r.optimizer_values())[1]
            for r in plan])
    run.log_header(state, start_step, config.model, config.dataset)
    state, step = run.train(state, start_step or 0)
    return run.finish(state, step, abstract_state)


# --- The run -------------------------------------------------------------------

class _Run:
  """One run's loop and its pieces: train, log, evaluate, save, stop, finish."""
  stacked = 1  # Runs along the state's leading axis (`_Stack`).
  to_host = staticmethod(jax.device_get)  # `_Stack`: from every run group.

  @staticmethod
  def placed(new, old):
    """`new` where the state kept `old` (`_Stack`: host figures put back)."""
    del old
    return new

  def __init__(self, feed, durations, mesh, train_steps, evaluator,
               lr_schedule, ckpt, reporter, stop):
    self.feed, self.durations, self.mesh = feed, durations, mesh
    self.train_steps, self.evaluator = train_steps, evaluator
    self.lr_schedule, self.ckpt, self.reporter, self.stop = (lr_schedule, ckpt,
                                                             reporter, stop)
    self.val_metrics = None

  def log_header(self, state, start_step, model_name: str, dataset: str):
    d, sizes, batch = self.durations, self.feed.sizes, self.feed.batch_size
    n_params = sum(x.size for x in jax.tree.leaves(state.params)
                   ) // self.stacked
    groups = self.mesh.shape['runs']  # A stack spread over devices.
    n, parts = jax.device_count() // groups, mesh_lib.batch_shards(self.mesh)
    split = (f'{batch // n} per device x {n} devices' if parts == n
             else f'{batch // parts} per tower pair x {parts} pairs') + (
                 f' in each of {groups} run groups' if groups > 1 else '')
    self.reporter.log(
        f'{model_name}: {n_params:,} parameters | {dataset}: '
        f'{sizes["train"]} train / {sizes["val"]} val / '
        f'{sizes["test"]} test | global batch {batch} = {split} '
        f'({jax.process_count()} processes, mesh '
        f'{dict(self.mesh.shape)}) | {d.total_steps} steps '
        f'({d.steps_per_epoch}/epoch, {self.train_steps.pace})')
    if self.mesh.shape['model'] > 1:
      self.reporter.log(
          f"FC layers split over 'model' ({self.mesh.shape['model']} ways): "
          f"fc6 kernel sharded "
          f"{tuple(state.params['fc6']['kernel'].sharding.spec)}")
    if self.mesh.shape['runs'] > 1:
      self.reporter.log(
          f"the stack's runs split over 'runs' ({self.mesh.shape['runs']} "
          f"groups of devices): conv1 kernel sharded "
          f"{tuple(state.params['conv1']['kernel'].sharding.spec)}")
    if self.mesh.shape['tower'] > 1:
      self.reporter.log(
          f"the two towers on a 'tower' pair of devices: conv2 kernel sharded "
          f"{tuple(state.params['conv2']['kernel'].sharding.spec)}")
    if start_step is not None:  # Step 0 too: weights from alexnet_jax.convert.
      self.reporter.log(f'resuming from {self.ckpt.directory} at step '
                        f'{start_step}')

  def train(self, state, start_step: int):
    """Steps in chunks that end wherever something is due (a log, an
    evaluation, a save, the end; `Durations.until_due`), so each happens at
    its exact step; a signal stops the run after the chunk under way. The
    first step is a chunk of its own: it compiles, and the pace is timed
    from its end."""
    d, step, steps = self.durations, start_step, self.train_steps
    # Closed when the loop ends, by a stop too: Grain's workers end with it.
    with contextlib.closing(steps):
      while step < d.total_steps:
        n = 1 if step == start_step else min(steps.room(step),
                                             d.until_due(step))
        state = steps.advance(state, step, n)
        step += n
        log_now = d.logs_at(step)
        # Wait for the step where it is timed: after compilation, and when
        # its metrics are logged.
        sums = self.to_host(state.sums) if (
            log_now or step == start_step + 1) else None
        steps_per_sec = self.reporter.after_step(step, n)
        eval_now = d.evaluates_at(step) and self.feed.sizes['val'] > 0
        stop_now = self.stop.should_stop(step)
        save_now = d.saves_at(step) or stop_now
        if log_now:
          self.log_train(state, sums, step, steps_per_sec)
        if save_now:
          jax.block_until_ready(state.step)  # The step's time is training's.
          with self.reporter.paused():  # Off the clock of img/s and the ETA.
            state = (self.validate(state, step) if eval_now
                     else self.save(state, step))
        self.reporter.flush(force=save_now)
        if stop_now:
          self.interrupted(step)
    return state, step

  def learning_rate(self, state, step: int) -> float:
    """The rate the step that produced `step` used (its schedule index is step-1)."""
    return (float(self.lr_schedule(step - 1)) *
            float(optim.plateau_scale(state.opt_state)))

  def check_finite(self, sums):
    bad = int(sums['first_nonfinite_step'])
    if bad >= 0:
      raise self.nonfinite('the training loss', bad)

  def log_train(self, state, m: dict, step: int,
                steps_per_sec: Optional[float]):
    """One record of the train metrics `m` summed since the last logged step."""
    self.check_finite(m)
    count = max(float(m['count']), 1.)
    loss, top1, top5 = (float(m[k]) / count for k in ('loss', 'top1', 'top5'))
    images_per_sec = (self.feed.batch_size * steps_per_sec
                      if steps_per_sec else None)
    lr = self.learning_rate(state, step)
    epoch = self.durations.epoch(step)
    # Streamed data: how many examples stood in for unreadable images.
    extra = ({'bad_images': float(m['replaced'])} if self.feed.streamed
             else {})
    self.reporter.write(step, 'train', epoch=epoch, loss=loss, top1=top1,
                        top5=top5, lr=lr, images_per_sec=images_per_sec,
                        **extra)
    self.reporter.progress(step, epoch, loss, top1, lr, images_per_sec)

  def nonfinite(self, what: str, step: int) -> TrainingError:
    latest = self.ckpt.latest_step()
    where = (f'The last good checkpoint, step {latest} in '
             f'{self.ckpt.directory}, is kept: lower --config.learning_rate '
             '(or check the data) and rerun the same command to resume from it'
             if latest is not None else
             'No checkpoint was saved before it: lower --config.learning_rate '
             '(or check the data) and rerun')
    return TrainingError(f'{what} became non-finite at step {step}; stopped '
                         f'without saving anything from that step on. {where}')

  def save(self, state, step: int, metrics: Optional[dict] = None):
    """A checkpoint, never of a state that has seen a non-finite loss."""
    first_bad, params_ok = self.to_host(steps.finiteness(state))
    self.check_finite({'first_nonfinite_step': first_bad})
    if not params_ok:
      raise self.nonfinite('the parameters', step)
    self.ckpt.save(step, state, metrics)
    return state

  def evaluate_split(self, name: str, state, step: int, record: bool = True):
    """{'loss', 'top1', 'top5'} of a split (logged, and recorded), and the
    on-device sums they came from."""
    sums = self.feed.evaluate(self.evaluator, state_lib.eval_variables(state),
                              name)
    metrics = evaluation.split_metrics(sums)
    if record:
      self.reporter.write(step, name, epoch=self.durations.epoch(step),
                          **metrics)
    self.reporter.log(f'{name:>5} @ step {step}: loss {metrics["loss"]:.4f} | '
                      f'top1 {100 * metrics["top1"]:.2f}% | top5 '
                      f'{100 * metrics["top5"]:.2f}%')
    return metrics, sums

  def validate(self, state, step: int):
    """Val metrics, the plateau schedule's input, a ranked checkpoint, curves."""
    self.val_metrics, sums = self.evaluate_split('val', state, step)
    state = state.replace(plateau_value=self.placed(
        1. - sums.top1.total / sums.top1.count, state.plateau_value))
    self.save(state, step, {checkpoints.BEST_METRIC: self.ranked_top1()})
    self.reporter.write_curves()
    return state

  def ranked_top1(self) -> float:
    """What ranks this evaluation's checkpoint for "best": val top-1."""
    return self.val_metrics['top1']

  def interrupted(self, step: int):
    self.ckpt.wait()
    self.reporter.flush(force=True)
    name = preemption.signal_name(self.stop.signum)
    message = (f'stopped by {name} at step {step}/{self.durations.total_steps}'
               f': checkpoint saved in {self.ckpt.directory}; rerun the same '
               'command to resume')
    self.reporter.log(message)
    raise Interrupted(message, self.stop.signum, step)

  def final_evaluations(self, state, step: int, abstract_state):
    """(test metrics, the best-val checkpoint's step, its test metrics):
    val first if not just done."""
    if self.val_metrics is None and self.feed.sizes['val']:
      self.val_metrics, _ = self.evaluate_split('val', state, step)
    test_metrics, _ = self.evaluate_split('test', state, step)
    self.ckpt.wait()
    best = self.ckpt.best_step()
    best_test = None
    if best == step:
      best_test = test_metrics
    elif best is not None:
      restored = self.ckpt.restore(best, abstract_state)
      self.reporter.log(f'best val checkpoint, step {best}:')
      best_test, _ = self.evaluate_split('test', restored, best, record=False)
    return test_metrics, best, best_test

  def finish(self, state, step: int, abstract_state) -> dict:
    """Val (if not just done) and test; the best-val checkpoint's test too."""
    test_metrics, best, best_test = self.final_evaluations(state, step,
                                                           abstract_state)
    final = {'step': step, 'val': self.val_metrics, 'test': test_metrics,
             'best_val_step': best, 'best_val_test': best_test}
    self.reporter.write_json(self.reporter.layout.final_metrics, final)
    self.reporter.write_curves(wait=True)
    self.reporter.log(
        f'done: step {step} | test top1 {100 * test_metrics["top1"]:.2f}% | '
        + (f'best val checkpoint: step {best}, test top1 '
           f'{100 * best_test["top1"]:.2f}%' if best is not None else
           'no validation split'))
    return final


# --- A stack of runs -----------------------------------------------------------

class _Stack(_Run):
  """Many runs trained by one compiled step (`task/runs.py`): `_Run`'s loop,
  with each run's own metrics (records carry `run`), plateau input (its own
  validation error), non-finite stop (the run is frozen, the others go on),
  best-validation step and result; the summary is the mean, standard
  deviation and 95% interval over the runs that finished. The kept
  "best" checkpoint ranks the mean validation top-1 of those runs."""

  def __init__(self, *pieces, plan, schedules, sized=None):
    super().__init__(*pieces)
    self.plan, self.schedules, self.stacked = plan, schedules, len(plan)
    self.sized = sized  # What `build.check_stack_fits` found, for the log.
    self._replicate = None  # `everywhere`'s program.
    self.frozen = {}  # Run index -> the step it turned non-finite.

  def live(self) -> list:
    return [i for i in range(self.stacked) if i not in self.frozen]

  def everywhere(self, tree):
    """`tree` replicated on every device: a stack spread over processes
    (`runs_parallelism`) holds each run on its own group's devices only."""
    if self.mesh.shape['runs'] == 1:
      return tree
    if self._replicate is None:  # One compiled copy per tree structure.
      self._replicate = jax.jit(
          lambda t: t, out_shardings=mesh_lib.replicated(self.mesh))
    return self._replicate(tree)

  def to_host(self, tree):
    return jax.device_get(self.everywhere(tree))

  @staticmethod
  def placed(new, old):
    return jax.device_put(np.asarray(new, old.dtype), old.sharding)

  def log_header(self, state, start_step, model_name: str, dataset: str):
    super().log_header(state, start_step, model_name, dataset)
    self.reporter.log(f'{self.stacked} runs in one step:')
    for r in self.plan:
      self.reporter.log(f'  {r.describe()}')
    if self.sized:
      self.reporter.log(self.sized)
    self.check_finite(state.sums)  # Runs a resumed stack had frozen.

  def learning_rate(self, state, step: int) -> list:
    scale = self.to_host(optim.plateau_scale(state.opt_state))
    return [float(self.schedules[i](step - 1)) * float(
        scale[i] if getattr(scale, 'ndim', 0) else scale)
            for i in range(self.stacked)]

  def check_finite(self, sums):
    for i, bad in enumerate(self.to_host(sums['first_nonfinite_step'])):
      if bad >= 0 and i not in self.frozen:
        self.frozen[i] = int(bad)
        self.reporter.log(
            f'{self.plan[i].describe()} became non-finite at step {bad}: '
            'frozen there, its last good parameters kept; the other runs go '
            'on')
    if not self.live():
      raise self.nonfinite('the training loss of every run',
                           min(self.frozen.values()))

  def log_train(self, state, m: dict, step: int,
                steps_per_sec: Optional[float]):
    self.check_finite(m)
    m = self.to_host(m)
    lrs = self.learning_rate(state, step)
    epoch = self.durations.epoch(step)
    images_per_sec = (self.feed.batch_size * self.stacked * steps_per_sec
                      if steps_per_sec else None)
    each = []
    for i in range(self.stacked):
      count = max(float(m['count'][i]), 1.)
      loss, top1, top5 = (float(m[k][i]) / count
                          for k in ('loss', 'top1', 'top5'))
      self.reporter.write(step, 'train', run=i, values=self.plan[i].values,
                          epoch=epoch, loss=loss,
                          top1=top1, top5=top5, lr=lrs[i],
                          images_per_sec=images_per_sec)
      each.append((loss, top1, lrs[i]))
    live = [each[i] for i in self.live()]
    mean = [sum(v) / len(live) for v in zip(*live)]
    self.reporter.progress(step, epoch, *mean, images_per_sec)

  def evaluate_split(self, name: str, state, step: int, record: bool = True):
    """Each run's {'loss', 'top1', 'top5'} (a list), and the stacked sums.
    One compiled evaluation, called per run (a batched one would run
    grouped convolutions: slow on CPUs, and evaluation is a sliver of a
    run's time anywhere)."""
    variables = state_lib.eval_variables(state)
    per_run = [self.feed.evaluate(self.evaluator, self.everywhere(
        jax.tree.map(lambda x, i=i: x[i], variables)), name)
               for i in range(self.stacked)]
    # Stacked on the host: an eager stack of arrays across a spread stack's
    # devices ran collectives that XLA:CPU could deadlock on.
    per_run = self.to_host(per_run)
    sums = jax.tree.map(lambda *xs: np.stack(xs), *per_run)
    each = [evaluation.split_metrics(s) for s in per_run]
    if record:
      for i, metrics in enumerate(each):
        self.reporter.write(step, name, run=i, values=self.plan[i].values,
                            epoch=self.durations.epoch(step), **metrics)
    live = self.live()
    listed = ' '.join(f'{100 * each[i]["top1"]:.1f}' for i in live[:16])
    self.reporter.log(
        f'{name:>5} @ step {step}: top1 by run {listed}'
        f'{" ..." if len(live) > 16 else ""} % | mean '
        f'{100 * sum(each[i]["top1"] for i in live) / len(live):.2f}%')
    return each, sums

  def ranked_top1(self) -> float:
    """The mean val top-1 of the live runs (each run's plateau input is its
    own validation error: `_Run.validate` on the stacked sums)."""
    return runs_lib.summary([self.val_metrics[i]['top1']
                             for i in self.live()])['mean']

  def best_val_steps(self) -> list:
    """Each run's (step, val top-1) of its best validation, from the
    records (a resumed run's earlier ones included)."""
    best = [None] * self.stacked
    for r in self.reporter.records():
      i = r.get('run')
      if r.get('split') == 'val' and i is not None and i < self.stacked and (
          best[i] is None or r['top1'] > best[i][1]):
        best[i] = (r['step'], r['top1'])
    return best

  def finish(self, state, step: int, abstract_state) -> dict:
    """Each run's val and test, its own best validation, and each sweep
    point's spread; the best mean-val checkpoint's test too."""
    test, best, best_test = self.final_evaluations(state, step,
                                                   abstract_state)
    best_val = self.best_val_steps()
    runs = []
    for i, r in enumerate(self.plan):
      runs.append({
          'run': i, 'seed': r.seed, **r.values,
          'frozen_at_step': self.frozen.get(i),
          'val': self.val_metrics[i] if self.val_metrics else None,
          'test': test[i],
          'best_val_step': best_val[i][0] if best_val[i] else None,
          'best_val_top1': best_val[i][1] if best_val[i] else None})
    live = self.live()

    def over(each, members):
      return {k: runs_lib.summary([each[i][k] for i in members if i in live])
              for k in ('loss', 'top1', 'top5')}

    def means(each):
      return {k: (v or {}).get('mean') for k, v in over(each, live).items()}

    summary = [{**values, 'runs': members,
                'val': over(self.val_metrics, members)
                       if self.val_metrics else None,
                'test': over(test, members)}
               for values, members in runs_lib.points(self.plan)]
    final = {'step': step, 'runs': runs, 'summary': summary,
             'val': means(self.val_metrics) if self.val_metrics else None,
             'test': means(test), 'frozen_runs': sorted(self.frozen),
             'best_val_step': best,
             'best_val_test': means(best_test) if best_test else None}
    self.reporter.write_json(self.reporter.layout.final_metrics, final)
    self.reporter.write_curves(wait=True)
    for point in summary:
      swept = ', '.join(f'{k}={point[k]:g}' for k in runs_lib.SWEEPABLE)
      self.reporter.log(f'  {swept}: test top1 '
                        f'{runs_lib.describe_summary(point["test"]["top1"])}')
    frozen = (f' | frozen: runs {sorted(self.frozen)}' if self.frozen
              else '')
    self.reporter.log(
        f'done: step {step} | {len(live)} of {self.stacked} runs finished'
        + frozen)
    return final
