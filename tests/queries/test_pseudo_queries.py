"""Tests for gr/queries/pseudo_queries.py: spans, sentences, JSONL round trip."""

import json
import os

from hypothesis import given, settings, strategies as st
import pytest

from gr.queries import pseudo_queries as pq
from gr.data.beir import Document

TEXT = (
  "The council approved the new budget on Monday. Critics said it was "
  "too small! Will the mayor sign it? Nobody knows yet.\nA final line"
)


def test_span_queries_are_deterministic_and_seed_dependent():
  a = pq.span_queries(TEXT, 5, min_words=2, max_words=6, seed=3)
  b = pq.span_queries(TEXT, 5, min_words=2, max_words=6, seed=3)
  others = [
    pq.span_queries(TEXT, 5, min_words=2, max_words=6, seed=s)
    for s in range(4, 10)
  ]
  assert a == b
  assert any(other != a for other in others)


@settings(max_examples=60, deadline=None)
@given(
  words=st.lists(st.text("abcxyz", min_size=1, max_size=5), max_size=40),
  n=st.integers(0, 6),
  low=st.integers(1, 5),
  extra=st.integers(0, 5),
  seed=st.integers(0, 2**31),
)
def test_spans_are_contiguous_word_runs_of_allowed_length(
  words, n, low, extra, seed
):
  text = " ".join(words)
  spans = pq.span_queries(
    text, n, min_words=low, max_words=low + extra, seed=seed
  )
  assert len(spans) == (n if words else 0)
  padded = f" {text} "
  for span in spans:
    length = len(span.split())
    assert min(low, len(words)) <= length <= low + extra
    assert f" {span} " in padded


def test_bad_span_lengths_raise():
  with pytest.raises(ValueError, match="min_words"):
    pq.span_queries(TEXT, 2, min_words=5, max_words=3)


def test_split_sentences():
  assert pq.split_sentences(TEXT) == [
    "The council approved the new budget on Monday.",
    "Critics said it was too small!",
    "Will the mayor sign it?",
    "Nobody knows yet.",
    "A final line",
  ]


def test_sentence_queries_first_n_and_seeded_sample():
  sentences = pq.split_sentences(TEXT)
  assert pq.sentence_queries(TEXT, 2) == sentences[:2]
  assert pq.sentence_queries(TEXT, 9) == sentences
  picked = pq.sentence_queries(TEXT, 3, seed=1)
  assert picked == pq.sentence_queries(TEXT, 3, seed=1)
  assert len(set(picked)) == 3
  assert picked == [s for s in sentences if s in picked]  # document order


def test_build_never_uses_the_title_and_is_stable_per_document():
  docs = [
    Document("d1", "Secret Title Words", "alpha beta gamma. delta."),
    Document("d2", "Other Heading", "one two three four five six"),
  ]
  built = pq.build_pseudo_queries(
    docs, num_spans=4, num_sentences=1, min_words=1, max_words=3, seed=0
  )
  assert built["d1"][0] == "alpha beta gamma."
  for queries in built.values():
    for query in queries:
      assert not {"Secret", "Title", "Other", "Heading"} & set(query.split())
  more = pq.build_pseudo_queries(
    docs + [Document("d3", "", "new doc words here")],
    num_spans=4,
    num_sentences=1,
    min_words=1,
    max_words=3,
    seed=0,
  )
  assert more["d1"] == built["d1"] and more["d2"] == built["d2"]
  empty = pq.build_pseudo_queries([Document("e", "t", "")], num_spans=2)
  assert empty == {}


def test_jsonl_round_trip(tmp_path):
  queries = {"d1": ["a b", "ü c"], "d2": []}
  path = str(tmp_path / "sub" / "pq.jsonl")
  pq.write_pseudo_queries(path, queries)
  assert pq.read_pseudo_queries(path) == queries
  assert os.listdir(tmp_path / "sub") == ["pq.jsonl"]  # no temp file left


@pytest.mark.parametrize(
  "line, message",
  [
    ("{not json", "not valid JSON"),
    ('["a"]', "JSON object"),
    ('{"_id": "", "queries": []}', "'_id'"),
    ('{"_id": "d", "queries": "q"}', "'queries'"),
    ('{"_id": "d", "queries": [1]}', "'queries'"),
  ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"_id": "ok", "queries": ["q"]}) + "\n" + line)
  with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
    pq.read_pseudo_queries(str(path))


def test_repeated_doc_id_is_an_error(tmp_path):
  path = tmp_path / "rep.jsonl"
  line = json.dumps({"_id": "d", "queries": ["q"]})
  path.write_text(line + "\n" + line + "\n")
  with pytest.raises(ValueError, match="rep.jsonl:2: doc_id 'd' repeated"):
    pq.read_pseudo_queries(str(path))
