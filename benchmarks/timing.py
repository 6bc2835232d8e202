"""The timers the benchmark scripts share: one call's median, and steps
timed one by one or, to compare two frameworks, in interleaved rounds."""

import statistics
import time

import jax


def median_ms(fn, *args, repeats: int, warmup: int = 1) -> float:
  """Median wall time of fn(*args) in ms, after `warmup` untimed calls
  (compilation); waits for JAX results (other results pass through)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def timed(fn, n) -> list:
  """Seconds of each of n calls of fn (which waits for its own result)."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def interleaved_times(steps: dict, args, settle_s: float = 0.5):
  """({name: [seconds per step]}, {name: warm-up seconds}): each step warmed
  up, then timed in interleaved rounds, so drift hits all alike."""
  warmup_s = {}
  for name, fn in steps.items():  # torch.compile compiles on the first call.
    start = time.perf_counter()
    timed(fn, args.warmup)
    warmup_s[name] = time.perf_counter() - start
  times = {name: [] for name in steps}
  rounds = 4 if len(steps) > 1 else 1
  per_round = -(-args.steps // rounds)
  for _ in range(rounds):
    for name, fn in steps.items():
      # The other framework's thread pool spins for a while after its last
      # step; let it go idle, and leave the first step of a round untimed.
      time.sleep(settle_s if len(steps) > 1 else 0.)
      fn()
      times[name] += timed(fn, per_round)
  return times, warmup_s
