"""The HTTP service (gr/serve/app.py) against hostile input.

A real uvicorn server on a loopback port (tests/serve/test_serving_http.py's
ThreadServer) over the tiny untrained run of tests/serve/test_serving.py. Bodies
are written as raw bytes, so that they can hold what Python's JSON parser
accepts and a JSON encoder refuses (NaN, Infinity, 1e999) and integers of
thousands of digits. Every malformed request must get a 4xx whose JSON
names the field, on a connection that stays open.
"""

import base64
import dataclasses
import datetime
import hashlib
import html.parser
import http.client
import json
import os
import socket
import urllib.parse

import httpx
import hypothesis
from hypothesis import strategies as st
import pytest

from gr.data import beir
from gr.index import artifact as index_lib
from gr.serve import app as web_app
from tests.serve import test_serving as run_helpers
from tests.serve import test_serving_http as http_helpers

AUTH = http_helpers.AUTH
CONFIG = run_helpers.CONFIG
# Bodies up to 64 KiB: room for integers longer than Python parses (4300
# digits) and for deep nesting, which must not be cut off as 413 first.
LIMITS = web_app.Limits(
  max_query_chars=200,
  max_body_bytes=1 << 16,
  max_documents=64,
  max_text_chars=1000,
)


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
  return os.path.dirname(run_helpers.make_run(tmp_path_factory.mktemp("t")))


@pytest.fixture()
def model_dir(run_template, tmp_path):
  return run_helpers.copy_run(run_template, tmp_path / "run")


@pytest.fixture()
def service(model_dir):
  """(retriever, server url) of a fresh copy of the run."""
  retriever, server = http_helpers.start_service(model_dir, limits=LIMITS)
  yield retriever, server.url
  server.stop()
  retriever.close()


# ------------------------------------------------------- raw requests --


def raw_request(
  method: str, path: str, body: bytes = b"", headers: dict = None
) -> bytes:
  """One HTTP/1.1 request as bytes, Content-Length from `body`."""
  lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
  headers = {"Content-Type": "application/json", **(headers or {})}
  headers.setdefault("Content-Length", str(len(body)))
  lines += [f"{name}: {value}" for name, value in headers.items()]
  return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


@dataclasses.dataclass
class Reply:
  status: int
  headers: dict
  body: bytes

  def json(self):
    return json.loads(self.body)


def exchange(sock: socket.socket, request: bytes) -> Reply:
  """Sends `request` on the open connection `sock` and reads one reply."""
  sock.sendall(request)
  response = http.client.HTTPResponse(sock)
  response.begin()
  body = response.read()
  headers = {k.lower(): v for k, v in response.getheaders()}
  return Reply(response.status, headers, body)


def connect(url: str) -> socket.socket:
  host, port = url.removeprefix("http://").split(":")
  sock = socket.create_connection((host, int(port)), timeout=60)
  return sock


def fields(reply: Reply) -> list[str]:
  """The fields a 4xx's detail names (it must be a list of errors)."""
  detail = reply.json()["detail"]
  assert isinstance(detail, list), detail
  return [error["field"] for error in detail]


# ------------------------------------------------- NaN, Infinity, huge --

NAN_BODIES = [
  ("/search", b'{"query": "s", "k": NaN}', "k"),
  ("/search", b'{"query": "s", "k": Infinity}', "k"),
  ("/search", b'{"query": "s", "k": -Infinity}', "k"),
  ("/search", b'{"query": "s", "k": 1e999}', "k"),
  ("/search", b'{"query": NaN}', "query"),
  ("/search/batch", b'{"queries": [NaN]}', "queries.0"),
  ("/search/batch", b'{"queries": ["a"], "k": NaN}', "k"),
  (
    "/documents",
    b'{"documents": [{"id": NaN, "text": "x"}]}',
    "documents.0.id",
  ),
  (
    "/documents",
    b'{"documents": [{"id": "a", "text": Infinity}]}',
    "documents.0.text",
  ),
  ("/documents", b'{"id": NaN}', "id"),
  ("/search", b'{"query": "s", "k": ' + b"7" * 5000 + b"}", "body"),
  ("/search", b"[" * 5000 + b"]" * 5000, "body"),
  ("/search", b'{"query": "s", "k": 3', "body"),
  ("/search", b'{"query": "\xff\xfe", "k": 3}', "body"),
]


@pytest.mark.parametrize("path,body,field", NAN_BODIES)
def test_malformed_bodies_get_a_4xx_naming_the_field_on_a_live_connection(
  service, path, body, field
):
  _, url = service
  with connect(url) as sock:
    reply = exchange(sock, raw_request("POST", path, body, AUTH))
    assert 400 <= reply.status < 500, reply
    assert field in fields(reply), reply.body
    assert reply.headers.get("connection") != "close"
    # The same connection answers the next request.
    good = raw_request("POST", "/search", b'{"query": "apple", "k": 2}')
    again = exchange(sock, good)
    assert again.status == 200, again
    assert len(again.json()["hits"]) == 2


# ------------------------------------------------------ property test --


@dataclasses.dataclass(frozen=True)
class Token:
  """A number written into the JSON text as it is (NaN, 1e999, 10^5000)."""

  text: str


def encode(value) -> bytes:
  """JSON text of `value`, Tokens written verbatim, NaN as NaN."""
  if isinstance(value, Token):
    return value.text.encode()
  if isinstance(value, dict):
    items = [encode(k) + b":" + encode(v) for k, v in value.items()]
    return b"{" + b",".join(items) + b"}"
  if isinstance(value, list):
    return b"[" + b",".join(encode(v) for v in value) + b"]"
  return json.dumps(value, allow_nan=True).encode()


TOKENS = st.sampled_from(
  ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0"]
  + ["9" * 5000, "-" + "1" * 4400, "1" + "0" * 40]
).map(Token) | st.from_regex(
  r"-?[0-9]{1,25}(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?", fullmatch=True
).map(Token)
LEAVES = (
  st.none()
  | st.booleans()
  | st.integers()
  | st.floats()
  | st.text(max_size=20)
  | TOKENS
)
VALUES = st.recursive(
  LEAVES,
  lambda inner: (
    st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
  ),
  max_leaves=12,
)
WORDS = st.lists(st.sampled_from(run_helpers.WORDS), min_size=1, max_size=3)
TEXT = WORDS.map(" ".join) | st.text(max_size=30) | VALUES
K = st.integers(1, CONFIG.max_k) | st.integers(-2, CONFIG.max_k + 2) | VALUES
DOCUMENT = st.fixed_dictionaries(
  {"id": st.text(min_size=1, max_size=12) | VALUES, "text": TEXT},
  optional={"title": TEXT},
)


def shaped(required: dict, optional: dict):
  """Bodies with the endpoint's fields (each valid or not), sometimes one
  field missing or one too many."""
  fields_ = {**required, **optional}
  return (
    st.fixed_dictionaries(required, optional=optional)
    | st.fixed_dictionaries({}, optional=fields_)
    | st.fixed_dictionaries({**required, "extra": VALUES}, optional=optional)
  )


BODIES = {
  "/search": shaped({"query": TEXT}, {"k": K}),
  "/search/batch": shaped(
    {"queries": st.lists(TEXT, min_size=1, max_size=5) | VALUES}, {"k": K}
  ),
  "/documents": shaped(
    {"documents": st.lists(DOCUMENT, min_size=1, max_size=5) | VALUES}, {}
  ),
}
POSTS = st.one_of(
  *[
    st.tuples(st.just("POST"), st.just(path), body | VALUES)
    for path, body in BODIES.items()
  ]
)
BY_ID = st.tuples(
  st.sampled_from(["DELETE", "GET"]),
  st.text(min_size=1, max_size=12).map(
    lambda i: "/documents/" + urllib.parse.quote(i, safe="")
  ),
  VALUES,
)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", None])


def test_arbitrary_json_to_every_endpoint_never_gets_a_5xx(service):
  retriever, url = service
  seen = set()
  with httpx.Client(base_url=url, timeout=60) as client:

    @hypothesis.settings(
      max_examples=250,
      deadline=None,
      database=None,
      derandomize=True,
      suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(request=POSTS | BY_ID, content_type=CONTENT_TYPES)
    def check(request, content_type):
      method, path, value = request
      headers = dict(AUTH)
      if content_type:
        headers["Content-Type"] = content_type
      response = client.request(
        method, path, content=encode(value), headers=headers
      )
      assert response.status_code < 500, (method, path, response.text)
      endpoint = "/documents/{id}" if method != "POST" else path
      seen.add((method + " " + endpoint, response.status_code // 100))
      if response.status_code >= 400:
        assert "detail" in response.json(), response.text
      if response.status_code == 422:
        for error in response.json()["detail"]:
          assert isinstance(error["field"], str) and error["msg"], error

    check()
    assert client.get("/healthz").status_code == 200
  # Every endpoint got requests, and each POST valid and invalid ones.
  for path in BODIES:
    assert {("POST " + path, 2), ("POST " + path, 4)} <= seen, seen
  assert {("DELETE /documents/{id}", 4), ("GET /documents/{id}", 4)} <= seen
  on_disk = index_lib.load_index(retriever.index_dir).table
  assert on_disk == retriever.index.table


# ------------------------------------------------------------- doc ids --


def refused(doc_id: str) -> bool:
  """The rule for ids, as the service documents it: some non-space
  character, at most 256 characters, not a dot segment (. or ..)."""
  return not doc_id.strip() or doc_id in (".", "..") or len(doc_id) > 256


def id_path(doc_id: str) -> str:
  """/documents/{id} with the id as one percent-encoded path segment."""
  return "/documents/" + urllib.parse.quote(doc_id, safe="")


ODD_IDS = [
  "a/b", "../../x", "/", "//", "a/", "/a", "./a", "a/.", "...", ".a",
  "%", "%2F", "a%2Fb", "%252F", "?q=1", "#frag", "a b", " a", "a ",
  "x", "x\n", "\nx", "a\r\nb", "\x00", "é", "e\u0301", "日本",
  "\U0001f642", "\u2028", "\ufeff", "\U0010ffff", "+", "a+b", "~",
  "doc1\n", "doc1/", "doc1/x", "doc1 ", "x" * 256,
  ".", "..", " ", "\x1f", "\u3000", "x" * 257,
]  # fmt: skip


def test_every_accepted_id_can_be_deleted_by_its_url(service):
  """Every ASCII character alone and inside an id, and odd ids (slashes,
  dot segments, escapes, new lines, non-BMP, a trained id with a suffix):
  those the rule refuses get a 422 at add; the others are added, a batch
  at a time, and each is read back and deleted through its URL, taking
  no other document with it."""
  retriever, url = service
  ascii_ids = [chr(c) for c in range(128)] + [f"a{chr(c)}b" for c in range(128)]
  ids = list(dict.fromkeys(ODD_IDS + ascii_ids))
  accepted = [i for i in ids if not refused(i)]
  trained = set(retriever.index.doc_ids)
  with httpx.Client(base_url=url, timeout=60) as client:
    for doc_id in [i for i in ids if refused(i)]:
      body = {"documents": [{"id": doc_id, "text": "river"}]}
      response = client.post("/documents", json=body, headers=AUTH)
      assert response.status_code == 422, (doc_id, response.text)
      assert response.json()["detail"][0]["field"] == "documents.0.id"
    for start in range(0, len(accepted), 16):  # the trie never grows
      batch = accepted[start : start + 16]
      body = {"documents": [{"id": i, "text": "river"} for i in batch]}
      response = client.post("/documents", json=body, headers=AUTH)
      assert response.status_code == 200, response.text
      live = trained | set(batch)
      for doc_id in batch:
        record = client.get(id_path(doc_id), headers=AUTH)
        assert record.status_code == 200, (doc_id, record.text)
        assert record.json()["doc_id"] == doc_id
        response = client.delete(id_path(doc_id), headers=AUTH)
        assert response.status_code == 200, (doc_id, response.text)
        assert response.json()["deleted"] == doc_id
        live.remove(doc_id)
        assert set(retriever.index.doc_ids) == live, doc_id
      response = client.delete(id_path(batch[0]), headers=AUTH)
      assert response.status_code == 404


def test_arbitrary_ids_round_trip_or_are_refused(service):
  retriever, url = service
  with httpx.Client(base_url=url, timeout=60) as client:

    @hypothesis.settings(
      max_examples=60,
      deadline=None,
      database=None,
      derandomize=True,
      suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(doc_id=st.text(min_size=1, max_size=16))
    def check(doc_id):
      body = {"documents": [{"id": doc_id, "text": "stone"}]}
      added = client.post("/documents", json=body, headers=AUTH)
      assert added.status_code == (422 if refused(doc_id) else 200), (
        doc_id,
        added.text,
      )
      if added.status_code == 200:
        record = client.get(id_path(doc_id), headers=AUTH)
        assert record.json()["doc_id"] == doc_id, record.text
        deleted = client.delete(id_path(doc_id), headers=AUTH)
        assert deleted.status_code == 200, (doc_id, deleted.text)
        assert doc_id not in retriever.index.table.docids_of

    check()


# ----------------------------------------------------------- hardening --


def test_stalled_bodies_are_answered_408_and_closed(model_dir):
  """Clients that declare more body than they send are cut off (they
  were held open for good); a body sent in pieces is read whole."""
  limits = dataclasses.replace(LIMITS, body_timeout_s=0.5)
  retriever, server = http_helpers.start_service(model_dir, limits=limits)
  try:
    stalled = [connect(server.url) for _ in range(4)]
    for sock in stalled:
      head = raw_request("POST", "/search", b"", {"Content-Length": "100"})
      sock.sendall(head + b'{"query":')
    for sock in stalled:
      reply = exchange(sock, b"")
      assert reply.status == 408, reply
      assert reply.headers["connection"] == "close"
      assert sock.recv(1) == b""  # closed by the server
      sock.close()
    with connect(server.url) as sock:
      body = b'{"query": "apple", "k": 3}'
      sock.sendall(raw_request("POST", "/search", body)[: -len(body) + 5])
      reply = exchange(sock, body[5:])
      assert reply.status == 200, reply
      assert len(reply.json()["hits"]) == 3
  finally:
    server.stop()
    retriever.close()


def test_api_docs_are_off_unless_asked_for(model_dir):
  for api_docs, status in ((False, 404), (True, 200)):
    retriever, server = http_helpers.start_service(model_dir, api_docs=api_docs)
    try:
      with httpx.Client(base_url=server.url) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
          assert client.get(path).status_code == status, (api_docs, path)
        if api_docs:  # its CDN scripts are not blocked; framing is
          docs = client.get("/docs")
          assert "content-security-policy" not in docs.headers
          assert docs.headers["x-frame-options"] == "DENY"
    finally:
      server.stop()
      retriever.close()


class _Inline(html.parser.HTMLParser):
  """The page's inline scripts and styles, and any inline attribute a
  content policy of hashes would block (on* handlers, style=)."""

  def __init__(self):
    super().__init__()
    self.elements, self.attributes, self._open = [], [], None

  def handle_starttag(self, tag, attrs):
    self._open = tag if tag in ("script", "style") else None
    self.attributes += [a for a, _ in attrs if a == "style" or a[:2] == "on"]

  def handle_data(self, data):
    if self._open:
      self.elements.append((self._open, data))
      self._open = None


def _csp_hash(source: str) -> str:
  digest = hashlib.sha256(source.encode()).digest()
  return f"'sha256-{base64.b64encode(digest).decode()}'"


def test_the_page_and_every_answer_carry_security_headers(service):
  _, url = service
  with httpx.Client(base_url=url) as client:
    page = client.get("/")
    policy = dict(
      part.strip().split(" ", 1)
      for part in page.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert "unsafe" not in page.headers["content-security-policy"]
    inline = _Inline()
    inline.feed(page.text)
    assert {tag for tag, _ in inline.elements} == {"script", "style"}
    for tag, source in inline.elements:  # each allowed by its own hash
      assert policy[f"{tag}-src"] == _csp_hash(source), tag
    assert inline.attributes == []
    answers = [
      page,
      client.get("/healthz"),
      client.post("/search", json={"query": ""}),
      client.get("/nowhere"),
    ]
    for answer in answers:
      assert answer.headers["x-content-type-options"] == "nosniff"
      assert answer.headers["x-frame-options"] == "DENY"
      assert (
        "frame-ancestors 'none'" in (answer.headers["content-security-policy"])
      )


def test_get_document_returns_what_the_index_holds(service):
  retriever, url = service
  trained = beir_corpus(retriever)["doc3"]
  with httpx.Client(base_url=url, timeout=60) as client:
    record = client.get("/documents/doc3", headers=AUTH)
    assert record.status_code == 200, record.text
    assert record.json() == {
      "doc_id": "doc3",
      "docids": list(retriever.index.table.docids_of["doc3"]),
      "title": trained.title,
      "text": trained.text,
      "online": False,
      "added_at": None,
    }
    body = {"documents": [{"id": "a/b", "title": "T", "text": "kettle"}]}
    added = client.post("/documents", json=body, headers=AUTH).json()
    record = client.get(id_path("a/b"), headers=AUTH).json()
    assert record["docids"] == added["added"][0]["docids"]
    assert (record["title"], record["text"], record["online"]) == (
      "T",
      "kettle",
      True,
    )
    added_at = datetime.datetime.fromisoformat(record["added_at"])
    assert added_at.utcoffset() == datetime.timedelta(0)
    assert client.delete(id_path("a/b"), headers=AUTH).status_code == 200
    assert client.get(id_path("a/b"), headers=AUTH).status_code == 404
    assert client.get("/documents/nope", headers=AUTH).status_code == 404


def beir_corpus(retriever) -> dict:
  """The run's corpus (the file the Retriever reads trained texts from)."""
  return beir.read_corpus(retriever.corpus.path)
