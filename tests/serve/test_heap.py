"""gr/serve/heap.py: freed malloc arenas go back to the system."""

import sys
import threading

import pytest

from gr import bench_env
from gr.serve import heap


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, glibc")
def test_freed_thread_arenas_are_returned():
  """Threads fill their own arenas (as XLA's compile threads do) and free
  most of it; a few live blocks keep glibc from trimming on its own."""
  kept = []

  def fill():
    blocks = [bytes(4000) for _ in range(20_000)]  # 80 MB in this arena
    kept.extend(blocks[::50])

  threads = [threading.Thread(target=fill) for _ in range(3)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  before = bench_env.resident_mb()
  assert heap.release_freed_memory()
  assert bench_env.resident_mb() < before - 100
  assert len(kept) == 1200


def test_without_malloc_trim_it_does_nothing(monkeypatch):
  monkeypatch.setattr(heap, "_libc", lambda: None)
  assert not heap.release_freed_memory()
