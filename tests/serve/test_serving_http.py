"""Tests for the HTTP service (gr/serve/app.py, scripts/serve.py).

The service runs in a real uvicorn server on a loopback port in a thread
(restarts reload the Retriever from disk; the compiled search is shared, so
they are cheap). The model is tiny and untrained; with max_k above the
number of documents the search is exhaustive (see test_serving.py), so a
document is found iff it is indexed. Schemathesis fuzzes every endpoint of
the OpenAPI schema: no generated request may get a 5xx.
"""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import hypothesis
import hypothesis.errors
import pytest
import uvicorn

from gr.index import artifact as index_lib
from gr.serve import retriever as serving
from gr.serve import app as web_app
from tests.serve import test_serving as run_helpers

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = run_helpers.CONFIG
LIMITS = web_app.Limits(
  max_query_chars=200, max_body_bytes=4096, max_documents=4, max_text_chars=1000
)
REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


class ThreadServer:
  """uvicorn on 127.0.0.1:<free port> in a thread; `stop` is graceful."""

  def __init__(self, app):
    self.server = uvicorn.Server(
      uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        timeout_graceful_shutdown=30,
      )
    )
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    while not self.server.started:
      if not self.thread.is_alive():
        raise RuntimeError("uvicorn did not start")
      time.sleep(0.02)
    port = self.server.servers[0].sockets[0].getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"

  def stop(self):
    self.server.should_exit = True
    self.thread.join(60)
    assert not self.thread.is_alive()


def start_service(model_dir, token=TOKEN, limits=LIMITS, **app_options):
  """(Retriever, ThreadServer) of web_app.create_app(**app_options)."""
  retriever = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  return retriever, ThreadServer(
    web_app.create_app(retriever, token=token, limits=limits, **app_options)
  )


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
  return os.path.dirname(run_helpers.make_run(tmp_path_factory.mktemp("t")))


@pytest.fixture()
def model_dir(run_template, tmp_path):
  return run_helpers.copy_run(run_template, tmp_path / "run")


def serve(model_dir, **app_options):
  """Yields (retriever, client) of a running service, then stops it."""
  retriever, server = start_service(model_dir, **app_options)
  with httpx.Client(base_url=server.url, timeout=60) as client:
    yield retriever, client
  server.stop()
  retriever.close()


@pytest.fixture()
def service(model_dir):
  yield from serve(model_dir)


@pytest.fixture()
def documented_service(model_dir):
  """The service with its OpenAPI schema and pages on (api_docs)."""
  yield from serve(model_dir, api_docs=True)


def found(client, query="apple river"):
  response = client.post("/search", json={"query": query, "k": CONFIG.max_k})
  assert response.status_code == 200, response.text
  return {hit["doc_id"] for hit in response.json()["hits"]}


# ------------------------------------------------------------------ search


def test_search_matches_in_process_retrieve(service):
  retriever, client = service
  response = client.post("/search", json={"query": "ocean tiger", "k": 5})
  assert response.status_code == 200
  body = response.json()
  expected = retriever.retrieve(["ocean tiger"], 5)[0]
  assert body["query"] == "ocean tiger"
  assert [h["doc_id"] for h in body["hits"]] == [h.doc_id for h in expected]
  for hit, want in zip(body["hits"], expected):
    assert set(hit) == {"doc_id", "docid", "score", "title", "matched_docids"}
    assert hit["docid"] == want.docid
    assert hit["matched_docids"] == list(want.matched_docids) == [want.docid]
    assert hit["score"] == pytest.approx(want.score, abs=1e-5)


def test_batch_search_equals_single_searches(service):
  _, client = service
  queries = ["apple", "zebra walnut", "kettle"]
  batch = client.post("/search/batch", json={"queries": queries, "k": 3})
  assert batch.status_code == 200
  results = batch.json()["results"]
  assert [r["query"] for r in results] == queries
  for query, result in zip(queries, results):
    single = client.post("/search", json={"query": query, "k": 3}).json()
    assert [h["doc_id"] for h in result["hits"]] == [
      h["doc_id"] for h in single["hits"]
    ]


def test_search_page_and_health(service):
  retriever, client = service
  page = client.get("/")
  assert page.status_code == 200 and 'id="results"' in page.text
  health = client.get("/healthz").json()
  assert health == {
    "status": "ok",
    "documents": retriever.num_docs,
    "index_version": retriever.index_version,
    "checkpoint_step": 5,
  }


BAD_REQUESTS = [
  ("/search", {"query": "", "k": 3}, 422),
  ("/search", {"query": " \t\n", "k": 3}, 422),
  ("/search", {"query": "\x1f", "k": 3}, 422),  # found by schemathesis
  ("/search/batch", {"queries": ["ok", "\x1c\x1d"]}, 422),
  ("/search", {"query": "x" * 201, "k": 3}, 422),
  ("/search", {"query": "ok", "k": 0}, 422),
  ("/search", {"query": "ok", "k": CONFIG.max_k + 1}, 422),
  ("/search", {"query": "ok", "k": "3"}, 422),
  ("/search", {"query": "ok", "k": 2.5}, 422),
  ("/search", {"query": 7, "k": 3}, 422),
  ("/search", {"query": ["a"], "k": 3}, 422),
  ("/search", {"k": 3}, 422),
  ("/search", {"query": "ok", "k": 3, "extra": 1}, 422),
  ("/search", [], 422),
  ("/search/batch", {"queries": [], "k": 3}, 422),
  ("/search/batch", {"queries": ["a"] * (CONFIG.max_batch + 1)}, 422),
  ("/search/batch", {"queries": ["a", ""]}, 422),
]


@pytest.mark.parametrize("path,body,status", BAD_REQUESTS)
def test_bad_json_bodies_get_4xx(service, path, body, status):
  response = service[1].post(path, json=body)
  assert response.status_code == status, response.text
  assert "detail" in response.json()


@pytest.mark.parametrize(
  "content,status",
  [
    (b'{"query": "ok", "k": 3', 422),  # invalid JSON
    (b'{"query": "\xff\xfe", "k": 3}', 400),  # not UTF-8
    (b'{"query": "\\ud800", "k": 3}', 422),  # lone surrogate
    (b'{"query": "a\\u0000b", "k": 3}', 200),  # NUL is a character
    (b"x" * 5000, 413),  # over max_body_bytes
  ],
)
def test_raw_bodies(service, content, status):
  response = service[1].post(
    "/search", content=content, headers={"Content-Type": "application/json"}
  )
  assert response.status_code == status, response.text


def test_streamed_body_over_limit_is_413(service):
  def chunks():
    for _ in range(10):
      yield b" " * 1000

  response = service[1].post(
    "/search", content=chunks(), headers={"Content-Type": "application/json"}
  )
  assert response.status_code == 413


# ------------------------------------------------------------------ guards


def test_updates_need_the_token(service):
  _, client = service
  doc = {"documents": [{"id": "n1", "text": "new text"}]}
  assert client.post("/documents", json=doc).status_code == 401
  wrong = {"Authorization": "Bearer wrong"}
  assert client.post("/documents", json=doc, headers=wrong).status_code == 401
  assert client.delete("/documents/doc1", headers=wrong).status_code == 401
  assert client.get("/documents/doc1").status_code == 401
  assert client.get("/documents/doc1", headers=wrong).status_code == 401
  assert client.post("/documents", json=doc, headers=AUTH).status_code == 200
  assert client.get("/documents/doc1", headers=AUTH).status_code == 200


def test_no_token_configured_disables_updates(model_dir):
  retriever, server = start_service(model_dir, token=None)
  try:
    with httpx.Client(base_url=server.url) as client:
      doc = {"documents": [{"id": "n1", "text": "new text"}]}
      response = client.post("/documents", json=doc, headers=AUTH)
      assert response.status_code == 403
      assert client.delete("/documents/doc1", headers=AUTH).status_code == 403
      assert client.get("/documents/doc1", headers=AUTH).status_code == 403
      assert client.post("/search", json={"query": "a"}).status_code == 200
  finally:
    server.stop()
    retriever.close()


# ---------------------------------------------------------------- updates


def test_add_find_restart_find_delete(model_dir):
  retriever, server = start_service(model_dir)
  with httpx.Client(base_url=server.url, timeout=60) as client:
    response = client.post(
      "/documents",
      headers=AUTH,
      json={
        "documents": [
          {"id": "fresh", "title": "Fresh news", "text": "violet harbor"}
        ]
      },
    )
    assert response.status_code == 200, response.text
    assert response.json()["added"][0]["doc_id"] == "fresh"
    assert "fresh" in found(client)
    duplicate = client.post(
      "/documents",
      headers=AUTH,
      json={"documents": [{"id": "fresh", "text": "again"}]},
    )
    assert duplicate.status_code == 409
    record = client.get("/documents/fresh", headers=AUTH).json()
  server.stop()
  retriever.close()
  assert record["added_at"] is not None
  assert record == {
    "doc_id": "fresh",
    "docids": response.json()["added"][0]["docids"],
    "title": "Fresh news",
    "text": "violet harbor",
    "online": True,
    "added_at": record["added_at"],
  }

  retriever, server = start_service(model_dir)
  with httpx.Client(base_url=server.url, timeout=60) as client:
    assert "fresh" in found(client)
    # What the index holds survives the restart, the time of adding too.
    assert client.get("/documents/fresh", headers=AUTH).json() == record
    hit = [
      h
      for h in client.post(
        "/search", json={"query": "violet", "k": CONFIG.max_k}
      ).json()["hits"]
      if h["doc_id"] == "fresh"
    ][0]
    assert hit["title"] == "Fresh news"
    assert client.delete("/documents/fresh", headers=AUTH).status_code == 200
    assert client.delete("/documents/fresh", headers=AUTH).status_code == 404
    assert client.get("/documents/fresh", headers=AUTH).status_code == 404
    for query in ("violet harbor", "apple", "fresh"):
      assert "fresh" not in found(client, query)
  server.stop()
  retriever.close()
  assert (
    "fresh" not in index_lib.load_index(retriever.index_dir).table.docids_of
  )


def test_missing_null_empty_and_blank_titles_are_the_same(service):
  """No title, "title": null, "" and white space all store "" (were: ""
  got a 422); a real title is kept, in search hits and in the log."""
  retriever, client = service
  titles = {"t_null": None, "t_empty": "", "t_blank": " \t", "t_set": "Kept"}
  documents = [{"id": "t_missing", "text": "quartz lemon"}] + [
    {"id": doc_id, "title": title, "text": "quartz lemon"}
    for doc_id, title in titles.items()
  ]
  for start in range(0, len(documents), LIMITS.max_documents):
    body = {"documents": documents[start : start + LIMITS.max_documents]}
    response = client.post("/documents", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
  expected = {"t_missing": "", "t_null": "", "t_empty": "", "t_blank": ""}
  expected["t_set"] = "Kept"
  hits = client.post(
    "/search", json={"query": "quartz lemon", "k": CONFIG.max_k}
  ).json()["hits"]
  assert {h["doc_id"]: h["title"] for h in hits if h["doc_id"] in expected} == (
    expected
  )
  logged = serving.read_online_documents(retriever.index_dir)
  assert {d: logged[d].title for d in expected} == expected


def test_concurrent_adds_and_searches_lose_nothing(service):
  retriever, client = service
  before = set(retriever.index.doc_ids)
  new_ids = [f"c{i}" for i in range(8)]

  def add(doc_id):
    return client.post(
      "/documents",
      headers=AUTH,
      json={"documents": [{"id": doc_id, "text": f"walnut {doc_id}"}]},
    ).status_code

  def search(i):
    return client.post("/search", json={"query": f"q {i}", "k": 4}).status_code

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    adds = [pool.submit(add, d) for d in new_ids]
    searches = [pool.submit(search, i) for i in range(16)]
    assert [f.result() for f in adds] == [200] * 8
    assert [f.result() for f in searches] == [200] * 16
  assert found(client) == before | set(new_ids)
  on_disk = index_lib.load_index(retriever.index_dir).table
  assert set(on_disk.docids_of) == before | set(new_ids)


def test_metrics_count_requests_batches_and_index(service):
  _, client = service
  client.post("/search", json={"query": "apple", "k": 2})
  client.post("/search", json={"query": "", "k": 2})
  text = client.get("/metrics").text
  assert 'gr_requests_total{endpoint="/search",method="POST",status="200"}' in (
    text
  )
  assert 'endpoint="/search",method="POST",status="422"' in text
  assert "gr_request_latency_seconds_bucket" in text
  assert "gr_batch_size_count" in text
  assert "gr_index_documents 12.0" in text


def test_shutdown_finishes_in_flight_search_and_update(model_dir):
  """Requests already running when shutdown starts complete and persist."""
  retriever = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  entered, release = threading.Barrier(3), threading.Event()
  real_retrieve, real_add = retriever.retrieve, retriever.add_documents

  def slow(function):
    def wrapped(*args, **kwargs):
      entered.wait()
      release.wait()
      return function(*args, **kwargs)

    return wrapped

  retriever.retrieve, retriever.add_documents = (
    slow(real_retrieve),
    slow(real_add),
  )
  server = ThreadServer(web_app.create_app(retriever, token=TOKEN))
  with (
    concurrent.futures.ThreadPoolExecutor(2) as pool,
    httpx.Client(base_url=server.url, timeout=60) as client,
  ):
    search = pool.submit(client.post, "/search", json={"query": "a", "k": 2})
    add = pool.submit(
      client.post,
      "/documents",
      headers=AUTH,
      json={"documents": [{"id": "late", "text": "stone"}]},
    )
    entered.wait()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.3)  # let the server begin shutting down
    release.set()
    stopper.join()
    assert search.result().status_code == 200
    assert add.result().status_code == 200
  retriever.close()
  assert "late" in index_lib.load_index(retriever.index_dir).table.docids_of


# ---------------------------------------------------------------- fuzzing


def test_fuzzed_requests_never_get_a_5xx(documented_service):
  import schemathesis  # pylint: disable=g-import-not-at-top

  retriever, client = documented_service
  url = str(client.base_url)
  schema = schemathesis.openapi.from_url(url + "/openapi.json")
  fuzzed = []
  for result in schema.get_all_operations():
    operation = result.ok()
    for mode in (
      schemathesis.GenerationMode.POSITIVE,
      schemathesis.GenerationMode.NEGATIVE,
    ):

      @hypothesis.settings(
        max_examples=15,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
      )
      @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
      def check(case):
        response = case.call(base_url=url, headers=dict(AUTH), timeout=60)
        assert response.status_code < 500, (
          case.method,
          case.path,
          case.body,
          response.text,
        )

      try:
        check()
        fuzzed.append((operation.label, mode))
      except hypothesis.errors.Unsatisfiable:
        # No invalid input exists (e.g. GET /healthz has no parameters).
        assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
  labels = {label for label, _ in fuzzed}
  assert {
    "POST /search",
    "POST /search/batch",
    "POST /documents",
    "DELETE /documents/{doc_id}",
    "GET /documents/{doc_id}",
  } <= labels, fuzzed
  assert sum(mode == "negative" for _, mode in fuzzed) >= 4, fuzzed
  # The worker is alive and the index on disk is intact and current.
  assert client.get("/healthz").status_code == 200
  assert found(client, "still alive")
  on_disk = index_lib.load_index(retriever.index_dir).table
  assert on_disk == retriever.index.table


# ------------------------------------------------------ the real script


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_script(model_dir, token_file, port, cache_dir):
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  process = subprocess.Popen(
    [
      sys.executable,
      os.path.join(REPO, "scripts", "serve.py"),
      f"--checkpoint={model_dir}",
      f"--port={port}",
      "--buckets=4",
      f"--max_k={CONFIG.max_k}",
      f"--token_file={token_file}",
    ],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 300
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(process.stderr.read().decode()[-3000:])
    try:
      if httpx.get(url + "/healthz").status_code == 200:
        return process, url
    except httpx.TransportError:
      time.sleep(0.5)
  process.kill()
  raise RuntimeError("serve.py did not come up")


@pytest.mark.crash
def test_script_sigterm_then_restart_keeps_added_document(model_dir, tmp_path):
  token_file = tmp_path / "token"
  token_file.write_text(TOKEN + "\n")
  port, cache = _free_port(), str(tmp_path / "jax_cache")
  process, url = _start_script(model_dir, token_file, port, cache)
  with httpx.Client(base_url=url, timeout=60) as client:
    added = client.post(
      "/documents",
      headers=AUTH,
      json={"documents": [{"id": "persisted", "text": "quartz"}]},
    )
    assert added.status_code == 200
    assert "persisted" in found(client)
  process.send_signal(signal.SIGTERM)
  # uvicorn shuts down gracefully, then re-raises the signal it caught.
  assert process.wait(120) in (0, -signal.SIGTERM)
  assert "Application shutdown complete" in process.stderr.read().decode()
  process, url = _start_script(model_dir, token_file, port, cache)
  try:
    with httpx.Client(base_url=url, timeout=60) as client:
      assert "persisted" in found(client)
  finally:
    process.send_signal(signal.SIGTERM)
    process.wait(120)


@pytest.mark.parametrize(
  "host,loopback",
  [
    ("127.0.0.1", True),
    ("::1", True),
    ("localhost", True),
    ("0.0.0.0", False),
    ("192.168.1.5", False),
    ("example.com", False),
  ],
)
def test_only_loopback_hosts_count_as_local(host, loopback):
  assert web_app.is_loopback(host) == loopback
