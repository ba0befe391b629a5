"""What the service's requests and answers are, and their 4xx errors.

Limits on every input, the id rule (`doc_id_type`, the `doc_id` path
convertor), the pydantic request models (`request_models`) and response
models, and the error handlers that turn validation errors into
{"detail": [{"field", "loc", "type", "msg"}]} without echoing the input
(gr/serve/app.py's docstring has the whole contract).
"""

import dataclasses
import ipaddress
import json
import urllib.parse
from typing import Annotated, Any, Mapping, Optional, Sequence

import fastapi
import fastapi.exceptions
import pydantic
import starlette.convertors
import starlette.exceptions

from gr.serve import retriever as serving


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


def doc_id_type(max_chars: int):
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
    id: doc_id_type(limits.max_doc_id_chars)
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


def install_error_handlers(app: fastapi.FastAPI) -> None:
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
