"""What a benchmark records about the machine it runs on.

A speed figure means little without the load it was measured under: the
first tables of this project were taken while other jobs ran and overstated
gr's ratios several-fold. Every `scripts/bench_*.py` therefore prints the
1-minute load average before and after its runs (`machine_load`), warns when
it is above `BUSY_LOAD_PER_CORE`, and, where it reports model FLOPs
utilisation, measures the matmul roofline of this device in the same run
(`matmul_peak_gflops`) instead of quoting a datasheet.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp

BUSY_LOAD_PER_CORE = 0.5


def resident_mb() -> float:
  """This process's resident set now (/proc/self/status VmRSS), in MB;
  nan where there is no /proc (not Linux)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float('nan')


def machine_load(when: str) -> dict:
  """Prints and returns the load average `when` ('before'/'after') the runs.

  Returns {'when', 'load_1min', 'cores', 'per_core', 'busy'}; prints a
  warning on stderr when the load is above BUSY_LOAD_PER_CORE per core.
  """
  load = os.getloadavg()[0]
  cores = os.cpu_count() or 1
  record = {
    'when': when,
    'load_1min': load,
    'cores': cores,
    'per_core': load / cores,
    'busy': load / cores > BUSY_LOAD_PER_CORE,
  }
  print(f'load average {when}: {load:.2f} on {cores} cores')
  if record['busy']:
    print(
      f'WARNING: load {load / cores:.2f} per core {when} the runs is above '
      f'{BUSY_LOAD_PER_CORE}: timings are not from a quiet machine',
      file=sys.stderr,
    )
  return record


def run_seconds(fn, reps: int) -> list[float]:
  """Seconds of each of `reps` calls of fn, after one untimed call (the
  compile or warm-up). fn must return only once its work is done (block
  on JAX arrays inside it)."""
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def matmul_peak_gflops(
  size: int = 2048, dtype: str = 'float32', reps: int = 5
) -> float:
  """Best achieved GFLOP/s of a jitted [size, size] @ [size, size] matmul.

  The roofline that MFU is measured against: 2 * size^3 FLOPs per product,
  best of `reps` timed runs after one compiling warm-up, on the default
  device with every core JAX uses.
  """
  a = jnp.ones((size, size), dtype) / size
  b = jnp.ones((size, size), dtype)
  product = jax.jit(jnp.matmul)
  best = min(run_seconds(lambda: jax.block_until_ready(product(a, b)), reps))
  return 2.0 * size**3 / best / 1e9
