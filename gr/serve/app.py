"""HTTP API of the docid decoding service (FastAPI; uvicorn runs it).

  GET    /                  search page (gr/serve/page.py)
  POST   /search            {"query": str, "k": int} -> {"query", "hits"}
  POST   /search/batch      {"queries": [str], "k": int} -> {"results"}
  POST   /documents         {"documents": [{"id", "title", "text"}]}  (token)
  GET    /documents/{id}    -> {"doc_id", "docids", "title", "text",
                                "online", "added_at"}                 (token)
  DELETE /documents/{id}                                              (token)
  GET    /healthz, /metrics (Prometheus text format)
  GET    /docs, /redoc, /openapi.json   only with create_app(api_docs=True)

Ids: one rule at add and in /documents/{id}: 1 to max_doc_id_chars of
valid Unicode with some non-space character, and not "." or ".." (URLs
drop those path segments). Any such id, "/" and new lines included, is
addressed as one percent-encoded path segment (encodeURIComponent,
urllib.parse.quote(id, safe="")); the route takes the rest of the path.
A title is optional: missing, null, "" and blank all mean no title ("").

A hit is {"doc_id", "docid", "score", "title", "matched_docids"}: docid is
the best of matched_docids, the document's docids that the search found
(several with multi-docids), best first. Searches go through a
`gr.serve.microbatch.MicroBatcher`, so concurrent requests share device batches.

Guards: the document endpoints (reads too) need `Authorization: Bearer
<token>`, compared in constant time; with no token configured they answer
403. A body must arrive whole within Limits.body_timeout_s of its headers
(else 408 and the connection is closed). Every answer says nosniff, DENY
to framing and no referrer; the page's content policy allows its own
script and style by hash (gr/serve/page.py), every other answer's nothing.
Every input has a limit (`Limits`) and a 4xx answer: 413 for bodies over
max_body_bytes, 422 for invalid JSON, wrong types (NaN and Infinity, which
Python's JSON parser reads as floats, included), empty, whitespace-only,
too long or non-encodable strings and out-of-range k, 400 for bodies that
json.loads cannot read (not UTF-8, integers past 4300 digits, deep
nesting). A 400 or 422 names the fields at fault and never echoes the input:
{"detail": [{"field": "documents.0.id", "loc": [...], "type", "msg"}]}.
Errors inside a search fail that request (500), never the worker; updates
are applied whole or not at all (gr/serve/retriever.py).
"""

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import time
import urllib.parse
from typing import Annotated, Any, Mapping, Optional, Sequence

import fastapi
import fastapi.exceptions
from fastapi import security
import prometheus_client
import pydantic
import starlette.convertors
import starlette.exceptions

from gr.serve import microbatch
from gr.serve import retriever as serving
from gr.data import beir
from gr.serve import page


@dataclasses.dataclass(frozen=True)
class Limits:
  """Input limits; each violation is answered with a 4xx status."""

  max_query_chars: int = 1000
  max_body_bytes: int = 1 << 20
  max_documents: int = 64
  max_text_chars: int = 100_000
  max_doc_id_chars: int = 256
  body_timeout_s: float = 10.0  # for the whole body, after the headers


def is_loopback(host: str) -> bool:
  """Whether binding `host` keeps the service on this machine."""
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def _encodable(text: str) -> str:
  """Rejects lone surrogates and text that Python strips to nothing.

  JSON allows "\\ud800"; and the schema's `\\S` lets separators such as
  "\\x1f" through, which str.strip() removes and the Retriever refuses.
  """
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError("text is not valid Unicode (lone surrogate)") from e
  if not text.strip():
    raise ValueError("text has only white space or separators")
  return text


def _title(title: Optional[str]) -> str:
  """A missing, null, empty or blank title is the same: "" (no title)."""
  if title is None or not title.strip():
    return ""
  return _encodable(title)


def _text(max_chars: int, min_chars: int = 1):
  """A string type: length limits, some non-space character, valid UTF-8."""
  return Annotated[
    str,
    pydantic.StringConstraints(
      min_length=min_chars, max_length=max_chars, pattern=r"\S"
    ),
    pydantic.AfterValidator(_encodable),
  ]


# A URL path drops these segments (RFC 3986 dot-segment removal, which
# clients apply even to %2E), so a document named so could not be deleted.
DOT_SEGMENTS = (".", "..")


def _addressable(doc_id: str) -> str:
  """Refuses the ids that cannot round-trip in a URL path (DOT_SEGMENTS)."""
  if doc_id in DOT_SEGMENTS:
    raise ValueError(
      f"an id may not be {doc_id!r}: URLs drop it as a path segment, so "
      "the document could never be deleted"
    )
  return doc_id


def _doc_id(max_chars: int):
  """The one rule for ids, at add and in /documents/{id}: some
  non-space character, valid UTF-8, at most `max_chars`, not . or .."""
  return Annotated[_text(max_chars), pydantic.AfterValidator(_addressable)]


class _DocIdConvertor(starlette.convertors.Convertor):
  """The rest of a URL path, percent-decoded, as one doc_id ("a/b" too).

  Starlette's "path" convertor is `.*`, which stops at a new line; its
  route's `$` then matches before a final one, so "x\n" would route as
  "x". Ids are written into paths as one segment, every reserved
  character percent-encoded (encodeURIComponent, quote(id, safe="")).
  """

  regex = "(?s:.+)"

  def convert(self, value: str) -> str:
    return value

  def to_string(self, value: str) -> str:
    return urllib.parse.quote(value, safe="")


starlette.convertors.register_url_convertor("doc_id", _DocIdConvertor())


class SearchResponse(pydantic.BaseModel):
  """One query's hits: `serving.Hit` is the one hit type (its JSON schema
  comes from the dataclass; matched_docids is a list in JSON)."""

  query: str
  hits: list[serving.Hit]


class BatchSearchResponse(pydantic.BaseModel):
  results: list[SearchResponse]


class AddedDocument(pydantic.BaseModel):
  doc_id: str
  docids: list[str]


class DocumentRecord(pydantic.BaseModel):
  """GET /documents/{id}: what the index holds (`serving.StoredDocument`)."""

  doc_id: str
  docids: list[str]
  title: Optional[str]
  text: Optional[str]
  online: bool
  added_at: Optional[str]


class IndexState(pydantic.BaseModel):
  documents: int
  index_version: int


class AddDocumentsResponse(IndexState):
  added: list[AddedDocument]


class DeleteDocumentResponse(IndexState):
  deleted: str


class Health(IndexState):
  status: str
  checkpoint_step: Optional[int] = None


def request_models(limits: Limits, max_k: int, max_batch: int):
  """Pydantic request bodies whose JSON schemas carry the limits."""
  query_text = _text(limits.max_query_chars)
  top_k = Annotated[int, pydantic.Field(ge=1, le=max_k, strict=True)]
  strict = pydantic.ConfigDict(extra="forbid")

  class SearchRequest(pydantic.BaseModel):
    model_config = strict
    query: query_text
    k: top_k = min(10, max_k)

  class BatchSearchRequest(pydantic.BaseModel):
    model_config = strict
    queries: Annotated[
      list[query_text], pydantic.Field(min_length=1, max_length=max_batch)
    ]
    k: top_k = min(10, max_k)

  class DocumentIn(pydantic.BaseModel):
    model_config = strict
    id: _doc_id(limits.max_doc_id_chars)
    title: Annotated[
      Optional[str],
      pydantic.StringConstraints(max_length=limits.max_query_chars),
      pydantic.AfterValidator(_title),
    ] = ""
    text: _text(limits.max_text_chars)

  class AddDocumentsRequest(pydantic.BaseModel):
    model_config = strict
    documents: Annotated[
      list[DocumentIn],
      pydantic.Field(min_length=1, max_length=limits.max_documents),
    ]

  return SearchRequest, BatchSearchRequest, AddDocumentsRequest


# ------------------------------------------------------------ middleware --


class AsciiJSONResponse(fastapi.responses.JSONResponse):
  """JSON with non-ASCII escaped: error details may echo lone surrogates."""

  def render(self, content) -> bytes:
    return json.dumps(
      content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
    ).encode("ascii")


def _field(error: Mapping[str, Any]) -> str:
  """The request field an error names: "documents.0.id" for the location
  ("body", "documents", 0, "id"), "doc_id" for ("path", "doc_id"); "body"
  for the body as a whole (and for JSON that does not parse, whose
  location is a character position)."""
  loc = [str(part) for part in error.get("loc", ())] or ["body"]
  if error.get("type") == "json_invalid":
    return loc[0]
  return ".".join(loc[1:]) or loc[0]


def _message(error: Mapping[str, Any]) -> str:
  """pydantic's message; for JSON that does not parse, with the reason."""
  message = str(error.get("msg", "invalid value"))
  reason = (error.get("ctx") or {}).get("error")
  if error.get("type") == "json_invalid" and isinstance(reason, str):
    return f"{message}: {reason}"
  return message


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict]:
  """A 422 body's detail: where (field, loc), what (type) and why (msg).

  The offending input is never echoed back: it may be NaN or Infinity
  (Python's JSON parser accepts them; a JSON encoder refuses them) or a
  megabyte of text, and the field names it well enough.
  """
  return [
    {
      "field": _field(error),
      "loc": [
        part if isinstance(part, int) else str(part)
        for part in error.get("loc", ())
      ],
      "type": str(error.get("type", "invalid")),
      "msg": _message(error),
    }
    for error in errors
  ]


def _unparsable_body(
  error: starlette.exceptions.HTTPException,
) -> Optional[list[dict]]:
  """The detail of FastAPI's 400 for a body that json.loads cannot read
  (not UTF-8, an integer of over 4300 digits, nesting past the recursion
  limit), in the shape of a 422's; None for any other HTTPException."""
  cause = error.__cause__
  if error.status_code != 400 or not isinstance(
    cause, (ValueError, RecursionError)
  ):
    return None
  message = f"the body cannot be parsed as JSON: {cause}"
  return [
    {"field": "body", "loc": ["body"], "type": "body_invalid", "msg": message}
  ]


def _install_error_handlers(app: fastapi.FastAPI) -> None:
  """422 and HTTPException bodies that can always be encoded."""

  @app.exception_handler(fastapi.exceptions.RequestValidationError)
  async def invalid_request(_, error):
    return AsciiJSONResponse(
      {"detail": validation_errors(error.errors())}, status_code=422
    )

  # starlette's class: FastAPI's routing raises it (fastapi's is a subclass).
  @app.exception_handler(starlette.exceptions.HTTPException)
  async def http_error(_, error):
    return AsciiJSONResponse(
      {"detail": _unparsable_body(error) or error.detail},
      status_code=error.status_code,
      headers=error.headers,
    )


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
    response = AsciiJSONResponse(
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


# ------------------------------------------------------------------ app --


def _search_result(query: str, hits: list[serving.Hit]) -> dict:
  """A SearchResponse as plain JSON values (no pydantic round trip)."""
  return {"query": query, "hits": [dataclasses.asdict(h) for h in hits]}


def _json_response(content: dict) -> fastapi.responses.Response:
  """`content` serialised once, as the declared response_model documents it
  (searches skip FastAPI's validate-then-serialise of the model)."""
  return fastapi.responses.Response(
    json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode(),
    media_type="application/json",
  )


def _bearer_guard(token: Optional[str]):
  """Dependency: 403 if no token is configured, 401 unless it matches."""
  scheme = security.HTTPBearer(auto_error=False)
  expected = token.encode("utf-8") if token else None

  def guard(
    credentials: Annotated[
      Optional[security.HTTPAuthorizationCredentials], fastapi.Depends(scheme)
    ] = None,
  ):
    if expected is None:
      raise fastapi.HTTPException(
        403,
        "document updates are disabled: the server was started without a token",
      )
    given = (credentials.credentials if credentials else "").encode(
      "utf-8", "surrogateescape"
    )
    if not hmac.compare_digest(given, expected):
      raise fastapi.HTTPException(
        401,
        "missing or wrong bearer token",
        headers={"WWW-Authenticate": "Bearer"},
      )

  return guard


API_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def create_app(
  retriever: serving.Retriever,
  *,
  token: Optional[str] = None,
  limits: Limits = Limits(),
  api_docs: bool = False,
) -> fastapi.FastAPI:
  """The service around `retriever`. Start-up compiles every bucket.

  Shutdown (lifespan end, after uvicorn let in-flight requests finish)
  answers queued searches, then waits for any update being persisted.

  Args:
    api_docs: serve the OpenAPI schema (/openapi.json) and its pages
      (/docs, /redoc; they load their scripts from a CDN); off by default.
  """
  metrics = Metrics()
  metrics.observe_index(retriever)
  state = {}

  @contextlib.asynccontextmanager
  async def lifespan(_):
    await asyncio.to_thread(retriever.warm_up)
    state["batcher"] = microbatch.MicroBatcher(
      retriever.retrieve,
      max_batch=retriever.max_batch,
      max_wait_s=retriever.config.max_wait_ms / 1000,
      on_batch=metrics.batch_size.observe,
    )
    yield
    await asyncio.to_thread(state["batcher"].close)
    await asyncio.to_thread(retriever.wait_for_updates)

  app = fastapi.FastAPI(
    title="gr docid decoding service",
    version="1",
    lifespan=lifespan,
    openapi_url="/openapi.json" if api_docs else None,
    docs_url=API_DOCS[0] if api_docs else None,
    redoc_url=API_DOCS[2] if api_docs else None,
  )
  _install_error_handlers(app)
  app.add_middleware(
    RequestBody,
    max_bytes=limits.max_body_bytes,
    timeout_s=limits.body_timeout_s,
  )
  app.add_middleware(RequestMetrics, metrics=metrics)
  app.add_middleware(SecurityHeaders, exempt=API_DOCS if api_docs else ())

  async def hits_of(queries: list[str], k: int) -> list[list[serving.Hit]]:
    try:
      future = state["batcher"].submit(queries, k)
    except microbatch.BatcherClosed as e:
      raise fastapi.HTTPException(503, str(e)) from e
    return await asyncio.wrap_future(future)

  search_request, batch_request, add_request = request_models(
    limits, retriever.max_k, retriever.max_batch
  )
  _search_routes(app, hits_of, search_request, batch_request)
  guard = fastapi.Depends(_bearer_guard(token))
  _document_routes(app, retriever, guard, add_request, limits, metrics)
  _status_routes(app, retriever, metrics)
  return app


def _search_routes(app, hits_of, search_request, batch_request) -> None:
  """The page, /search and /search/batch; `hits_of(queries, k)` searches."""

  @app.get(
    "/", response_class=fastapi.responses.HTMLResponse, include_in_schema=False
  )
  async def search_page():
    return fastapi.responses.HTMLResponse(page.PAGE_HTML, headers=page.HEADERS)

  @app.post("/search", response_model=SearchResponse)
  async def search(request: search_request):
    hits = await hits_of([request.query], request.k)
    return _json_response(_search_result(request.query, hits[0]))

  @app.post("/search/batch", response_model=BatchSearchResponse)
  async def search_batch(request: batch_request):
    hits = await hits_of(request.queries, request.k)
    results = [_search_result(q, h) for q, h in zip(request.queries, hits)]
    return _json_response({"results": results})


def _document_routes(
  app,
  retriever: serving.Retriever,
  guard,
  add_request,
  limits: Limits,
  metrics: Metrics,
) -> None:
  """POST /documents (body `add_request`), GET and DELETE /documents/{id},
  all behind `guard`."""
  doc_id_in_path = Annotated[_doc_id(limits.max_doc_id_chars), fastapi.Path()]

  @app.post(
    "/documents",
    response_model=AddDocumentsResponse,
    dependencies=[guard],
    responses={401: {}, 403: {}, 409: {}, 413: {}},
  )
  def add_documents(request: add_request):
    documents = [
      beir.Document(d.id, d.title, d.text) for d in request.documents
    ]
    try:
      added = retriever.add_documents(documents)
    except serving.DocumentConflict as e:
      raise fastapi.HTTPException(409, str(e)) from e
    metrics.observe_index(retriever)
    return AddDocumentsResponse(
      added=[
        AddedDocument(doc_id=d, docids=list(ids)) for d, ids in added.items()
      ],
      documents=retriever.num_docs,
      index_version=retriever.index_version,
    )

  @app.get(
    "/documents/{doc_id:doc_id}",
    response_model=DocumentRecord,
    dependencies=[guard],
    responses={401: {}, 403: {}, 404: {}},
  )
  def get_document(doc_id: doc_id_in_path):
    try:
      stored = retriever.document(doc_id)
    except serving.UnknownDocument as e:
      raise fastapi.HTTPException(404, str(e)) from e
    return DocumentRecord(**dataclasses.asdict(stored))

  @app.delete(
    "/documents/{doc_id:doc_id}",
    response_model=DeleteDocumentResponse,
    dependencies=[guard],
    responses={401: {}, 403: {}, 404: {}},
  )
  def delete_document(doc_id: doc_id_in_path):
    try:
      retriever.delete_document(doc_id)
    except serving.UnknownDocument as e:
      raise fastapi.HTTPException(404, str(e)) from e
    metrics.observe_index(retriever)
    return DeleteDocumentResponse(
      deleted=doc_id,
      documents=retriever.num_docs,
      index_version=retriever.index_version,
    )


def _status_routes(app, retriever: serving.Retriever, metrics: Metrics) -> None:
  """/healthz and /metrics."""

  @app.get("/healthz", response_model=Health)
  async def healthz():
    return Health(
      status="ok",
      documents=retriever.num_docs,
      index_version=retriever.index_version,
      checkpoint_step=retriever.checkpoint_step,
    )

  @app.get("/metrics", response_class=fastapi.responses.PlainTextResponse)
  async def prometheus_metrics():
    return fastapi.responses.Response(
      prometheus_client.generate_latest(metrics.registry),
      media_type=prometheus_client.CONTENT_TYPE_LATEST,
    )
