"""Tests for gr/data/beir.py: round trips, validation errors, skip reports."""

import json
import os

from hypothesis import given, settings, strategies as st
import pytest

from gr import atomic_io
from gr.data import beir

HEADER = "query-id\tcorpus-id\tscore\n"


def _write(path, content, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(content)


def _jsonl(records):
  return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def folder(tmp_path):
  """A small valid BEIR folder."""
  _write(
    tmp_path / "corpus.jsonl",
    _jsonl(
      [
        {"_id": "d1", "title": "T1", "text": "alpha", "url": "u1"},
        {"_id": "d2", "title": "", "text": "beta"},
        {"_id": "d3", "text": "gamma"},
      ]
    ),
  )
  _write(
    tmp_path / "queries.jsonl",
    _jsonl([{"_id": "q1", "text": "a?"}, {"_id": "q2", "text": "b?"}]),
  )
  _write(tmp_path / "qrels" / "test.tsv", HEADER + "q1\td1\t1\nq2\td2\t2\n")
  _write(tmp_path / "qrels" / "train.tsv", HEADER + "q2\td3\t1\n")
  return tmp_path


def test_load_reads_every_part(folder):
  ds = beir.BeirDataset.load(folder)
  assert list(ds.corpus) == ["d1", "d2", "d3"]
  assert ds.corpus["d1"] == beir.Document("d1", "T1", "alpha", {"url": "u1"})
  assert ds.corpus["d3"].title == ""
  assert ds.queries == {"q1": "a?", "q2": "b?"}
  assert ds.qrels == {
    "test": {"q1": {"d1": 1}, "q2": {"d2": 2}},
    "train": {"q2": {"d3": 1}},
  }
  assert ds.skipped == ()


def test_load_selected_splits_and_missing_split(folder):
  assert list(beir.BeirDataset.load(folder, splits=["train"]).qrels) == [
    "train"
  ]
  with pytest.raises(beir.BeirFormatError, match="dev.tsv: file not found"):
    beir.BeirDataset.load(folder, splits=["dev"])


def test_iter_corpus_is_lazy(tmp_path):
  """The generator yields the first document before reading a bad line."""
  _write(tmp_path / "c.jsonl", _jsonl([{"_id": "a", "text": "x"}]) + "{bad\n")
  docs = beir.iter_corpus(tmp_path / "c.jsonl")
  assert next(docs).doc_id == "a"
  with pytest.raises(beir.BeirFormatError, match=r"c.jsonl:2: malformed JSON"):
    next(docs)


@pytest.mark.parametrize(
  "line, reason",
  [
    ('{"_id": "a", "text": "x"', "malformed JSON"),
    ('["_id", "text"]', "must be a JSON object"),
    ('{"text": "x"}', "missing field '_id'"),
    ('{"_id": "a"}', "missing field 'text'"),
    ('{"_id": 7, "text": "x"}', "'_id' must be a string, got int"),
    ('{"_id": "a", "title": null, "text": "x"}', "'title' must be a string"),
    ('{"_id": "a", "text": "   "}', "'text' is empty"),
    ('{"_id": "", "text": "x"}', "'_id' is empty"),
    ('{"_id": "d0", "text": "dup"}', "duplicate _id 'd0'"),
  ],
)
def test_corpus_errors_name_file_and_line(tmp_path, line, reason):
  path = tmp_path / "corpus.jsonl"
  _write(path, '{"_id": "d0", "text": "ok"}\n\n' + line + "\n")
  with pytest.raises(beir.BeirFormatError) as info:
    beir.read_corpus(path)
  assert "corpus.jsonl:3: " in str(info.value)
  assert reason in str(info.value)
  assert info.value.line == 3


def test_invalid_utf8_is_an_error_and_skippable(tmp_path):
  path = tmp_path / "queries.jsonl"
  _write(
    path,
    b'{"_id": "q1", "text": "\xff"}\n{"_id": "q2", "text": "ok"}\n',
    mode="wb",
  )
  with pytest.raises(
    beir.BeirFormatError, match=r"queries.jsonl:1: invalid UTF"
  ):
    beir.read_queries(path)
  skipped = []
  assert beir.read_queries(path, skip_invalid=True, skipped=skipped) == {
    "q2": "ok"
  }
  assert [(s.line, s.reason[:13]) for s in skipped] == [(1, "invalid UTF-8")]


@pytest.mark.parametrize(
  "rows, reason",
  [
    ("q1\td1\n", "expected 3 tab-separated columns, got 2"),
    ("q1\td1\t1\tx\n", "got 4"),
    ("q1\td1\t1.5\n", "score must be an integer, got '1.5'"),
    ("q1\td1\t1\nq1\td1\t0\n", "duplicate pair ('q1', 'd1')"),
    ("q1\td9\t1\n", "unknown corpus-id 'd9'"),
    ("q9\td1\t1\n", "unknown query-id 'q9'"),
  ],
)
def test_qrels_errors(folder, rows, reason):
  _write(folder / "qrels" / "test.tsv", HEADER + rows)
  with pytest.raises(beir.BeirFormatError, match="test.tsv:[23]: ") as info:
    beir.BeirDataset.load(folder)
  assert reason in str(info.value)


def test_qrels_header_is_required(tmp_path):
  _write(tmp_path / "q.tsv", "q1\td1\t1\n")
  with pytest.raises(beir.BeirFormatError, match=r"q.tsv:1: expected header"):
    beir.read_qrels(tmp_path / "q.tsv")


def test_skip_invalid_reports_every_skipped_record(folder, caplog):
  _write(
    folder / "corpus.jsonl",
    _jsonl(
      [
        {"_id": "d1", "text": "alpha"},
        {"_id": "d2", "text": ""},
        {"_id": "d3", "text": "gamma"},
        {"_id": "d1", "text": "again"},
      ]
    ),
  )
  ds = beir.BeirDataset.load(folder, skip_invalid=True)
  assert list(ds.corpus) == ["d1", "d3"]
  # d2 is gone, so the qrels row pointing at it is skipped and reported too.
  assert ds.qrels["test"] == {"q1": {"d1": 1}}
  got = [(os.path.basename(s.file), s.line, s.reason) for s in ds.skipped]
  assert got == [
    ("corpus.jsonl", 2, "field 'text' is empty"),
    ("corpus.jsonl", 4, "duplicate _id 'd1'"),
    ("test.tsv", 3, "unknown corpus-id 'd2'"),
  ]
  warnings = [r for r in caplog.records if "Skipping invalid" in r.message]
  assert len(warnings) == 3


def test_alternative_queries_file_and_qrels_dir(folder):
  _write(folder / "sub" / "queries.jsonl", _jsonl([{"_id": "s1", "text": "z"}]))
  _write(folder / "sub" / "qrels" / "dev.tsv", HEADER + "s1\td2\t1\n")
  ds = beir.BeirDataset.load(
    folder, queries_file="sub/queries.jsonl", qrels_dir="sub/qrels"
  )
  assert ds.queries == {"s1": "z"} and ds.qrels == {"dev": {"s1": {"d2": 1}}}


def test_atomic_open_leaves_target_untouched_on_error(tmp_path):
  path = tmp_path / "f.txt"
  _write(path, "old")
  with pytest.raises(RuntimeError):
    with atomic_io.atomic_open(path) as f:
      f.write("new")
      raise RuntimeError("boom")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["f.txt"]


def test_metadata_may_not_shadow_core_fields(tmp_path):
  doc = beir.Document("d", "t", "x", {"text": "other"})
  with pytest.raises(ValueError, match="clash"):
    beir.write_corpus(tmp_path / "c.jsonl", [doc])


_ids = (
  st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8
  )
  .map(str.strip)
  .filter(bool)
)
_texts = st.text(
  st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30
).filter(str.strip)
_docs = st.dictionaries(
  _ids,
  st.tuples(
    st.text(max_size=10),
    _texts,
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers() | st.text()),
  ),
  min_size=1,
  max_size=5,
)


@settings(max_examples=40, deadline=None)
@given(
  docs=_docs,
  queries=st.dictionaries(_ids, _texts, min_size=1, max_size=4),
  data=st.data(),
)
def test_write_then_load_round_trips(tmp_path_factory, docs, queries, data):
  corpus = {i: beir.Document(i, t, x, m) for i, (t, x, m) in docs.items()}
  qrels = {
    "test": {
      q: {
        data.draw(st.sampled_from(sorted(corpus))): data.draw(
          st.integers(-1, 3)
        )
      }
      for q in queries
    }
  }
  folder = tmp_path_factory.mktemp("rt")
  beir.write_beir(folder, corpus, queries, qrels)
  ds = beir.BeirDataset.load(folder)
  assert ds.corpus == corpus and list(ds.corpus) == list(corpus)
  assert ds.queries == queries and list(ds.queries) == list(queries)
  assert ds.qrels == qrels


def test_restricted_to_keeps_the_documents_and_their_judgments():
  docs = {d: beir.Document(d, "", d) for d in ("a", "b", "c")}
  dataset = beir.BeirDataset(
    docs,
    {"q1": "x", "q2": "y", "q3": "z"},
    {
      "train": {"q1": {"a": 1, "c": 1}, "q2": {"c": 1}},
      "test": {"q3": {"b": 1}},
    },
  )
  partial = dataset.restricted_to(["b", "a"], splits=["train"])
  assert list(partial.corpus) == ["b", "a"]  # the order asked for
  assert partial.qrels == {"train": {"q1": {"a": 1}}}  # q2 judged c only
  assert partial.queries == {"q1": "x"}
  whole = dataset.restricted_to(["a", "b"], whole_queries=True)
  assert whole.qrels == {"train": {}, "test": {"q3": {"b": 1}}}  # q1 judges c
  assert whole.queries == {"q3": "z"}
