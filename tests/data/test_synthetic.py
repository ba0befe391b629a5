"""The synthetic BEIR generator (gr/data/synthetic.py): loads as BEIR, each
planted query's document is the one document holding all its words, and
the embeddings file matches the bodies."""

import os

import numpy as np
import pytest

from gr.data import beir
from gr.data import embeddings_file
from gr.data import synthetic
from gr.search import bm25
from gr.search import metrics

SPEC = synthetic.SyntheticSpec(
  600, queries=(40, 10, 50), words_per_doc=12, common_vocab=500, dim=16
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.write_synthetic_beir(path, SPEC)
  return path


@pytest.fixture(scope="module")
def dataset(folder):
  return beir.BeirDataset.load(folder)


def test_loads_as_beir_with_the_planted_splits(dataset):
  assert list(dataset.corpus) == [synthetic.doc_id(i) for i in range(600)]
  assert {s: len(q) for s, q in dataset.qrels.items()} == {
    "train": 40,
    "dev": 10,
    "test": 50,
  }
  assert len(dataset.queries) == 100
  judged = [d for q in dataset.qrels.values() for r in q.values() for d in r]
  assert len(judged) == len(set(judged)) == 100  # one document per query


def test_each_planted_document_is_the_only_one_with_its_query(dataset):
  bodies = {d: set(doc.text.split()) for d, doc in dataset.corpus.items()}
  for split in dataset.qrels.values():
    for query_id, judged in split.items():
      words = set(dataset.queries[query_id].split())
      holders = [d for d, body in bodies.items() if words <= body]
      assert holders == list(judged), query_id


def test_bm25_finds_every_planted_document_first(dataset):
  qrels = dataset.qrels["test"]
  queries = {q: dataset.queries[q] for q in qrels}
  run = bm25.bm25_run(dataset.corpus, queries, k=10)
  assert metrics.evaluate_run(qrels, run, hits_ks=(1,))["Hits@1"] == 1.0


def test_embeddings_file_is_the_bodies_hashed(folder, dataset):
  ids, vectors = embeddings_file.load_embeddings(
    os.path.join(folder, "embeddings.npz")
  )
  assert ids.tolist() == list(dataset.corpus)
  expected = synthetic.HashingEmbedder(16, 0).embed(
    [doc.text for doc in dataset.corpus.values()]
  )
  np.testing.assert_allclose(vectors, expected, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_same_spec_same_files(folder, tmp_path):
  synthetic.write_synthetic_beir(str(tmp_path), SPEC)
  for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
    with open(os.path.join(folder, name), "rb") as a:
      assert a.read() == (tmp_path / name).read_bytes(), name


def test_hashing_embedder_sums_word_vectors():
  embedder = synthetic.HashingEmbedder(8, 3)
  got = embedder.embed(["ka bo ka", "", "bo"])
  raw = 2 * embedder.word_vector("ka") + embedder.word_vector("bo")
  np.testing.assert_allclose(got[0], raw / np.linalg.norm(raw), atol=1e-6)
  assert not got[1].any()
  np.testing.assert_allclose(
    got[2], synthetic.HashingEmbedder(8, 3).embed(["bo"])[0], atol=1e-7
  )


def test_fresh_documents_hold_words_no_corpus_document_has(dataset):
  docs, queries = synthetic.fresh_documents(20)
  corpus_words = {
    w for doc in dataset.corpus.values() for w in doc.text.split()
  }
  for doc in docs:
    words = queries[doc.doc_id].split()
    assert len(words) == 3 and set(words) <= set(doc.text.split())
    assert not set(words) & corpus_words


def test_too_many_queries_for_the_corpus_is_refused():
  with pytest.raises(ValueError, match="at least as many documents"):
    synthetic.SyntheticSpec(10, queries=(5, 5, 5))
