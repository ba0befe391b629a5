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
import json
from typing import Annotated, Optional

import fastapi
import fastapi.exceptions
from fastapi import security
import prometheus_client

from gr.serve import microbatch
from gr.serve import retriever as serving
from gr.data import beir
from gr.serve import page

from gr.serve import schemas
from gr.serve.middleware import (
  Metrics,
  RequestBody,
  RequestMetrics,
  SecurityHeaders,
)
from gr.serve.schemas import (  # noqa: F401 (is_loopback: the app's API)
  AddDocumentsResponse,
  AddedDocument,
  AsciiJSONResponse,
  BatchSearchResponse,
  DeleteDocumentResponse,
  DocumentRecord,
  Health,
  Limits,
  SearchResponse,
  doc_id_type,
  is_loopback,
  request_models,
)

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
DEFAULT_LIMITS = Limits()


def create_app(
  retriever: serving.Retriever,
  *,
  token: Optional[str] = None,
  limits: Limits = DEFAULT_LIMITS,
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
  schemas.install_error_handlers(app)
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
  doc_id_in_path = Annotated[
    doc_id_type(limits.max_doc_id_chars), fastapi.Path()
  ]

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
