"""Capacity that grows (issue 22 item 5): online adds past the checkpoint's
embedding rows, without retraining.

A tiny random BERT (tests/support/tiny_bert.py, real WordPiece vocabulary) under a
one-layer decoder warm-started so that step 0 is dense retrieval
(gr/model/warm_start.py), atomic docids over 8 documents. The served model
starts with 30,592 rows (70 docid rows free); 10,000 documents of
distinctive words are added online in requests of 100 to a model served
with 1,222 docid rows (they double 4 times: one compile of the search per
growth), and each is then found at rank 1 by its own words. The smaller test runs 300 adds with
deletes in between, and a restart.
"""

import json
import os

import numpy as np
import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.serve import live_state
from gr.serve import online_rows
from gr.serve import retriever as serving
from gr.serve import served_run

from tests.support import compiles as compiles_lib
from tests.support import served_runs
from tests.support import tiny_bert

INPUT_LENGTH = 8
CONFIG = serving.ServingConfig(max_k=1, buckets=(64,))
OLD = {
  "cat": "purring cat windowsill",
  "stocks": "stock markets inflation",
  "football": "striker scored cup",
  "rain": "rain flooded railway",
  "piano": "chopin nocturne piano",
  "moon": "astronauts lunar rocks",
  "bread": "baker sourdough rye",
  "volcano": "volcano lava ash",
}


def word_list(bert_dir: str) -> list[str]:
  """Whole lowercase words of the WordPiece vocabulary (one piece each)."""
  with open(os.path.join(bert_dir, "tokenizer.json"), encoding="utf-8") as f:
    vocab = json.load(f)["model"]["vocab"]
  return sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 4)


def distinctive_documents(words, n: int, seed: int, prefix: str) -> dict:
  """n documents of three words each, no two with the same three."""
  rng = np.random.default_rng(seed)
  docs, seen = {}, set()
  while len(docs) < n:
    triple = tuple(rng.choice(len(words), 3, replace=False).tolist())
    if frozenset(triple) in seen:
      continue
    seen.add(frozenset(triple))
    doc_id = f"{prefix}{len(docs)}"
    docs[doc_id] = beir.Document(doc_id, "", " ".join(words[i] for i in triple))
  return docs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A run dir: atomic docids over OLD, warm start, no training."""
  work = tmp_path_factory.mktemp("capacity")
  bert_dir = tiny_bert.write_tiny_bert(str(work / "bert"))
  corpus = {d: beir.Document(d, d, t) for d, t in OLD.items()}
  table = docids_lib.get_scheme("atomic").assign(corpus)
  index_dir = str(work / "trained_index")
  _, model, params = served_runs.warm_started(
    bert_dir, corpus, table, index_dir, INPUT_LENGTH
  )
  served_runs.save_run(
    str(work), model, params, index_dir, step=1, input_length=INPUT_LENGTH
  )
  return str(work), word_list(bert_dir)


def serve(run: str) -> serving.Retriever:
  return serving.Retriever.from_checkpoint(
    os.path.join(run, "model"), config=CONFIG
  )


def assert_restart_serves_the_same(
  again: serving.Retriever, table, embedding: np.ndarray, live: dict
) -> None:
  """A restarted retriever holds the live one's docid `table` and rows
  `embedding` (1e-6), and finds every `live` document at rank 1."""
  assert again.index.table == table
  np.testing.assert_allclose(
    np.asarray(again.params["token_embedder"]["embedding"]),
    embedding,
    atol=1e-6,
  )
  assert ranked_first(again, live) == 1.0


def ranked_first(r: serving.Retriever, docs: dict) -> float:
  """Share of `docs` whose own text finds it at rank 1."""
  ids, texts = list(docs), [d.text for d in docs.values()]
  hits = r.retrieve(texts, 1)
  return np.mean([bool(h) and h[0].doc_id == d for d, h in zip(ids, hits)])


def add_in_requests(r, docs: dict, size: int) -> None:
  values = list(docs.values())
  for start in range(0, len(values), size):
    r.add_documents(values[start : start + size])


def copy_run(run: str, dest) -> str:
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(run, dest)
  return str(dest)


def test_adds_past_the_rows_with_deletes_and_a_restart(tiny_run, tmp_path):
  run, words = tiny_run
  run = copy_run(run, tmp_path / "run")
  r = serve(run)
  try:
    start, first_search = r.model.config.vocab_size, r._live.search  # pylint: disable=protected-access
    assert ranked_first(r, {d: beir.Document(d, "", t) for d, t in OLD.items()})
    new = distinctive_documents(words, 300, seed=1, prefix="n")
    add_in_requests(r, dict(list(new.items())[:100]), 1)
    for doc_id in list(new)[:100:3]:  # deletes in between
      r.delete_document(doc_id)
    add_in_requests(r, dict(list(new.items())[100:]), 50)
    assert r.model.config.vocab_size > start  # grew past 70 docid rows
    # The process keeps no search of the replaced model (its executables
    # for the old shapes would stay in a long-running server's memory).
    held = list(live_state._SEARCHES._functions.values())  # pylint: disable=protected-access
    assert not any(f is first_search for f in held)
    assert any(f is r._live.search for f in held)  # pylint: disable=protected-access
    kept = {
      d: doc for i, (d, doc) in enumerate(new.items()) if i >= 100 or i % 3
    }
    assert ranked_first(r, kept) == 1.0
    gone = [h for h in r.retrieve([new["n0"].text], 1)[0] if h.doc_id == "n0"]
    assert not gone
    rows = r.model.config.vocab_size
    embedding = np.asarray(r.params["token_embedder"]["embedding"])
  finally:
    r.close()
  again = serve(run)
  try:
    assert again.model.config.vocab_size == rows
    np.testing.assert_allclose(
      np.asarray(again.params["token_embedder"]["embedding"]),
      embedding,
      atol=1e-6,
    )
    assert ranked_first(again, kept) == 1.0
  finally:
    again.close()


def test_ten_thousand_online_adds_each_found_at_rank_one(tiny_run, tmp_path):
  """Served as if the checkpoint had 1,222 docid rows (so 4 growths, each
  a compile, not 8)."""
  run, words = tiny_run
  run = served_run.load_run(
    os.path.join(copy_run(run, tmp_path / "run"), "model")
  )
  base = run.index.vocab.base_size
  model, params = online_rows.grown_model(
    run.model,
    run.params,
    start_rows=run.model.config.vocab_size,
    base_size=base,
    needed=base + 880,  # 1,100 with online_rows.SPARE_SHARE spare
  )
  r = serving.Retriever(
    model,
    params,
    run.index,
    input_length=INPUT_LENGTH,
    config=CONFIG,
    index_dir=run.index_dir,
    checkpoint_rows=model.config.vocab_size,
  )
  try:
    start = r.model.config.vocab_size
    assert start - base == 1222
    new = distinctive_documents(words, 10_000, seed=2, prefix="m")
    sizes = [start]
    values = list(new.values())
    for begin in range(0, len(values), 100):
      r.add_documents(values[begin : begin + 100])
      if r.model.config.vocab_size != sizes[-1]:
        sizes.append(r.model.config.vocab_size)
        assert r.compiled_count() == 1  # the grown model's one bucket
    assert r.num_docs == 10_008
    assert len(sizes) - 1 == 4  # 1,222 -> 2,444 -> ... -> 19,552 docid rows
    assert sizes[-1] == -(-(base + 1222 * 2**4) // 128) * 128
    assert ranked_first(r, new) == 1.0
  finally:
    r.close()


def test_semantic_adds_grow_the_rows_too(tmp_path):
  """The semantic scheme creates leaf-position tokens online: past the
  rows they grow them the same way (tiny T5; MiniLM places documents)."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  from tests.serve import test_serving as run_helpers  # pylint: disable=g-import-not-at-top

  model_dir = run_helpers.make_run(
    tmp_path / "semantic",
    scheme="semantic",
    num_docs=12,
    extra_vocab_rows=1,
    scheme_params={"k": 2, "c": 2},
  )
  config = dataclasses.replace(run_helpers.CONFIG, max_k=48, buckets=(1,))
  r = serving.Retriever.from_checkpoint(model_dir, config=config)
  try:
    start, tokens = r.model.config.vocab_size, len(r.index.vocab.docid_tokens)
    new = run_helpers.synthetic_corpus(30, prefix="sem")
    for doc in new.values():
      r.add_documents([doc])
    assert len(r.index.vocab.docid_tokens) > tokens + 1  # new positions
    assert r.model.config.vocab_size > start
    found = {h.doc_id for h in r.retrieve(["apple banana"], 42)[0]}
    assert found == set(r.index.doc_ids)  # a full beam finds every one
    rows = r.model.config.vocab_size
  finally:
    r.close()
  again = serving.Retriever.from_checkpoint(model_dir, config=config)
  try:
    assert again.model.config.vocab_size == rows
    assert set(new) <= set(again.index.doc_ids)
  finally:
    again.close()


def test_add_delete_cycles_reuse_rows_and_slots(tiny_run, tmp_path):
  """2,000 adds, each followed by a delete (online documents, and trained
  ones early on): deleted documents' `<d_N>` tokens and slots are reused,
  so the vocabulary, the embedding rows and the slots stay within the
  first capacity; every live document is found at rank 1 by its words,
  no deleted one is ever returned, and a restart serves the same."""
  run, words = tiny_run
  run = copy_run(run, tmp_path / "run")
  r = serve(run)
  rng = np.random.default_rng(5)
  new = distinctive_documents(words, 2000, seed=3, prefix="c")
  live = {d: beir.Document(d, "", t) for d, t in OLD.items()}
  deleted = {}
  try:
    rows, tokens = r.model.config.vocab_size, len(r.index.vocab.docid_tokens)
    for doc in new.values():
      r.add_documents([doc])
      live[doc.doc_id] = doc
      if len(live) > 20 or rng.random() < 0.5:
        doomed = list(live)[rng.integers(len(live))]
        r.delete_document(doomed)
        deleted[doomed] = live.pop(doomed)
    assert r.model.config.vocab_size == rows
    assert len(r.index.vocab.docid_tokens) <= tokens + 21
    assert len(r._live.slots) <= len(OLD) + 21  # pylint: disable=protected-access
    assert ranked_first(r, live) == 1.0
    texts = [doc.text for doc in deleted.values()]
    before = [[h.doc_id for h in hits] for hits in r.retrieve(texts, 1)]
    assert not set(sum(before, [])) & set(deleted)
    assert set(sum(before, [])) <= set(live)
    embedding = np.asarray(r.params["token_embedder"]["embedding"])
    table = r.index.table
  finally:
    r.close()
  again = serve(run)
  try:
    assert_restart_serves_the_same(again, table, embedding, live)
    after = [[h.doc_id for h in hits] for hits in again.retrieve(texts, 1)]
    assert after == before
  finally:
    again.close()


def test_a_rows_growth_compiled_ahead_compiles_nothing_when_it_comes(
  tiny_run, tmp_path
):
  """Once the spare rows run low, the next growth's buckets compile in the
  background; the add that grows the rows then compiles nothing, keeps the
  trie, and its document is found at once."""
  run, words = tiny_run
  r = serve(copy_run(run, tmp_path / "run"))
  try:
    start, added = r.model.config.vocab_size, {}
    with compiles_lib.counting_compiles() as compiles:
      for doc_id, doc in distinctive_documents(words, 200, 7, "g").items():
        r.wait_for_updates()  # a growth being compiled ahead is ready
        before, trie = len(compiles), r._trie  # pylint: disable=protected-access
        r.add_documents([doc])
        added[doc_id] = doc
        if r.model.config.vocab_size > start:
          break
    assert r.model.config.vocab_size > start, "never grew"
    assert compiles[before:] == []
    assert r._trie is trie  # pylint: disable=protected-access
    assert ranked_first(r, added) == 1.0
  finally:
    r.close()
