"""ASGI middleware of the service: the body reader (413 over the limit,
408 when a body stalls), security headers, and request metrics
(Prometheus), around the FastAPI app of gr/serve/app.py.
"""

import asyncio
import time
from typing import Optional, Sequence

import prometheus_client

from gr.serve import retriever as serving

from gr.serve import schemas


class _BodyTooLarge(Exception):
  """A streamed body passed the limit."""


class RequestBody:
  """ASGI middleware: each request body read whole, in bounds, before the app.

  413 for a body over `max_bytes` (by its Content-Length, or counted as it
  streams); 408 when it has not all arrived `timeout_s` after the request
  started (a Content-Length larger than what the client sends would hold
  the connection open for good). Both close the connection: the rest of
  the body is never read. The app then reads the buffered body.
  """

  def __init__(self, app, max_bytes: int, timeout_s: float):
    self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and (
      not declared.isdigit() or int(declared) > self.max_bytes
    ):
      return await self._refuse(413, self._too_large(), scope, receive, send)
    try:
      async with asyncio.timeout(self.timeout_s):
        body = await self._read(receive)
    except TimeoutError:
      message = f"request body not received within {self.timeout_s:g} s"
      return await self._refuse(408, message, scope, receive, send)
    except _BodyTooLarge:
      return await self._refuse(413, self._too_large(), scope, receive, send)
    if body is not None:  # None: the client went away
      await self.app(scope, _replay(body, receive), send)

  async def _read(self, receive) -> Optional[bytes]:
    """The whole body; None if the client disconnects first."""
    chunks, size = [], 0
    while True:
      message = await receive()
      if message["type"] == "http.disconnect":
        return None
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      if size > self.max_bytes:
        raise _BodyTooLarge()
      if not message.get("more_body", False):
        return b"".join(chunks)

  def _too_large(self) -> str:
    return f"request body is larger than {self.max_bytes} bytes"

  async def _refuse(self, status, message, scope, receive, send):
    response = schemas.AsciiJSONResponse(
      {"detail": message}, status_code=status, headers={"Connection": "close"}
    )
    await response(scope, receive, send)


def _replay(body: bytes, receive):
  """An ASGI receive that gives `body` once, then waits on `receive` (for
  the client's disconnect)."""
  pending = [{"type": "http.request", "body": body, "more_body": False}]

  async def replayed():
    return pending.pop() if pending else await receive()

  return replayed


# Every response: no MIME sniffing, no framing, no referrer; and, unless
# the response sets its own (the page), a policy that loads nothing.
SECURITY_HEADERS = (
  (b"x-content-type-options", b"nosniff"),
  (b"x-frame-options", b"DENY"),
  (b"referrer-policy", b"no-referrer"),
  (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)


class SecurityHeaders:
  """ASGI middleware: adds SECURITY_HEADERS a response does not set
  itself, except the content policy on `exempt` paths (the API docs,
  which load their scripts from a CDN)."""

  def __init__(self, app, exempt: Sequence[str] = ()):
    self.app, self.exempt = app, frozenset(exempt)

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    defaults = [
      (name, value)
      for name, value in SECURITY_HEADERS
      if name != b"content-security-policy" or scope["path"] not in self.exempt
    ]

    async def secured_send(message):
      if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        present = {name.lower() for name, _ in headers}
        headers += [(n, v) for n, v in defaults if n not in present]
        message = {**message, "headers": headers}
      await send(message)

    await self.app(scope, receive, secured_send)


class Metrics:
  """Prometheus collectors of one app (own registry: apps do not clash)."""

  def __init__(self):
    self.registry = prometheus_client.CollectorRegistry()
    self.requests = prometheus_client.Counter(
      "gr_requests",
      "HTTP requests",
      ["method", "endpoint", "status"],
      registry=self.registry,
    )
    self.latency = prometheus_client.Histogram(
      "gr_request_latency_seconds",
      "HTTP request latency",
      ["endpoint"],
      buckets=(
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
      ),
      registry=self.registry,
    )
    self.batch_size = prometheus_client.Histogram(
      "gr_batch_size",
      "queries per device batch",
      buckets=(1, 2, 4, 8, 16, 32, 64, 128),
      registry=self.registry,
    )
    self.documents = prometheus_client.Gauge(
      "gr_index_documents", "documents in the index", registry=self.registry
    )
    self.version = prometheus_client.Gauge(
      "gr_index_version", "docid table version", registry=self.registry
    )

  def observe_index(self, retriever: serving.Retriever) -> None:
    self.documents.set(retriever.num_docs)
    self.version.set(retriever.index_version)


class RequestMetrics:
  """ASGI middleware: counts requests and times them per route template."""

  def __init__(self, app, metrics: Metrics):
    self.app, self.metrics = app, metrics

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    status, start = [500], time.perf_counter()

    async def recorded_send(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, recorded_send)
    finally:
      route = scope.get("route")
      endpoint = getattr(route, "path_format", "unmatched")
      self.metrics.requests.labels(
        scope["method"], endpoint, str(status[0])
      ).inc()
      self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
