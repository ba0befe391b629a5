"""The dynamic corpus's periods: D0..Dn, their held-out queries, BM25.

The news benchmark's temporal periods (gr/data/news.py), sampled per seed;
each period's documents and the held-out queries whose relevant documents
are in it; Hits@k of a run on each period (trec_eval); BM25 re-indexed
over the documents seen so far (the reference row).
"""

import dataclasses
import os
import random
from typing import Mapping, Sequence

from gr.data import beir
from gr.data import news
from gr.search import bm25
from gr.search import metrics


@dataclasses.dataclass(frozen=True)
class PeriodData:
  """One period's documents and its held-out queries."""

  name: str
  corpus: dict[str, beir.Document]
  queries: dict[str, str]
  qrels: dict[str, dict[str, int]]


def sample_periods(
  periods: Sequence[news.Period],
  *,
  docs_fraction: float,
  max_docs_per_period: int,
  seed: int,
) -> list[tuple[str, list[str]]]:
  """(name, doc_ids) per period: a seeded fraction, capped (0: no cap)."""
  if not 0 < docs_fraction <= 1:
    raise ValueError(f"docs_fraction must be in (0, 1], got {docs_fraction}")
  rng = random.Random(seed)
  sampled = []
  for period in periods:
    ids = list(period.doc_ids)
    count = max(1, round(docs_fraction * len(ids)))
    if max_docs_per_period:
      count = min(count, max_docs_per_period)
    sampled.append((period.name, sorted(rng.sample(ids, count), key=ids.index)))
  return sampled


def held_out_queries(
  data_dir: str, query_files: Sequence[tuple[str, str]], splits: Sequence[str]
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
  """Queries and qrels of `splits` from each (queries file, qrels dir)."""
  queries, qrels = {}, {}
  for queries_file, qrels_dir in query_files:
    if not os.path.exists(os.path.join(data_dir, queries_file)):
      continue
    dataset = beir.BeirDataset.load(
      data_dir, queries_file=queries_file, qrels_dir=qrels_dir
    )
    for split in splits:
      for qid, docs in dataset.qrels.get(split, {}).items():
        qrels[qid] = docs
        queries[qid] = dataset.queries[qid]
  return queries, qrels


def period_data(
  corpus: Mapping[str, beir.Document],
  sampled: Sequence[tuple[str, list[str]]],
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
) -> list[PeriodData]:
  """Each period's documents and the queries whose relevant docs are in it."""
  result = []
  for name, doc_ids in sampled:
    ids = set(doc_ids)
    period_qrels = {
      q: {d: s for d, s in docs.items() if d in ids and s > 0}
      for q, docs in qrels.items()
    }
    period_qrels = {q: docs for q, docs in period_qrels.items() if docs}
    result.append(
      PeriodData(
        name,
        {d: corpus[d] for d in doc_ids},
        {q: queries[q] for q in period_qrels},
        period_qrels,
      )
    )
  return result


def initial_dataset(
  dataset: beir.BeirDataset, d0: PeriodData
) -> beir.BeirDataset:
  """D0's documents with the train queries relevant to them."""
  return dataset.restricted_to(d0.corpus, splits=["train"])


def evaluate_periods(
  run: Mapping[str, Mapping[str, float]], periods: Sequence[PeriodData]
) -> list[dict[str, float]]:
  """Hits@1/Hits@10 of `run` on each period's queries (trec_eval)."""
  return [
    metrics.evaluate_run(
      p.qrels,
      {q: run.get(q, {}) for q in p.qrels},
      hits_ks=(1, 10),
      recall_ks=(10,),
    )
    for p in periods
  ]


def all_queries(periods: Sequence[PeriodData]) -> dict[str, str]:
  return {q: t for p in periods for q, t in p.queries.items()}


def bm25_rows(periods: Sequence[PeriodData]) -> list[list[dict[str, float]]]:
  """BM25 re-indexed over D0..Dn at each step n, on D0..Dn's queries."""
  rows = []
  for n in range(len(periods)):
    seen = periods[: n + 1]
    corpus = {d: doc for p in seen for d, doc in p.corpus.items()}
    rows.append(
      evaluate_periods(bm25.bm25_run(corpus, all_queries(seen)), seen)
    )
  return rows
