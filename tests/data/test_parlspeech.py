"""Tests for gr/data/parlspeech.py: the House of Commons known-item benchmark."""

import collections
import csv
import io
import zipfile

import pytest

from gr.data import beir
from gr.data import parlspeech
from tests.support import benchmark_builds

HEADER = [
  "date",
  "agenda",
  "speechnumber",
  "speaker",
  "party",
  "party.facts.id",
  "chair",
  "terms",
  "text",
  "parliament",
  "iso3country",
  "parlspeech_row",
]
LONG = " ".join(f"word{i}" for i in range(30))


def _zip(path, rows, header=HEADER):
  """A source zip with en.csv holding `rows` (dicts over HEADER)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(header)
  for row in rows:
    writer.writerow(
      [row.get(c, "") for c in header] if isinstance(row, dict) else row
    )
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(parlspeech.SOURCE_MEMBER, buffer.getvalue())
  return str(path)


def _row(row, agenda, text=None, date="2015-10-12", number=1):
  text = f"speech {row} {LONG}" if text is None else text
  return {
    "date": date,
    "agenda": agenda,
    "speechnumber": str(number),
    "speaker": f"Speaker {row}",
    "party": "Con",
    "text": text,
    "parlspeech_row": str(row),
  }


# The real sample built twice with seed 0 and once with seed 1.
built = benchmark_builds.seeds_fixture(
  parlspeech.build_parlspeech_benchmark, "parlspeech"
)


@pytest.fixture(scope="module")
def dataset(built):
  return beir.BeirDataset.load(built[0] / "a")


def test_structure_and_counts(built, dataset):
  root, manifest = built
  assert benchmark_builds.folder_files(root / "a") == [
    "corpus.jsonl",
    "manifest.json",
    "qrels/dev.tsv",
    "qrels/test.tsv",
    "qrels/train.tsv",
    "queries.jsonl",
  ]
  counts = manifest["counts"]
  assert counts["speeches"] == 1000
  assert counts["documents"] == len(dataset.corpus) == 969
  assert sum(counts["queries"].values()) == len(dataset.queries) == 608
  assert set(manifest["files"]) == set(
    benchmark_builds.folder_files(root / "a")
  ) - {"manifest.json"}
  # Every document judged by a query is in the corpus; each query one doc.
  for qrels in dataset.qrels.values():
    for relevant in qrels.values():
      assert len(relevant) == 1 and set(relevant) <= set(dataset.corpus)


def test_same_seed_is_byte_identical_other_seed_changes_only_the_split(built):
  root, _ = built
  for name in benchmark_builds.folder_files(root / "a"):
    assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes()
  for name in ("corpus.jsonl", "queries.jsonl"):
    assert (root / "a" / name).read_bytes() == (root / "c" / name).read_bytes()
  test_a = (root / "a" / "qrels" / "test.tsv").read_text()
  assert test_a != (root / "c" / "qrels" / "test.tsv").read_text()


def test_no_query_text_in_its_document(dataset):
  squash = lambda s: " ".join(s.lower().split())
  for qrels in dataset.qrels.values():
    for query_id, relevant in qrels.items():
      (doc_id,) = relevant
      doc = dataset.corpus[doc_id]
      query = squash(dataset.queries[query_id])
      assert query not in squash(doc.text), query_id
      assert query not in squash(doc.title), query_id
      assert len(doc.text.split()) >= parlspeech.MIN_WORDS
  for doc in dataset.corpus.values():
    assert set(doc.metadata) == {"date", "speakers", "parlspeech_rows"}


def test_queries_are_unique_and_not_procedural(dataset):
  topics = [parlspeech.normalize(q) for q in dataset.queries.values()]
  assert len(set(topics)) == len(topics)
  assert not set(topics) & parlspeech.GENERIC_TOPICS
  assert all(" [" not in q for q in dataset.queries.values())


def test_split_by_document_60_20_20_no_query_in_two_splits(dataset):
  seen = collections.Counter(
    q for qrels in dataset.qrels.values() for q in qrels
  )
  assert set(seen) == set(dataset.queries)
  assert max(seen.values()) == 1
  split_of_doc = {}
  for split, qrels in dataset.qrels.items():
    for relevant in qrels.values():
      for doc_id in relevant:
        assert split_of_doc.setdefault(doc_id, split) == split
  n = len(dataset.queries)
  sizes = {s: len(q) for s, q in dataset.qrels.items()}
  assert abs(sizes["train"] - 0.6 * n) <= 2
  assert abs(sizes["test"] - 0.2 * n) <= 2


def test_mojibake_repaired():
  assert (
    parlspeech.repair_mojibake("Â£5, â€œyesâ€\x9d") == "£5, \u201cyes\u201d"
  )
  assert parlspeech.repair_mojibake("£5 café déjà") == "£5 café déjà"


def test_filters_on_a_small_source(tmp_path):
  rows = [
    _row(
      1,
      "Hate Speech [Oral Answers to Questions > Home]",
      "On hate speech: " + LONG,
    ),
    _row(2, "Iraq", date="2001-01-01"),
    _row(3, "Iraq [Statement]", date="2002-01-01"),
    _row(4, "Business of the House"),
    _row(5, "NA"),
    _row(6, "Short Topic", "Too short."),
    # Two speeches of one debate join in speechnumber order.
    _row(8, "Fish Quotas", "second " + LONG, date="2003-03-03", number=9),
    _row(7, "fish  quotas", "first " + LONG, date="2003-03-03", number=2),
  ]
  out = tmp_path / "out"
  manifest = parlspeech.build_parlspeech_benchmark(
    out, zip_path=_zip(tmp_path / "s.zip", rows)
  )
  data = beir.BeirDataset.load(out)
  # A debate's topic is its first speech's agenda, whitespace squashed.
  assert sorted(data.queries.values()) == ["Hate Speech", "fish quotas"]
  assert data.corpus["1"].text == "On : " + LONG
  assert data.corpus["7"].text.startswith("first ")
  assert data.corpus["7"].metadata["parlspeech_rows"] == [7, 8]
  assert set(data.corpus) == {"1", "2", "3", "4", "5", "6", "7"}
  assert manifest["counts"]["documents_merged"] == 0
  assert manifest["counts"]["dropped"] == {
    "query_ambiguous": 2,
    "query_generic": 1,
    "query_no_agenda": 1,
    "query_short_document": 1,
  }


@pytest.mark.parametrize(
  "rows, header, message",
  [
    (
      [_row(1, "A")],
      HEADER[:-1],
      ":1: header lacks columns ['parlspeech_row']",
    ),
    (
      [_row(1, "A"), {**_row(2, "B"), "date": "12/10/2015"}],
      HEADER,
      ":3: date",
    ),
    ([{**_row(1, "A"), "speechnumber": "x"}], HEADER, ":2: speechnumber 'x'"),
    (
      [_row(1, "A"), _row(1, "B")],
      HEADER,
      ":3: parlspeech_row 1 repeats line 2",
    ),
    (
      [_row(1, "A"), ["2015-10-12", "B"]],
      HEADER,
      ":3: 2 fields, the header has",
    ),
    ([{**_row(1, "A"), "agenda": " "}], HEADER, ":2: empty agenda"),
  ],
)
def test_bad_source_names_file_and_line(tmp_path, rows, header, message):
  path = _zip(tmp_path / "bad.zip", rows, header)
  with pytest.raises(parlspeech.SourceError) as error:
    parlspeech.build_parlspeech_benchmark(tmp_path / "out", zip_path=path)
  assert f"{path}:{parlspeech.SOURCE_MEMBER}" in str(error.value)
  assert message in str(error.value)


def test_identical_texts_merge_into_the_first_document(tmp_path):
  rows = [_row(1, "Alpha", "same " + LONG), _row(2, "Beta", "same " + LONG)]
  out = tmp_path / "out"
  parlspeech.build_parlspeech_benchmark(
    out, zip_path=_zip(tmp_path / "s.zip", rows)
  )
  data = beir.BeirDataset.load(out)
  assert list(data.corpus) == ["1"]
  assert data.corpus["1"].metadata["parlspeech_rows"] == [1, 2]
  judged = {q: r for qrels in data.qrels.values() for q, r in qrels.items()}
  assert judged == {"q1": {"1": 1}, "q2": {"1": 1}}


def test_line_numbers_count_multiline_fields(tmp_path):
  rows = [_row(1, "A", "a\nb\nc " + LONG), {**_row(2, "B"), "date": "x"}]
  path = _zip(tmp_path / "bad.zip", rows)
  with pytest.raises(parlspeech.SourceError, match=r"en\.csv:5: date"):
    parlspeech.read_speeches(path)


def test_missing_member_is_named(tmp_path):
  path = tmp_path / "empty.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("other.csv", "x")
  with pytest.raises(parlspeech.SourceError, match="en.csv: cannot read"):
    parlspeech.read_speeches(str(path))
