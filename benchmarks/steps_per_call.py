"""Train steps per compiled call, timed: how many steps `--config.steps_per_call`
should dispatch at once on data held on the device.

  python -m benchmarks.steps_per_call [--data_dir=DIR] [--model=alexnet_cifar]
      [--batch_size=32] [--steps=256] [--repeats=5] [--per_call=1,4,16,64]

Builds the CIFAR main job's feed and train step as training does
(`build.train_steps`), then times `--steps` steps taken K per call for each
K, and the same steps the way a streamed feed takes them (one batch
gathered, then one jitted step, per step: the loop's former path).
Medians over `--repeats` timed passes after one warm-up pass; all passes
compute the same steps from the same state (a chunk of any length runs one
program, so the results are equal bit for bit).
"""

import argparse
import statistics
import time

import jax
import numpy as np

from alexnet_jax import build
from alexnet_jax.runtime import mesh as mesh_lib
from alexnet_jax.task import state as state_lib
from alexnet_jax.task import steps


def _setup(args):
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  config = cifar10.get_config()
  config.update(model=args.model, batch_size=args.batch_size)
  if args.data_dir:
    config.data_dir = args.data_dir
  else:
    config.update(dataset='fake', fake_image_size=32, num_classes=10,
                  fake_num_train=args.batch_size * args.steps * 2)
  mesh = mesh_lib.make_mesh()
  data = build.dataset(config)
  feed = build.feed(config, mesh, data, build.input_side(config, data))
  durations = build.durations_of_feed(config, feed)
  model = build.model(config, feed.num_classes)
  tx, _ = build.optimizer(config, durations)
  state, _ = state_lib.create_train_state(model, tx, (32, 32, 3), 0, mesh)
  return config, feed, durations, state


def _time(run, state, repeats):
  """Median seconds of `run(state)` over `repeats` passes, after one."""
  copy = lambda s: jax.tree.map(lambda x: x.copy(), s)
  jax.block_until_ready(run(copy(state)))
  times = []
  for _ in range(repeats):
    fresh = copy(state)
    jax.block_until_ready(fresh)
    start = time.perf_counter()
    jax.block_until_ready(run(fresh))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--model', default='alexnet_cifar')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--per_call', default='1,4,16,64')
  args = parser.parse_args(argv)
  config, feed, durations, state = _setup(args)
  n = min(args.steps, durations.steps_per_epoch)  # Within one epoch.
  step_fn = steps.make_step_fn(feed.input_spec, feed.num_classes,
                               log_every=config.log_every_steps,
                               plateau=config.schedule == 'plateau')
  single = jax.jit(step_fn, donate_argnums=(0,))

  def per_batch(s):
    for batch in feed.train(0, durations.steps_per_epoch, n):
      s = single(s, batch)
    return s

  rows = [('a jitted step per batch (the former loop)', _time(
      per_batch, state, args.repeats))]
  for k in (int(x) for x in args.per_call.split(',')):
    runner = steps.OnDevice(step_fn, feed, durations.steps_per_epoch, k)

    def chunked(s, runner=runner):
      step = 0
      while step < n:
        take = min(runner.room(step), n - step)
        s = runner.advance(s, step, take)
        step += take
      return s

    rows.append((f'{k} steps per call', _time(chunked, state, args.repeats)))
  print(f'{config.model}, {config.dataset}, batch {args.batch_size}, {n} steps'
        f', {jax.devices()[0].device_kind} ({jax.device_count()} devices), '
        f'median of {args.repeats}')
  base = rows[0][1]
  for name, seconds in rows:
    print(f'  {name:44s} {1e3 * seconds / n:7.2f} ms/step  '
          f'{n * args.batch_size / seconds:8.0f} img/s  x{base / seconds:.2f}')


if __name__ == '__main__':
  main()
