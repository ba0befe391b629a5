"""Tests for gr/serve/retriever.py: loading a run, batched retrieve, online updates.

The model is a tiny untrained T5: its rankings are arbitrary, but with
beam_size and max_k above the number of docids the constrained search is
exhaustive, so "is document X retrievable" has an exact answer: it is in
every query's results iff it is in the trie. The peer oracle for scores is
gr.search.retrieval.Searcher (the same model through the existing search path).
"""

import concurrent.futures
import dataclasses
import json
import os
import threading

import jax
import numpy as np
import pytest

from gr.index import vocab as vocab_lib
from gr.train import checkpoints
from gr import docids as docids_lib
from gr.index import artifact as index_lib
from gr.serve import microbatch
from gr.model import models
from gr.model import network
from gr.search import retrieval
from gr.model import model_config
from gr.serve import new_docids
from gr.serve import retriever as serving
from gr.index import trie as trie_lib
from gr.data import beir

from tests.support import served_runs

WORDS = (
  "apple banana cherry delta echo forest garden harbor island jungle "
  "kettle lemon mountain nectar ocean pepper quartz river stone tiger "
  "umbrella violet walnut xenon yellow zebra"
).split()
INPUT_LENGTH = 16
CONFIG = serving.ServingConfig(max_k=32, buckets=(1, 4), max_wait_ms=5.0)


def synthetic_corpus(num_docs: int, prefix: str = "doc") -> dict:
  rng = np.random.default_rng(len(prefix) + num_docs)
  return {
    f"{prefix}{i}": beir.Document(
      f"{prefix}{i}",
      f"Title {prefix} {i}",
      " ".join(rng.choice(WORDS, size=12)),
    )
    for i in range(num_docs)
  }


def tiny_config(vocab_size: int) -> network.T5Config:
  return network.T5Config(
    vocab_size=vocab_size,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    head_dim=16,
    mlp_dim=64,
    dropout_rate=0.0,
  )


def random_params(model: models.EncoderDecoderModel, seed: int = 0):
  """Untrained params of the right shapes (eager flax init is slow on CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jax.numpy.asarray(rng.normal(0, 0.3, s.shape), s.dtype),
    model.param_shapes(),
  )


def make_run(
  workdir,
  *,
  scheme: str = "naive",
  num_docs: int = 12,
  extra_vocab_rows=None,
  scheme_params=None,
) -> str:
  """A run dir like run_experiment's (untrained params); returns model dir.

  extra_vocab_rows: None pads the model vocab to 128s (gr.model.models.fit_vocab);
  an int gives exactly the index vocabulary plus that many rows.
  """
  workdir = os.fspath(workdir)
  corpus = synthetic_corpus(num_docs)
  table = docids_lib.get_scheme(scheme, **(scheme_params or {})).assign(corpus)
  index_dir = os.path.join(workdir, "index")
  index = index_lib.build_index(
    table,
    [d.text for d in corpus.values()] * 3,
    os.path.join(workdir, "sp"),
    vocab_size=64,
  )
  index_lib.save_index(index, index_dir)
  rows = (
    -(-index.vocab.vocab_size // 128) * 128
    if extra_vocab_rows is None
    else index.vocab.vocab_size + extra_vocab_rows
  )
  model = models.EncoderDecoderModel(tiny_config(rows))
  params = random_params(model)
  return served_runs.save_run(
    workdir,
    model,
    params,
    index_dir,
    step=5,
    input_length=INPUT_LENGTH,
    corpus=corpus,
  )


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
  return os.path.dirname(make_run(tmp_path_factory.mktemp("template")))


@pytest.fixture(scope="module")
def retriever(run_template):
  """One warmed-up Retriever whose index lives only in memory."""
  model, params, trained, run, _ = serving.load_checkpoint(
    os.path.join(run_template, "model")
  )
  r = serving.Retriever(
    model, params, trained, input_length=run.input_length, config=CONFIG
  )
  r.warm_up()
  return r


def doc_ids_found(retriever, query="apple banana"):
  return {h.doc_id for h in retriever.retrieve([query], retriever.max_k)[0]}


def copy_run(template, dest):
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(template, dest)
  return os.path.join(dest, "model")


# ----------------------------------------------------------------- loading


def test_model_config_round_trip(tmp_path):
  config = tiny_config(256)
  model_config.save_model_config(
    tmp_path, config, input_length=24, corpus_path="c.jsonl"
  )
  path = model_config.find_model_config(os.path.join(tmp_path, "model"))
  assert model_config.load_model_config(path) == model_config.SavedModelConfig(
    config, 24, os.path.abspath("c.jsonl")
  )


def test_missing_or_bad_model_config_is_refused(tmp_path):
  with pytest.raises(model_config.ModelConfigError, match="model_config.json"):
    model_config.find_model_config(os.path.join(tmp_path, "model"))
  path = tmp_path / model_config.MODEL_CONFIG_FILE
  path.write_text(
    json.dumps(
      {
        "format": model_config.MODEL_CONFIG_FORMAT,
        "input_length": 8,
        "t5_config": {"emb_dim": 3},
      }
    )
  )
  with pytest.raises(model_config.ModelConfigError, match=str(path)):
    model_config.load_model_config(str(path))


def test_from_checkpoint_seeds_index_and_matches_searcher(
  run_template, tmp_path
):
  model_dir = copy_run(run_template, tmp_path / "run")
  r = serving.Retriever.from_checkpoint(
    model_dir, index_dir=str(tmp_path / "served"), config=CONFIG
  )
  try:
    assert r.checkpoint_step == 5
    assert index_lib.load_index(str(tmp_path / "served")).table == r.index.table
    searcher = served_runs.searcher_of(r, CONFIG, INPUT_LENGTH)
    queries = ["apple river", "zebra", "ocean quartz stone"]
    expected = searcher.search(queries)
    got = r.retrieve(queries, 32)
    for want, hits in zip(expected, got):
      assert [h.doc_id for h in hits] == [d for d, _ in want]
      np.testing.assert_allclose(
        [h.score for h in hits], [s for _, s in want], rtol=1e-5
      )
      for hit in hits:
        assert hit.docid == r.index.table.docids_of[hit.doc_id][0]
        assert hit.matched_docids == (hit.docid,)
  finally:
    r.close()


def test_corrupt_artifact_is_refused(run_template, tmp_path):
  model_dir = copy_run(run_template, tmp_path / "run")
  table_json = os.path.join(
    model_dir,
    "5",
    checkpoints.ARTIFACT_ITEM,
    checkpoints.FILES_DIR,
    "docids",
    "table.json",
  )
  with open(table_json, "a") as f:
    f.write(" ")
  with pytest.raises(serving.RunLoadError, match="sha256"):
    serving.Retriever.from_checkpoint(model_dir, config=CONFIG)


def test_params_that_do_not_fit_the_config_are_refused(run_template, tmp_path):
  model_dir = copy_run(run_template, tmp_path / "run")
  path = model_config.find_model_config(model_dir)
  run = model_config.load_model_config(path)
  model_config.save_model_config(
    os.path.dirname(path),
    tiny_config(run.model.vocab_size + 128),
    input_length=run.input_length,
  )
  with pytest.raises(serving.RunLoadError, match="do not fit"):
    serving.load_checkpoint(model_dir)


def test_index_dir_from_another_run_is_refused(run_template, tmp_path):
  model_dir = copy_run(run_template, tmp_path / "run")
  other = tmp_path / "other"
  make_run(other, num_docs=5)
  with pytest.raises(serving.RunLoadError, match="does not descend"):
    serving.Retriever.from_checkpoint(
      model_dir, index_dir=str(other / "index"), config=CONFIG
    )


def test_second_server_on_one_index_dir_is_refused(run_template, tmp_path):
  model_dir = copy_run(run_template, tmp_path / "run")
  first = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  try:
    with pytest.raises(serving.RunLoadError, match="already served"):
      serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  finally:
    first.close()
  serving.Retriever.from_checkpoint(model_dir, config=CONFIG).close()


# ------------------------------------------------------------------ search


def test_exhaustive_search_returns_every_document_once(retriever):
  hits = retriever.retrieve(["kettle lemon"], 32)[0]
  assert sorted(h.doc_id for h in hits) == sorted(retriever.index.doc_ids)
  scores = [h.score for h in hits]
  assert scores == sorted(scores, reverse=True)
  assert all(s <= 0 for s in scores)


def test_k_cuts_the_ranking_and_is_checked(retriever):
  full = retriever.retrieve(["tiger"], 32)[0]
  assert retriever.retrieve(["tiger"], 3)[0] == full[:3]
  for bad in (0, 33):
    with pytest.raises(ValueError, match="outside"):
      retriever.retrieve(["tiger"], bad)
  with pytest.raises(ValueError, match="non-empty"):
    retriever.retrieve(["  "], 3)


def test_batches_match_single_queries_and_nothing_recompiles(retriever):
  queries = [" ".join(WORDS[i : i + 3]) for i in range(9)]  # 4 + 4 + 1 rows
  compiled = retriever.compiled_count()
  batched = retriever.retrieve(queries, 5)
  single = [retriever.retrieve([q], 5)[0] for q in queries]
  assert [[h.doc_id for h in row] for row in batched] == [
    [h.doc_id for h in row] for row in single
  ]
  for row_b, row_s in zip(batched, single):
    np.testing.assert_allclose(
      [h.score for h in row_b], [h.score for h in row_s], atol=1e-5
    )
  assert retriever.compiled_count() == compiled


# ------------------------------------------------------------ multi-docids

MULTI_PARTS = (
  {"scheme": "naive"},
  {"scheme": "text", "method": "prefix", "num_words": 1},
  {"scheme": "text", "method": "tfidf", "num_words": 1},
)


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
  """(model, params, index, input_length) of a run with 3 docids each."""
  model_dir = make_run(
    tmp_path_factory.mktemp("multi"),
    scheme="multi",
    scheme_params={"parts": MULTI_PARTS},
  )
  model, params, trained, run, _ = serving.load_checkpoint(model_dir)
  return model, params, trained, run.input_length


def docid_log_probs(model, params, index, query, docids, length):
  """Teacher-forced log-prob of each docid string for `query` [n]."""
  targets = np.zeros((len(docids), length), np.int32)
  for row, docid in enumerate(docids):
    tokens = index.vocab.encode_docid(docid) + [1]
    targets[row, : len(tokens)] = tokens
  query_tokens = vocab_lib.encode_texts(index.vocab, [query], INPUT_LENGTH)
  return np.asarray(
    retrieval.make_score_fn(model)(params, query_tokens[0], targets), np.float64
  )


def test_retriever_on_a_mesh_equals_one_device(run_template, tmp_path):
  """8 fake CPU devices (conftest): batches over 'data' (buckets rounded up
  to its size), params by training's rules; same hits as one device, also
  after an online add and a delete written into the replicated trie."""
  from gr import partitioning  # pylint: disable=g-import-not-at-top

  one = serving.Retriever.from_checkpoint(
    copy_run(run_template, tmp_path / "one"), config=CONFIG
  )
  mesh = partitioning.make_mesh(data=4, model=2)
  sharded = serving.Retriever.from_checkpoint(
    copy_run(run_template, tmp_path / "mesh"), config=CONFIG, mesh=mesh
  )
  assert sharded.bucket_for(1) == 4  # 1 rounded up to the data axis
  queries = ["apple banana", "ocean", "tiger stone river", "x", "lemon"]

  def same_hits():
    for a, b in zip(one.retrieve(queries, 8), sharded.retrieve(queries, 8)):
      assert [h.doc_id for h in a] == [h.doc_id for h in b]
      np.testing.assert_allclose(
        [h.score for h in a], [h.score for h in b], atol=1e-5
      )

  same_hits()
  new = list(synthetic_corpus(2, prefix="new").values())
  for r in (one, sharded):
    r.add_documents(new)
    r.delete_document("doc3")
  same_hits()
  assert "doc3" not in doc_ids_found(sharded)
  one.close()
  sharded.close()


@pytest.mark.parametrize("aggregation", ["max", "logsumexp"])
def test_multi_docid_hits_are_documents_with_their_matched_docids(
  multi_run, aggregation
):
  # 4 documents from a 12-beam search over 36 docids (approximate): each
  # hit's score must be its matched docids' log-probs merged.
  model, params, index, input_length = multi_run
  r = serving.Retriever(
    model,
    params,
    index,
    input_length=input_length,
    config=serving.ServingConfig(
      max_k=4, buckets=(1,), aggregation=aggregation
    ),
  )
  query = "apple river ocean"
  hits = r.retrieve([query], 4)[0]
  assert len(hits) == 4
  assert len({h.doc_id for h in hits}) == 4
  assert [h.score for h in hits] == sorted(
    (h.score for h in hits), reverse=True
  )
  merge = max if aggregation == "max" else np.logaddexp.reduce
  for hit in hits:
    assert hit.matched_docids and hit.docid == hit.matched_docids[0]
    assert set(hit.matched_docids) <= set(index.table.docids_of[hit.doc_id])
    assert len(set(hit.matched_docids)) == len(hit.matched_docids)
    scores = docid_log_probs(
      model, params, index, query, hit.matched_docids, r.max_decode_len
    )
    assert list(scores) == sorted(scores, reverse=True)  # best first
    np.testing.assert_allclose(hit.score, merge(scores), atol=1e-4)
  assert any(len(h.matched_docids) > 1 for h in hits)


# ---------------------------------------------------------- online updates


@pytest.fixture()
def served(run_template, tmp_path):
  model_dir = copy_run(run_template, tmp_path / "run")
  r = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  r.warm_up()
  yield r
  r.close()


def test_add_then_find_then_reload(served):
  compiled = served.compiled_count()
  new = synthetic_corpus(2, prefix="new")
  added = served.add_documents(list(new.values()))
  assert list(added) == ["new0", "new1"]
  assert {"new0", "new1"} <= doc_ids_found(served)
  hits = {h.doc_id: h for h in served.retrieve(["x"], 32)[0]}
  assert hits["new1"].title == "Title new 1"
  assert hits["new1"].docid == added["new1"][0]
  assert hits["doc2"].title == "Title doc 2"  # from the run's corpus
  assert served.compiled_count() == compiled
  reloaded = index_lib.load_index(served.index_dir)
  assert reloaded.table == served.index.table
  assert set(serving.read_online_documents(served.index_dir)) == set(new)


def test_delete_is_never_returned_and_persists(served):
  victim = served.index.doc_ids[3]
  before = doc_ids_found(served)
  served.delete_document(victim)
  assert doc_ids_found(served) == before - {victim}
  for row in served.retrieve(WORDS[:8], 32):
    assert victim not in {h.doc_id for h in row}
  table = index_lib.load_index(served.index_dir).table
  assert victim not in table.docids_of
  assert set(served.index.table.docids_of[served.index.doc_ids[0]]) <= set(
    table.docid_to_doc
  )
  with pytest.raises(serving.UnknownDocument):
    served.delete_document(victim)


def test_restart_finds_added_and_not_deleted(served):
  served.add_documents([beir.Document("late", "Late one", "river stone")])
  served.delete_document("doc0")
  index_dir, model_dir = (
    served.index_dir,
    os.path.join(os.path.dirname(served.index_dir), "model"),
  )
  served.close()
  again = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  try:
    found = doc_ids_found(again)
    assert "late" in found and "doc0" not in found
    assert again.titles["late"] == "Late one"
    assert again.index_dir == index_dir
  finally:
    again.close()


def test_duplicate_ids_are_conflicts_and_change_nothing(served):
  version = served.index_version
  with pytest.raises(serving.DocumentConflict, match="already indexed"):
    served.add_documents([beir.Document("doc1", "", "x")])
  with pytest.raises(serving.DocumentConflict, match="twice"):
    served.add_documents(
      [beir.Document("a", "", "x"), beir.Document("a", "", "y")]
    )
  assert served.index_version == version
  assert index_lib.load_index(served.index_dir).table.version == version


def test_concurrent_adds_and_searches_lose_nothing(served):
  new = list(synthetic_corpus(8, prefix="c").values())
  errors, adding = [], threading.Event()

  def search_loop():
    while adding.is_set():
      try:
        for row in served.retrieve(["apple", "zebra"], 32):
          assert len({h.doc_id for h in row}) == len(row)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)

  adding.set()
  searcher = threading.Thread(target=search_loop)
  searcher.start()
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda d: served.add_documents([d]), new))
  adding.clear()
  searcher.join()
  assert not errors
  expected = set(synthetic_corpus(12)) | {d.doc_id for d in new}
  assert doc_ids_found(served) == expected
  assert set(index_lib.load_index(served.index_dir).table.docids_of) == expected
  assert set(serving.read_online_documents(served.index_dir)) == {
    d.doc_id for d in new
  }


def test_trie_growth_recompiles_before_going_live(run_template, tmp_path):
  """Adding past the node capacity compiles new shapes during the update,
  in a fresh search: the old one, with its executables for the old shapes,
  goes with the old state."""
  model_dir = copy_run(run_template, tmp_path / "run")
  r = serving.Retriever.from_checkpoint(
    model_dir, config=dataclasses.replace(CONFIG, buckets=(4,))
  )
  capacity = lambda: r._live.trie_arrays.child_start.shape[0]  # pylint: disable=protected-access
  start, old_search = capacity(), r._live.search  # pylint: disable=protected-access
  for n in range(400):
    r.add_documents([beir.Document(f"g{n}", "", "grow")])
    if capacity() > start:
      break
  assert capacity() > start
  after_update = r.compiled_count()
  assert r._live.search is not old_search  # pylint: disable=protected-access
  # The warm-up's shapes (bucket 4 at each input length), compiled once;
  # the search below must compile nothing.
  assert after_update == len(retrieval.input_lengths(r.input_length))
  docid = r.index.table.docids_of[f"g{n}"][0]
  sequence = r.index.vocab.encode_docid(docid) + [1]
  live = r._live  # pylint: disable=protected-access
  slot = int(trie_lib.lookup(live.trie_arrays, np.array([sequence]))[0])
  assert live.slots[slot] == f"g{n}"
  r.retrieve(["a", "b", "c"], 4)
  assert r.compiled_count() == after_update
  r.close()


def test_atomic_adds_grow_the_embedding_rows_by_doubling(tmp_path):
  """A checkpoint with one spare row loads with its docid rows doubled
  (online_rows.SPARE_SHARE spare); past them an add doubles them again
  (one compile of the buckets per growth, before it goes live); a restart
  serves the same rows (zero rows: growth does not depend on its path)."""
  model_dir = make_run(
    tmp_path / "atomic", scheme="atomic", num_docs=6, extra_vocab_rows=1
  )
  config = dataclasses.replace(CONFIG, buckets=(4,))
  r = serving.Retriever.from_checkpoint(model_dir, config=config)
  base = r.index.vocab.base_size
  rows = lambda: r.model.config.vocab_size
  start = rows()
  assert start == -(-(base + 14) // 128) * 128  # 7 docid rows, doubled
  r.warm_up()
  r.add_documents([beir.Document("fits", "", "one more")])
  assert rows() == start
  sizes = []
  for n in range(60):
    r.add_documents([beir.Document(f"g{n}", "", f"grow {n}")])
    if rows() != (sizes or [start])[-1]:
      sizes.append(rows())
      assert r.compiled_count() == 1  # the new model's search: one bucket
  assert sizes  # 6 + 61 docid tokens need more than 7 rows past the base
  expected = sorted({-(-(base + 7 * 2**i) // 128) * 128 for i in range(1, 8)})
  assert set(sizes) <= set(expected) and sizes == sorted(sizes)
  found = {h.doc_id for h in r.retrieve(["grow"], 32)[0]}
  assert len(found) == 32
  embedding = np.asarray(r.params["token_embedder"]["embedding"])
  assert embedding.shape[0] == rows()
  r.delete_document("g3")
  assert "g3" not in {h.doc_id for h in r.retrieve(["grow"], 32)[0]}
  r.close()
  # The same model and search config: the restart reuses the compiled search.
  again = serving.Retriever.from_checkpoint(model_dir, config=config)
  try:
    assert again.model.config.vocab_size == rows()
    np.testing.assert_array_equal(
      np.asarray(again.params["token_embedder"]["embedding"]), embedding
    )
    table = index_lib.load_index(again.index_dir).table
    assert {"fits", "g59"} <= set(table.docids_of)
    assert "g3" not in table.docids_of
  finally:
    again.close()


# ------------------------------------------------------------ micro-batching


def test_micro_batcher_gathers_and_splits():
  calls, sizes = [], []

  def run_batch(queries, k):
    calls.append((list(queries), k))
    return [
      [serving.Hit(q, q, float(-i), None) for i in range(k)] for q in queries
    ]

  batcher = microbatch.MicroBatcher(
    run_batch, max_batch=4, max_wait_s=0.2, on_batch=sizes.append
  )
  futures = [batcher.submit([f"q{i}"], 1 + i % 3) for i in range(6)]
  futures.append(batcher.submit(["x", "y", "z"], 2))
  batcher.close()
  for i, future in enumerate(futures[:6]):
    hits = future.result(timeout=5)
    assert [h.doc_id for h in hits[0]] == [f"q{i}"] * (1 + i % 3)
  assert [len(row) for row in futures[6].result(timeout=5)] == [2, 2, 2]
  assert sum(sizes) == 9 and max(sizes) <= 4 and len(sizes) < 7
  with pytest.raises(microbatch.BatcherClosed):
    batcher.submit(["late"], 1)


def test_micro_batcher_survives_a_failing_batch():
  def run_batch(queries, k):
    if "boom" in queries:
      raise RuntimeError("boom")
    return [[] for _ in queries]

  batcher = microbatch.MicroBatcher(run_batch, max_batch=8, max_wait_s=0.0)
  with pytest.raises(RuntimeError, match="boom"):
    batcher.submit(["boom"], 1).result(timeout=5)
  assert batcher.submit(["fine"], 1).result(timeout=5) == [[]]
  batcher.close()


def test_only_schemes_that_place_by_embeddings_get_an_embedder():
  """DocidNamer.scheme: one rule (indexing.needs_embedder) decides
  whether new documents need the embedder; naive, text and a multi without
  a semantic part never load it."""
  import types  # pylint: disable=g-import-not-at-top

  sentinel = object()
  loaded = []

  def scheme_of(name, config):
    table = types.SimpleNamespace(scheme=name, config=config)
    holder = types.SimpleNamespace(
      _scheme=None, _embedder=lambda: loaded.append(name) or sentinel
    )
    return new_docids.DocidNamer.scheme(holder, table)

  assert scheme_of("semantic", {"k": 2, "c": 2}).embedder is sentinel
  assert scheme_of("naive", {}).name == "naive"
  text_only = {"parts": [{"scheme": "text"}, {"scheme": "naive"}]}
  assert scheme_of("multi", text_only).name == "multi"
  assert loaded == ["semantic"]
