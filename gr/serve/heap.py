"""Freed heap memory handed back to the system after compiles.

XLA compiles in worker threads (LiveIndex.warm_up compiles one bucket per
core), and glibc's malloc gives each thread an arena of its own that keeps
what a compile freed for later use instead of returning it. A long-running
server compiles again at every capacity growth, and ahead of the next rows
growth, so without a trim its RSS keeps the high-water mark of every
compile. LiveIndex.warm_up trims after its compiles, and ServedIndex after
a growth has replaced the live state. On the demo index, `malloc_trim`
after compiling a rows growth ahead gave back 460 MB (2,983 -> 2,521 MB;
WORKSPACE "Issue 22, session 16").
"""

import ctypes
import ctypes.util
import functools
from typing import Optional


@functools.cache
def _libc() -> Optional[ctypes.CDLL]:
  name = ctypes.util.find_library("c")
  try:
    return ctypes.CDLL(name) if name else None
  except OSError:
    return None


def release_freed_memory() -> bool:
  """Returns the freed pages of every malloc arena to the system (glibc's
  malloc_trim(0)); False where the C library has no malloc_trim (macOS,
  musl), where there is nothing to do."""
  trim = getattr(_libc(), "malloc_trim", None)
  if trim is None:
    return False
  trim(0)
  return True
