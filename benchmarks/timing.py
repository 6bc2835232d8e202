"""The one timer the benchmark scripts share."""

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
