"""Tests for gr/data/tfds_beir.py: a tiny BEIR folder through TFDS and back."""

import json

import pytest
import tensorflow_datasets as tfds

from gr.data import beir
from gr.data import tfds_beir

CORPUS = [
  beir.Document("d2", "Second", "b text", {"publish_date": "2017-01-02"}),
  beir.Document("d1", "", "a text \u00e9\u4e2d", {}),
  beir.Document("d3", "Third", "c text", {"tags": ["x", 1]}),
]
QUERIES = {"q1": "find a", "q2": "find b \u00fc"}
QRELS = {
  "test": {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}},
  "train": {"q2": {"d1": 1}},
}


def _as_python(dataset):
  return [
    {
      k: v.decode() if isinstance(v, bytes) else int(v)
      for k, v in example.items()
    }
    for example in tfds.as_numpy(dataset)
  ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  beir.write_beir(root / "tiny", CORPUS, QUERIES, QRELS)
  beir.write_queries(root / "tiny" / "alt" / "queries.jsonl", {"a1": "alt"})
  beir.write_qrels(
    root / "tiny" / "alt" / "qrels" / "dev.tsv", {"a1": {"d3": 1}}
  )
  datasets = tfds_beir.load_beir_tfds(root / "tiny", root / "data")
  return root, datasets


def test_splits(prepared):
  assert set(prepared[1]) == {"corpus", "queries", "qrels_test", "qrels_train"}


def test_round_trip_matches_beir_reader_in_file_order(prepared):
  root, datasets = prepared
  reference = beir.BeirDataset.load(root / "tiny")
  corpus = _as_python(datasets["corpus"])
  assert [c["doc_id"] for c in corpus] == list(reference.corpus)
  for record in corpus:
    doc = reference.corpus[record["doc_id"]]
    assert (record["title"], record["text"]) == (doc.title, doc.text)
    assert json.loads(record["metadata_json"]) == doc.metadata
  queries = _as_python(datasets["queries"])
  assert {q["query_id"]: q["text"] for q in queries} == reference.queries
  for split, qrels in reference.qrels.items():
    rows = _as_python(datasets[f"qrels_{split}"])
    assert len(rows) == sum(len(j) for j in qrels.values())
    for row in rows:
      assert qrels[row["query_id"]][row["doc_id"]] == row["score"]


def test_tfds_load_by_name_after_prepare(prepared):
  root, _ = prepared
  name = tfds_beir.make_config(root / "tiny", "queries").name
  dataset = tfds.load(
    f"beir_folder/{name}", split="queries", data_dir=str(root / "data")
  )
  assert len(_as_python(dataset)) == len(QUERIES)


def test_other_query_set_shares_the_corpus_config(prepared):
  root, _ = prepared
  alt = dict(queries_file="alt/queries.jsonl", qrels_dir="alt/qrels")
  assert (
    tfds_beir.make_config(root / "tiny", "corpus", **alt).name
    == tfds_beir.make_config(root / "tiny", "corpus").name
  )
  datasets = tfds_beir.load_beir_tfds(root / "tiny", root / "data", **alt)
  assert _as_python(datasets["qrels_dev"]) == [
    {"query_id": "a1", "doc_id": "d3", "score": 1}
  ]


def test_edited_folder_gets_a_new_config(tmp_path):
  beir.write_beir(tmp_path / "f", CORPUS, QUERIES, QRELS)
  before = tfds_beir.make_config(tmp_path / "f", "corpus").name
  beir.write_corpus(tmp_path / "f" / "corpus.jsonl", CORPUS[:2])
  assert tfds_beir.make_config(tmp_path / "f", "corpus").name != before
  assert before.startswith("f-corpus-")


def test_bad_qrels_raise_beir_format_error(tmp_path):
  beir.write_beir(
    tmp_path / "bad", CORPUS, QUERIES, {"test": {"q1": {"nope": 1}}}
  )
  with pytest.raises(beir.BeirFormatError, match="unknown corpus-id 'nope'"):
    tfds_beir.load_beir_tfds(tmp_path / "bad", tmp_path / "data")
