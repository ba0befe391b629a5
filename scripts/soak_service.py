r"""Kill-and-verify soak of the docid decoding service (issue 22 item 8).

  python scripts/soak_service.py --checkpoint=runs/demo/model \
    --out=docs/results/service_soak.json [--kills=4] [--ops_per_round=400] \
    [--clients=8] [--rss_adds=1000] [--seed=0]

Runs scripts/serve.py on 127.0.0.1 (a free port) over a copy-free fresh
served index (--index_dir in a temporary folder, seeded from the
checkpoint's artifact), then:

  1. idle: --idle_searches sequential searches (search p99 idle);
  2. K + 1 rounds of --clients threads sending a bounded, seeded mix of
     searches, adds (one document or a batch of 2-6) and deletes (of the
     client's own acknowledged documents). In each of the first K rounds the
     server is SIGKILLed after a random number of operations (a random
     few milliseconds later, so that kills land inside updates), restarted,
     and the ledger is checked;
  The server scores with the run's lexical plan when the run has a
  lexical_weight.json (or --lexical_weight > 0; 0 = the model alone).
  3. optionally (--rss_adds=N): on the last server, N single adds then N
     deletes, the server's RSS read from /proc after 10 adds and at the end.

The ledger: every add and delete a client sent, acknowledged (2xx) or not
(the connection died with the server). After each restart:
  - every acknowledged add is present (GET /documents/{id}: 200, same title
    and text, at least one docid), unless deleted since;
  - every acknowledged delete is gone (404);
  - an unacknowledged add (a whole request: all its documents) is either
    wholly present or wholly absent; an unacknowledged delete either
    happened or not; what is present is whole (text and docids);
  - /healthz's document count equals the documents the ledger says exist.
Anything else counts as acknowledged_lost or half_applied. Every 5xx answer
counts in errors_5xx. Every loop is bounded by counts and by --timeout_s.
"""

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "soak-token"
WORDS = (
  "amber basalt cobalt dune ember fjord glacier harbor iris juniper kelp "
  "lagoon meadow nectar orchid prairie quarry reef sierra tundra umber "
  "valley willow xylem yarrow zephyr"
).split()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """scripts/serve.py as a child process on 127.0.0.1."""

  def __init__(self, checkpoint, index_dir, log_path, buckets, extra_args=()):
    self.checkpoint, self.index_dir = checkpoint, index_dir
    self.log_path, self.buckets = log_path, buckets
    self.extra_args = list(extra_args)
    self.port = free_port()
    self.process = None

  def start(self, timeout_s: float) -> float:
    """Starts and waits for /healthz; returns seconds to ready."""
    start = time.perf_counter()
    self.port = free_port()
    env = {**os.environ, "GR_SERVE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    command = [
      sys.executable,
      os.path.join(REPO, "scripts", "serve.py"),
      f"--checkpoint={self.checkpoint}",
      f"--index_dir={self.index_dir}",
      "--host=127.0.0.1",
      f"--port={self.port}",
      f"--buckets={self.buckets}",
      *self.extra_args,
    ]
    log = open(self.log_path, "a")  # pylint: disable=consider-using-with
    self.process = subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
    )
    log.close()
    while time.perf_counter() - start < timeout_s:
      if self.process.poll() is not None:
        raise RuntimeError(
          f"server exited with {self.process.returncode}; see {self.log_path}"
        )
      try:
        status, _ = request(self.port, "GET", "/healthz", timeout=2)
        if status == 200:
          return time.perf_counter() - start
      except OSError:
        pass
      time.sleep(0.2)
    self.kill()
    raise RuntimeError(
      f"server not ready in {timeout_s} s; see {self.log_path}"
    )

  def kill(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signal.SIGKILL)
      self.process.wait(timeout=60)

  def stop(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.kill()

  def rss_mb(self) -> float:
    with open(f"/proc/{self.process.pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
    return float("nan")


def request(port, method, path, body=None, timeout=60.0, connection=None):
  """(status, parsed JSON or None); raises OSError when the server is gone."""
  conn = connection or http.client.HTTPConnection(
    "127.0.0.1", port, timeout=timeout
  )
  headers = {"Authorization": f"Bearer {TOKEN}"}
  data = None
  if body is not None:
    data = json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
  try:
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
  except (http.client.HTTPException, OSError) as e:
    conn.close()
    raise ConnectionError(str(e)) from e
  finally:
    if connection is None:
      conn.close()
  try:
    return response.status, json.loads(raw) if raw else None
  except ValueError:
    return response.status, None


def doc_path(doc_id: str) -> str:
  return "/documents/" + urllib.parse.quote(doc_id, safe="")


class Ledger:
  """What clients sent and what the server acknowledged (thread-safe)."""

  def __init__(self):
    self.lock = threading.Lock()
    self.sent = {}  # doc_id -> document dict
    self.state = {}  # doc_id -> present | absent | add? | delete?
    self.pending_batches = []  # unacknowledged add requests (doc ids)
    self.owner = {}  # doc_id -> the client that added it
    self.errors_5xx = 0
    self.add_ms, self.search_ms = [], []

  def new_documents(self, client, serial, rng, count):
    """`count` new documents; `serial` is unique to the client (a round
    number and a counter), so no id is ever sent twice."""
    docs = []
    for i in range(count):
      doc_id = f"soak/{client}/{serial}-{i}"
      words = " ".join(rng.choice(WORDS) for _ in range(6))
      docs.append({"id": doc_id, "title": f"T {doc_id}", "text": words})
    with self.lock:
      for doc in docs:
        self.sent[doc["id"]] = doc
        self.state[doc["id"]] = "add?"
        self.owner[doc["id"]] = client
    return docs

  def present_of(self, client) -> list[str]:
    """The client's documents that are present (after a verify)."""
    with self.lock:
      return [
        d
        for d, c in self.owner.items()
        if c == client and self.state[d] == "present"
      ]

  def acknowledged(self, doc_ids, state):
    with self.lock:
      for doc_id in doc_ids:
        self.state[doc_id] = state


class Client(threading.Thread):
  """One client's bounded, seeded loop of searches, adds and deletes."""

  def __init__(self, number, port, ledger, ops, seed, stop, mix, round_number):
    super().__init__(daemon=True)
    self.round = round_number
    self.number, self.port, self.ledger = number, port, ledger
    self.ops, self.stop, self.mix = ops, stop, mix
    self.rng = random.Random(seed)
    self.mine = ledger.present_of(number)  # what it may delete
    self.serial = 0
    self.done = 0

  def run(self):
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
    try:
      for _ in range(self.ops):
        if self.stop.is_set():
          return
        try:
          self.one(conn)
        except ConnectionError:
          return  # the server died: this round is over for this client
        self.done += 1
    finally:
      conn.close()

  def one(self, conn):
    roll = self.rng.random()
    search, add = self.mix
    if roll < search or (roll >= search + add and not self.mine):
      query = " ".join(self.rng.choice(WORDS) for _ in range(3))
      start = time.perf_counter()
      status, _ = request(
        self.port,
        "POST",
        "/search",
        {"query": query, "k": 10},
        connection=conn,
      )
      self.count(status)
      if status == 200:
        self.ledger.search_ms.append(1000 * (time.perf_counter() - start))
    elif roll < search + add:
      count = 1 if self.rng.random() < 0.8 else self.rng.randint(2, 6)
      self.serial += 1
      docs = self.ledger.new_documents(
        self.number, f"{self.round}.{self.serial}", self.rng, count
      )
      ids = [d["id"] for d in docs]
      with self.ledger.lock:
        self.ledger.pending_batches.append(ids)
      start = time.perf_counter()
      status, _ = request(
        self.port, "POST", "/documents", {"documents": docs}, connection=conn
      )
      self.count(status)
      if status == 200:
        if count == 1:
          self.ledger.add_ms.append(1000 * (time.perf_counter() - start))
        self.ledger.acknowledged(ids, "present")
        with self.ledger.lock:
          self.ledger.pending_batches.remove(ids)
        self.mine.extend(ids)
      elif status < 500:
        self.ledger.acknowledged(ids, "absent")
        with self.ledger.lock:
          self.ledger.pending_batches.remove(ids)
    else:
      doc_id = self.mine.pop(self.rng.randrange(len(self.mine)))
      self.ledger.acknowledged([doc_id], "delete?")
      status, _ = request(
        self.port, "DELETE", doc_path(doc_id), connection=conn
      )
      self.count(status)
      if status == 200:
        self.ledger.acknowledged([doc_id], "absent")
      elif status < 500:
        self.ledger.acknowledged([doc_id], "present")
        self.mine.append(doc_id)

  def count(self, status):
    if status >= 500:
      with self.ledger.lock:
        self.ledger.errors_5xx += 1


def verify(port, ledger, base_docs) -> dict:
  """Checks the ledger against the restarted server; resolves unknowns."""
  lost = half = 0
  present, problems = {}, []
  for doc_id, doc in ledger.sent.items():
    status, body = request(port, "GET", doc_path(doc_id))
    if status >= 500:
      ledger.errors_5xx += 1
    whole = (
      status == 200
      and body["text"] == doc["text"]
      and body["title"] == doc["title"]
      and len(body["docids"]) >= 1
    )
    if status == 200 and not whole:
      half += 1
      problems.append(("not whole", doc_id, doc, body))
    present[doc_id] = status == 200
    state = ledger.state[doc_id]
    if state == "present" and not present[doc_id]:
      lost += 1
      problems.append(("acknowledged add lost", doc_id, status))
    if state == "absent" and present[doc_id]:
      lost += 1
      problems.append(("acknowledged delete back", doc_id, status))
  for ids in ledger.pending_batches:
    if len({present[d] for d in ids}) > 1:
      half += 1  # part of one add request
      problems.append(("part of a request", ids))
  ledger.pending_batches.clear()
  for doc_id in ledger.sent:
    ledger.state[doc_id] = "present" if present[doc_id] else "absent"
  _, health = request(port, "GET", "/healthz")
  expected = base_docs + sum(present.values())
  if health["documents"] != expected:
    half += 1
    problems.append(("count", health["documents"], expected))
  return {
    "lost": lost,
    "half_applied": half,
    "problems": [str(p)[:300] for p in problems[:5]],
    "documents": health["documents"],
    "expected": expected,
  }


def build_demo_like_run(work: str, num_docs: int, input_length: int = 128):
  """A run shaped like `make demo`'s, untrained: all-MiniLM-L6-v2 (frozen)
  under the demo's one-layer 384-wide decoder, atomic docids over the first
  `num_docs` news bodies, warm-started so that step 0 is dense retrieval
  (the model family's warm start, gr/model/family.py, as run_experiment
  starts), with English term sets saved before the checkpoint and the
  demo's plan weight (2.0, not chosen on this run) in lexical_weight.json,
  so it is served with the plan as the demo is. Returns its model dir
  (`work`/model).

  For when runs/demo is not there: same encoder, decoder, input length and
  scheme, so an add costs what it costs on the demo; fewer documents and
  no training (its search quality is not the demo's).
  """
  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from gr import docids as docids_lib
  from gr.data import beir
  from gr.data import news
  from gr.decode import plan as plan_lib
  from gr.index import artifact as index_lib
  from gr.index import lexicon
  from gr.model import bert
  from gr.model import bert_network
  from gr.model import embed
  from gr.model import family
  from gr.model import model_config
  from gr.model import models
  from gr.model import network
  from gr.model import pretrained
  from gr.train import checkpoints

  data = os.path.join(work, "news")
  if not os.path.exists(os.path.join(data, "corpus.jsonl")):
    news.build_news_benchmark(data)
  corpus = {}
  for doc in beir.iter_corpus(os.path.join(data, "corpus.jsonl")):
    corpus[doc.doc_id] = doc
    if len(corpus) == num_docs:
      break
  corpus_path = os.path.join(work, "corpus.jsonl")
  beir.write_corpus(corpus_path, corpus)
  encoder_dir = embed.default_model_dir()
  index_dir = os.path.join(work, "trained_index")
  table = docids_lib.get_scheme("atomic").assign(corpus)
  index_lib.save_index(
    pretrained.wordpiece_index(table, encoder_dir), index_dir
  )
  index = index_lib.load_index(index_dir)
  lexicon.saved_term_sets(index, corpus, index_dir, language="english")
  decoder = network.T5Config(
    vocab_size=128,
    emb_dim=384,
    num_heads=6,
    num_encoder_layers=1,
    num_decoder_layers=1,
    head_dim=64,
    mlp_dim=1536,
    mlp_activations=("gelu", "linear"),
    dropout_rate=0.0,
    logits_via_embedding=True,
  )
  model = models.fit_vocab(
    models.EncoderDecoderModel(
      bert_network.BertT5Config(
        bert.BertConfig.from_folder(encoder_dir), decoder, 0, encoder_dir
      )
    ),
    index.vocab.vocab_size,
  )
  params = (
    family.family_of(model)
    .warm_start(
      model, index, corpus, seed=0, input_length=input_length, target_length=2
    )
    .params
  )
  model_dir = os.path.join(work, "model")
  checkpoints.save(
    model_dir,
    0,
    {"params": params},
    extra_artifacts_dir=index_lib.current_version_dir(index_dir),
  )
  model_config.save_model_config(
    work, model.config, input_length=input_length, corpus_path=corpus_path
  )
  plan_lib.save_weight(
    work,
    {"split": "none: the demo's dev choice", "chosen": 2.0, "MRR@10": {}},
  )
  return model_dir


def percentile(values, q):
  return float(np.percentile(values, q)) if values else float("nan")


def idle_search_ms(port, count, rng) -> list[float]:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  out = []
  try:
    for _ in range(count):
      query = " ".join(rng.choice(WORDS) for _ in range(3))
      start = time.perf_counter()
      status, _ = request(
        port, "POST", "/search", {"query": query, "k": 10}, connection=conn
      )
      if status == 200:
        out.append(1000 * (time.perf_counter() - start))
  finally:
    conn.close()
  return out


def rss_phase(server, adds, rng) -> dict:
  """Single adds then deletes of `adds` documents on one server: its RSS
  after 10 adds and after all of them and all deletes."""
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
  rss, ids = {}, []
  try:
    for n in range(adds):
      doc_id = f"rss/{n}"
      words = " ".join(rng.choice(WORDS) for _ in range(6))
      status, _ = request(
        server.port,
        "POST",
        "/documents",
        {"documents": [{"id": doc_id, "text": words}]},
        connection=conn,
      )
      if status == 200:
        ids.append(doc_id)
      if n + 1 == 10:
        rss["rss_mb_after_10"] = server.rss_mb()
    for doc_id in ids:
      request(server.port, "DELETE", doc_path(doc_id), connection=conn)
  finally:
    conn.close()
  rss["rss_mb_after_1000"] = server.rss_mb()
  rss["rss_adds"] = adds
  return rss


def distinctive_words(count: int, rng) -> list[str]:
  """`count` made-up words of three or four syllables, all different: words
  no corpus has, so a document of three of them is the only one that
  holds all three."""
  consonants, vowels = "bdfgklmnprstvz", "aeiou"
  words = set()
  while len(words) < count:
    syllables = rng.choice((3, 4))
    words.add(
      "".join(
        rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)
      )
    )
  return sorted(words)


def capacity_phase(server, adds, batch, rng) -> dict:
  """Adds `adds` documents of three distinctive words each, `batch` per
  request, then searches each by its own three words (/search/batch): how
  many were added, how many came back at rank 1, and the add time."""
  words = distinctive_words(max(64, adds // 5), rng)
  triples, seen = [], set()
  while len(triples) < adds:
    triple = tuple(rng.sample(words, 3))
    if frozenset(triple) not in seen:
      seen.add(frozenset(triple))
      triples.append(triple)
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
  added, found, add_ms = [], 0, []
  try:
    for first in range(0, adds, batch):
      docs = [
        {"id": f"capacity/{n}", "text": " ".join(triples[n])}
        for n in range(first, min(first + batch, adds))
      ]
      start = time.perf_counter()
      status, _ = request(
        server.port, "POST", "/documents", {"documents": docs}, connection=conn
      )
      add_ms.append(1000 * (time.perf_counter() - start))
      if status == 200:
        added.extend(range(first, first + len(docs)))
    for first in range(0, len(added), 16):
      numbers = added[first : first + 16]
      status, body = request(
        server.port,
        "POST",
        "/search/batch",
        {"queries": [" ".join(triples[n]) for n in numbers], "k": 1},
        connection=conn,
      )
      if status != 200:
        continue
      for n, result in zip(numbers, body["results"]):
        hits = result["hits"]
        found += bool(hits) and hits[0]["doc_id"] == f"capacity/{n}"
  finally:
    conn.close()
  return {
    "capacity_adds": len(added),
    "capacity_found_at_rank1": found,
    "capacity_batch": batch,
    "capacity_add_request_p50_ms": percentile(add_ms, 50),
  }


def soak(
  checkpoint: str,
  *,
  kills: int = 2,
  clients: int = 4,
  ops_per_round: int = 60,
  idle_searches: int = 30,
  rss_adds: int = 0,
  capacity_adds: int = 0,
  capacity_batch: int = 64,
  seed: int = 0,
  buckets: str = "1,4,16",
  timeout_s: float = 600.0,
  start_timeout_s: float = 300.0,
  work_dir: str | None = None,
  mix: tuple[float, float] = (0.6, 0.3),
  lexical_weight: float | None = None,
) -> dict:
  """Runs the soak; returns the result (see the module docstring).

  lexical_weight: scripts/serve.py's --lexical_weight (None: the run's
  lexical_weight.json decides, as a plain serve.py does)."""
  began = time.perf_counter()
  rng = random.Random(seed)
  work = work_dir or tempfile.mkdtemp(prefix="soak_")
  os.makedirs(work, exist_ok=True)
  server = Server(
    checkpoint,
    os.path.join(work, "index"),
    os.path.join(work, "server.log"),
    buckets,
    [] if lexical_weight is None else [f"--lexical_weight={lexical_weight}"],
  )
  ledger = Ledger()
  starts, rounds = [server.start(start_timeout_s)], []
  try:
    _, health = request(server.port, "GET", "/healthz")
    base_docs = health["documents"]
    idle = idle_search_ms(server.port, idle_searches, rng)
    ops = 0
    for round_number in range(kills + 1):
      if time.perf_counter() - began > timeout_s:
        break
      stop = threading.Event()
      threads = [
        Client(
          c,
          server.port,
          ledger,
          ops_per_round // clients,
          seed * 1000 + round_number * 100 + c,
          stop,
          mix,
          round_number,
        )
        for c in range(clients)
      ]
      for t in threads:
        t.start()
      killed = round_number < kills
      if killed:
        target = rng.randint(ops_per_round // 4, 3 * ops_per_round // 4)
        deadline = time.perf_counter() + timeout_s
        while (
          sum(t.done for t in threads) < target
          and any(t.is_alive() for t in threads)
          and time.perf_counter() < deadline
        ):
          time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        server.kill()
      for t in threads:
        t.join(timeout=timeout_s)
      stop.set()
      ops += sum(t.done for t in threads)
      if killed:
        starts.append(server.start(start_timeout_s))
      check = verify(server.port, ledger, base_docs)
      check["killed"] = killed
      check["ops"] = sum(t.done for t in threads)
      rounds.append(check)
      print(json.dumps({"round": round_number, **check}), flush=True)
    rss = rss_phase(server, rss_adds, rng) if rss_adds else {}
    capacity = (
      capacity_phase(server, capacity_adds, capacity_batch, rng)
      if capacity_adds
      else {}
    )
  finally:
    server.stop()
  committed = sum(1 for s in ledger.state.values() if s == "present")
  adds = sum(1 for _ in ledger.sent)
  return {
    "ops": ops,
    "kills": sum(r["killed"] for r in rounds),
    "acknowledged_lost": sum(r["lost"] for r in rounds),
    "half_applied": sum(r["half_applied"] for r in rounds),
    "errors_5xx": ledger.errors_5xx,
    "add_p50_ms": percentile(ledger.add_ms, 50),
    "add_p99_ms": percentile(ledger.add_ms, 99),
    "search_p99_ms_under_writes": percentile(ledger.search_ms, 99),
    "search_p99_ms_idle": percentile(idle, 99),
    "search_p50_ms_under_writes": percentile(ledger.search_ms, 50),
    "search_p50_ms_idle": percentile(idle, 50),
    "rss_mb_after_10": rss.get("rss_mb_after_10"),
    "rss_mb_after_1000": rss.get("rss_mb_after_1000"),
    "rss_adds": rss.get("rss_adds", 0),
    "online_adds_without_retrain": (
      adds + rss.get("rss_adds", 0) + capacity.get("capacity_adds", 0)
    ),
    **capacity,
    "online_documents_at_end": committed,
    "rounds": rounds,
    "server_start_s": starts,
    "clients": clients,
    "lexical_weight": lexical_weight,
    "seconds": time.perf_counter() - began,
  }


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default=None)
  parser.add_argument(
    "--build_run",
    default=None,
    help="build a demo-like run (build_demo_like_run) in this folder and "
    "soak it (when no --checkpoint)",
  )
  parser.add_argument("--build_docs", type=int, default=1000)
  parser.add_argument("--out", default=None)
  parser.add_argument("--kills", type=int, default=4)
  parser.add_argument("--clients", type=int, default=8)
  parser.add_argument("--ops_per_round", type=int, default=400)
  parser.add_argument("--idle_searches", type=int, default=100)
  parser.add_argument("--rss_adds", type=int, default=1000)
  parser.add_argument(
    "--capacity_adds",
    type=int,
    default=0,
    help="at the end, add this many documents of three made-up words each "
    "and search each by its words (rank 1 expected)",
  )
  parser.add_argument("--capacity_batch", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--buckets", default="1,4,16")
  parser.add_argument("--timeout_s", type=float, default=3000.0)
  parser.add_argument("--notes", default="")
  parser.add_argument(
    "--lexical_weight",
    type=float,
    default=None,
    help="the served plan's weight (0: the model alone, inf: the term "
    "sets alone); unset: the run's lexical_weight.json",
  )
  args = parser.parse_args(argv)
  sys.path.insert(0, REPO)
  from gr import atomic_io  # pylint: disable=g-import-not-at-top
  from gr import bench_env  # pylint: disable=g-import-not-at-top

  checkpoint = args.checkpoint
  if checkpoint is None:
    if not args.build_run:
      parser.error("give --checkpoint or --build_run")
    checkpoint = os.path.join(args.build_run, "model")
    if not os.path.exists(checkpoint):
      build_demo_like_run(args.build_run, args.build_docs)
  before = bench_env.machine_load("before")
  result = soak(
    checkpoint,
    kills=args.kills,
    clients=args.clients,
    ops_per_round=args.ops_per_round,
    idle_searches=args.idle_searches,
    rss_adds=args.rss_adds,
    capacity_adds=args.capacity_adds,
    capacity_batch=args.capacity_batch,
    seed=args.seed,
    buckets=args.buckets,
    timeout_s=args.timeout_s,
    lexical_weight=args.lexical_weight,
  )
  result["load"] = [before, bench_env.machine_load("after")]
  result["checkpoint"] = checkpoint
  result["commit"] = subprocess.run(
    ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True
  ).stdout.strip()
  if args.notes:
    result["notes"] = args.notes
  print(json.dumps(result, indent=1))
  if args.out:
    atomic_io.write_json(args.out, result)
  bad = result["acknowledged_lost"] + result["half_applied"]
  return 1 if bad or result["errors_5xx"] else 0


if __name__ == "__main__":
  sys.exit(main())
