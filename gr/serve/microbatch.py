"""Micro-batching: concurrent requests share one device batch.

`MicroBatcher` runs `run_batch(queries, k)` on one worker thread over the
queries of several concurrent `submit`s, gathered for at most `max_wait_s`
or until `max_batch` queries; each caller gets a future of its own rows.
"""

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence


class BatcherClosed(RuntimeError):
  """The batcher is shut down and takes no more requests."""


@dataclasses.dataclass
class _Request:
  queries: list[str]
  k: int
  future: concurrent.futures.Future


_STOP = object()


class MicroBatcher:
  """Gathers concurrent `submit`s into batches run on one worker thread.

  A batch starts with the oldest request and takes later ones until it holds
  `max_batch` queries or `max_wait_s` has passed since it started; a request
  that does not fit waits for the next batch. `run_batch(queries, k)` gets
  every query of the batch and the largest k asked; each request receives
  its own rows cut to its k.
  """

  def __init__(
    self,
    run_batch: Callable[[list[str], int], list[list[Any]]],
    *,
    max_batch: int,
    max_wait_s: float,
    on_batch: Optional[Callable[[int], None]] = None,
  ):
    self._run_batch, self._max_batch = run_batch, max_batch
    self._max_wait_s, self._on_batch = max_wait_s, on_batch
    self._queue: queue.Queue = queue.Queue()
    self._held: Optional[_Request] = None
    self._closed = False
    self._thread = threading.Thread(
      target=self._loop, name="gr-batcher", daemon=True
    )
    self._thread.start()

  def submit(self, queries: Sequence[str], k: int) -> concurrent.futures.Future:
    """Future of the queries' hit lists; at most max_batch queries."""
    if not 1 <= len(queries) <= self._max_batch:
      raise ValueError(
        f"a request holds 1..{self._max_batch} queries, got {len(queries)}"
      )
    if self._closed:
      raise BatcherClosed("the batcher is shut down")
    future = concurrent.futures.Future()
    self._queue.put(_Request(list(queries), k, future))
    return future

  def close(self, timeout: Optional[float] = None) -> None:
    """Answers every request already submitted, then stops the thread."""
    self._closed = True
    self._queue.put(_STOP)
    self._thread.join(timeout)

  def _loop(self) -> None:
    while True:
      batch, stop = self._gather()
      if batch:
        self._answer(batch)
      if stop:
        break
    while not self._queue.empty():  # submitted after close() raced past
      item = self._queue.get()
      if item is not _STOP:
        item.future.set_exception(BatcherClosed("the batcher is shut down"))

  def _gather(self) -> tuple[list[_Request], bool]:
    """The next batch, and whether the stop sentinel was reached."""
    first = self._held or self._queue.get()
    self._held = None
    if first is _STOP:
      return [], True
    batch, size = [first], len(first.queries)
    deadline = time.monotonic() + self._max_wait_s
    while size < self._max_batch:
      try:
        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if item is _STOP or size + len(item.queries) > self._max_batch:
        self._held = item
        break
      batch.append(item)
      size += len(item.queries)
    return batch, False

  def _answer(self, batch: list[_Request]) -> None:
    """Runs one batch; a failure fails its requests, never the thread."""
    queries = [q for request in batch for q in request.queries]
    try:
      hits = self._run_batch(queries, max(r.k for r in batch))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("batch of %d queries failed", len(queries))
      for request in batch:
        request.future.set_exception(e)
      return
    if self._on_batch is not None:
      self._on_batch(len(queries))
    start = 0
    for request in batch:
      rows = hits[start : start + len(request.queries)]
      start += len(request.queries)
      request.future.set_result([row[: request.k] for row in rows])


def choose_buckets(queries_per_s: Mapping[int, float]) -> tuple[int, ...]:
  """Bucket batch shapes from measured in-process throughput per batch size.

  The largest bucket (the micro-batch limit) is the batch size with the
  highest queries/s: past it a fuller batch answers each query more slowly,
  so gathering more only adds latency. The buckets are every measured size
  up to it, so a partly filled batch is padded little.

  Args:
    queries_per_s: batch size -> queries/s of `Retriever.retrieve` on full
      batches of that size (scripts/bench_serving.py measures it).
  """
  if not queries_per_s:
    raise ValueError("choose_buckets needs at least one measured batch size")
  best = max(queries_per_s, key=queries_per_s.__getitem__)
  return tuple(sorted(b for b in queries_per_s if b <= best))
