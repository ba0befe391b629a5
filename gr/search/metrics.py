"""Retrieval metrics with trec_eval semantics (via pytrec_eval), TREC run I/O.

A run is {query_id: {doc_id: score}}; qrels are {query_id: {doc_id: level}}
with level >= 1 meaning relevant (trec_eval's default relevance level).

Ranking order is trec_eval's: score descending, ties broken by doc_id in
descending (byte) order. trec_eval ignores the rank column of a run file, so
`ranked` and `write_trec_run` use that same order to keep the file's ranks
equal to the ranks trec_eval evaluates.

Metrics, all computed by pytrec_eval:
  Hits@k    trec_eval `success.k`: 1 if a relevant doc is in the top k.
  MRR@k     trec_eval `recip_rank` on the run truncated to its top k.
  Recall@k  trec_eval `recall.k`.

Averages are over ALL queries in the qrels. trec_eval by default evaluates
only queries that appear in the run; here a qrels query missing from the run
(or with an empty ranking) scores 0 on every metric. Run queries absent from
the qrels are ignored. A qrels query with no relevant doc scores 0.
"""

import math
import os
from typing import Iterable, Mapping

import pytrec_eval

from gr.atomic_io import atomic_open

Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def ranked(doc_scores: Mapping[str, float]) -> list[tuple[str, float]]:
  """[(doc_id, score)] in trec_eval order: score desc, then doc_id desc."""
  return sorted(
    doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True
  )


def truncate_run(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
  """Keeps each query's top `k` documents in trec_eval order."""
  return {qid: dict(ranked(docs)[:k]) for qid, docs in run.items()}


def _metric_names(hits_ks, mrr_k, recall_ks) -> list[str]:
  return (
    [f"Hits@{k}" for k in hits_ks]
    + [f"MRR@{mrr_k}"]
    + [f"Recall@{k}" for k in recall_ks]
  )


def _check_run(run: Mapping[str, Mapping[str, float]]) -> None:
  for qid, docs in run.items():
    for doc_id, score in docs.items():
      if not math.isfinite(score):
        raise ValueError(f"run: query {qid!r} doc {doc_id!r} has score {score}")


def _pytrec_eval(
  qrels: Qrels, run: Mapping[str, Mapping[str, float]], measures: set[str]
) -> dict[str, dict[str, float]]:
  """pytrec_eval over the run's non-empty queries (it rejects empty ones)."""
  run = {
    qid: {d: float(s) for d, s in docs.items()}
    for qid, docs in run.items()
    if docs
  }
  qrels = {
    qid: {d: int(r) for d, r in docs.items()} for qid, docs in qrels.items()
  }
  return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def per_query_metrics(
  qrels: Qrels,
  run: Mapping[str, Mapping[str, float]],
  *,
  hits_ks: Iterable[int] = (1, 10),
  mrr_k: int = 10,
  recall_ks: Iterable[int] = (100,),
) -> dict[str, dict[str, float]]:
  """{query_id: {metric: value}} for every query in `qrels` (0 if unanswered).

  Metric names: `Hits@k` for k in hits_ks, `MRR@{mrr_k}`, `Recall@k` for k
  in recall_ks.
  """
  hits_ks, recall_ks = tuple(hits_ks), tuple(recall_ks)
  _check_run(run)
  ks = ",".join(str(k) for k in hits_ks)
  rks = ",".join(str(k) for k in recall_ks)
  full = _pytrec_eval(qrels, run, {f"success.{ks}", f"recall.{rks}"})
  cut = _pytrec_eval(qrels, truncate_run(run, mrr_k), {"recip_rank"})
  names = _metric_names(hits_ks, mrr_k, recall_ks)
  per_query = {}
  for qid in qrels:
    values = full.get(qid, {})
    per_query[qid] = dict(
      zip(
        names,
        (
          [values.get(f"success_{k}", 0.0) for k in hits_ks]
          + [cut.get(qid, {}).get("recip_rank", 0.0)]
          + [values.get(f"recall_{k}", 0.0) for k in recall_ks]
        ),
      )
    )
  return per_query


def evaluate_run(
  qrels: Qrels,
  run: Mapping[str, Mapping[str, float]],
  *,
  hits_ks: Iterable[int] = (1, 10),
  mrr_k: int = 10,
  recall_ks: Iterable[int] = (100,),
) -> dict[str, float]:
  """Mean of `per_query_metrics` over all qrels queries; see module doc."""
  hits_ks, recall_ks = tuple(hits_ks), tuple(recall_ks)
  if not qrels:
    raise ValueError("evaluate_run: qrels are empty")
  per_query = per_query_metrics(
    qrels, run, hits_ks=hits_ks, mrr_k=mrr_k, recall_ks=recall_ks
  )
  names = _metric_names(hits_ks, mrr_k, recall_ks)
  return {
    name: sum(v[name] for v in per_query.values()) / len(per_query)
    for name in names
  }


# ------------------------------------------------------------------ run files


def write_trec_run(
  path: str, run: Mapping[str, Mapping[str, float]], tag: str
) -> None:
  """Writes `qid Q0 docid rank score tag` lines (rank from 1), atomically.

  Queries in `run` order; within a query, trec_eval order (see `ranked`).
  """
  if not tag or any(c.isspace() for c in tag):
    raise ValueError(f"run tag must be one non-empty word, got {tag!r}")
  with atomic_open(path) as f:
    for qid, docs in run.items():
      for rank, (doc_id, score) in enumerate(ranked(docs), start=1):
        if any(c.isspace() for c in qid + doc_id):
          raise ValueError(
            f"ids in a run may not hold spaces: {qid!r} {doc_id!r}"
          )
        f.write(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")


def read_trec_run(path: str) -> Run:
  """Reads a TREC run file into {qid: {docid: score}} (rank column ignored)."""
  path = os.fspath(path)
  run: Run = {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      columns = line.split()
      if len(columns) != 6:
        raise ValueError(
          f"{path}:{line_no}: expected 6 columns "
          f"'qid Q0 docid rank score tag', got {len(columns)}"
        )
      qid, _, doc_id, _, score, _ = columns
      try:
        value = float(score)
      except ValueError:
        raise ValueError(f"{path}:{line_no}: bad score {score!r}") from None
      if doc_id in run.setdefault(qid, {}):
        raise ValueError(
          f"{path}:{line_no}: duplicate doc {doc_id!r} for query {qid!r}"
        )
      run[qid][doc_id] = value
  return run
