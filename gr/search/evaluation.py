"""Evaluation of a generative retriever next to BM25 on the same queries.

For one query set it writes TREC run files (GR and BM25), computes Hits@1,
Hits@10, MRR@10 and Recall@10 with trec_eval semantics (gr.search.metrics), times
retrieval (queries/s and mean batch latency), and on a subset of queries
compares beam search with the exact ranking of every docid (how much beam
search loses). Given a dense baseline (gr.search.dense), it adds a
'dense' run file, result entry and table row; without one, the results are
as before.
"""

import dataclasses
import os
import time
from typing import Callable, Mapping, Optional

from gr.search import metrics
from gr.search import exact as exact_lib
from gr.search import retrieval
from gr.search import bm25

METRIC_KWARGS = dict(hits_ks=(1, 10), mrr_k=10, recall_ks=(10,))
METRIC_NAMES = ("Hits@1", "Hits@10", "MRR@10", "Recall@10")
# Table rows, when present in a result. With a lexical plan, "gr" is the
# fused search and the two ablations are its parts: the model alone
# (lexical weight 0) and the term sets alone (weight inf).
SYSTEMS = ("gr", "gr:model", "gr:terms", "bm25", "dense")
ABLATIONS = {"gr:model": 0.0, "gr:terms": float("inf")}

# (corpus, queries) -> run, e.g. functools.partial(dense.dense_baseline,
# embedder=embedder, cache_dir=cache_dir).
Baseline = Callable[[Mapping, Mapping[str, str]], metrics.Run]


@dataclasses.dataclass(frozen=True)
class QuerySet:
  """A named query file with its qrels folder inside a BEIR folder."""

  name: str
  queries_file: str = "queries.jsonl"
  qrels_dir: str = "qrels"


def timed_run(searcher: retrieval.Searcher, queries: Mapping[str, str]):
  """(run, seconds): the GR run for `queries`, after one warm-up batch."""
  first = dict(list(queries.items())[:1])
  searcher.run(first)  # compile outside the timing
  start = time.perf_counter()
  run = searcher.run(queries)
  return run, time.perf_counter() - start


def beam_vs_exact(
  searcher: retrieval.Searcher, queries: Mapping[str, str], qrels, run
) -> dict[str, float]:
  """Hits@k of beam search and of the exact ranking on the same queries."""
  qids = list(queries)
  exact = exact_lib.exact_ranking(
    searcher, [queries[q] for q in qids], top_k=searcher.config.top_k
  )
  exact_run = {q: dict(r) for q, r in zip(qids, exact)}
  sub_qrels = {q: qrels[q] for q in qids}
  beam = metrics.evaluate_run(
    sub_qrels, {q: run.get(q, {}) for q in qids}, **METRIC_KWARGS
  )
  oracle = metrics.evaluate_run(sub_qrels, exact_run, **METRIC_KWARGS)
  top1_agree = sum(
    bool(run.get(q))
    and bool(exact_run[q])
    and max(run[q], key=run[q].get) == max(exact_run[q], key=exact_run[q].get)
    for q in qids
  ) / len(qids)
  return {
    "queries": len(qids),
    "beam_Hits@1": beam["Hits@1"],
    "exact_Hits@1": oracle["Hits@1"],
    "beam_Hits@10": beam["Hits@10"],
    "exact_Hits@10": oracle["Hits@10"],
    "top1_agreement": top1_agree,
  }


def evaluate_query_set(
  searcher: retrieval.Searcher,
  corpus,
  queries,
  qrels,
  *,
  name: str,
  run_dir: str,
  exact_queries: int = 0,
  dense: Optional[Baseline] = None,
) -> dict:
  """GR and BM25 (and dense) metrics, timings, beam-vs-exact for one query set.

  `dense(corpus, queries) -> run` (top 100 per query) adds result["dense"]
  and run_dir/{name}.dense.trec.
  """
  queries = {q: queries[q] for q in qrels}
  run, seconds = timed_run(searcher, queries)
  bm25_run = bm25.bm25_run(corpus, queries, k=100)
  os.makedirs(run_dir, exist_ok=True)
  metrics.write_trec_run(os.path.join(run_dir, f"{name}.gr.trec"), run, "gr")
  metrics.write_trec_run(
    os.path.join(run_dir, f"{name}.bm25.trec"), bm25_run, "bm25"
  )
  result = {
    "queries": len(queries),
    "gr": metrics.evaluate_run(qrels, run, **METRIC_KWARGS),
    "bm25": metrics.evaluate_run(qrels, bm25_run, **METRIC_KWARGS),
    "queries_per_sec": len(queries) / seconds,
    "batch_latency_ms": 1000
    * seconds
    / -(-len(queries) // searcher.batch_size),
  }
  if searcher.lexical_weight > 0:
    for system, weight in ABLATIONS.items():
      ablation = with_lexical_weight(searcher, weight, searcher.run, queries)
      result[system] = metrics.evaluate_run(qrels, ablation, **METRIC_KWARGS)
  if dense is not None:
    dense_run = dense(corpus, queries)
    metrics.write_trec_run(
      os.path.join(run_dir, f"{name}.dense.trec"), dense_run, "dense"
    )
    result["dense"] = metrics.evaluate_run(qrels, dense_run, **METRIC_KWARGS)
  verbatim = verbatim_queries(corpus, queries, qrels)
  if verbatim and len(verbatim) < len(qrels):
    runs = {"gr": run, "bm25": bm25_run}
    if dense is not None:
      runs["dense"] = dense_run
    result["not_verbatim"] = subset_metrics(
      runs, {q: rel for q, rel in qrels.items() if q not in verbatim}
    )
    result["not_verbatim"]["queries_verbatim"] = len(verbatim)
  if exact_queries:
    subset = dict(list(queries.items())[:exact_queries])
    result["beam_vs_exact"] = beam_vs_exact(searcher, subset, qrels, run)
  return result


def with_lexical_weight(searcher: retrieval.Searcher, weight: float, fn, *args):
  """fn(*args) with the searcher's lexical weight set to `weight` (then
  restored)."""
  kept = searcher.lexical_weight
  searcher.lexical_weight = weight
  try:
    return fn(*args)
  finally:
    searcher.lexical_weight = kept


def select_lexical_weight(
  searcher: retrieval.Searcher,
  query_sets: Mapping[str, tuple[Mapping[str, str], metrics.Qrels]],
  candidates,
) -> tuple[float, dict[str, float]]:
  """The candidate lexical weight with the best mean MRR@10 over
  `query_sets` {name: (queries, qrels)} (a held-out split, never test),
  ties to the smaller weight. Returns (weight, {weight: mean MRR@10}).
  The searcher's weight is left unchanged."""
  if not query_sets or not candidates:
    raise ValueError("select_lexical_weight needs query sets and candidates")
  table = {}
  for weight in sorted(set(float(c) for c in candidates)):
    scores = []
    for queries, qrels in query_sets.values():
      run = with_lexical_weight(
        searcher, weight, searcher.run, {q: queries[q] for q in qrels}
      )
      scores.append(metrics.evaluate_run(qrels, run, **METRIC_KWARGS)["MRR@10"])
    table[str(weight)] = sum(scores) / len(scores)
  best = max(table, key=lambda w: (table[w], -float(w)))
  return float(best), table


def verbatim_queries(corpus, queries: Mapping[str, str], qrels) -> set[str]:
  """Queries whose text occurs verbatim in a relevant document's body.

  (On the news benchmark about a fifth of the subtitles are their body's
  lead sentence: those measure exact-string recall more than retrieval.)
  """
  return {
    q
    for q, rel in qrels.items()
    if any(
      d in corpus
      and queries[q].strip()
      and queries[q].strip() in corpus[d].text
      for d, score in rel.items()
      if score > 0
    )
  }


def subset_metrics(runs: Mapping[str, metrics.Run], qrels) -> dict:
  """Each system's metrics over the queries of `qrels` only."""
  out = {"queries": len(qrels)}
  for system, run in runs.items():
    out[system] = metrics.evaluate_run(
      qrels, {q: run.get(q, {}) for q in qrels}, **METRIC_KWARGS
    )
  return out


def format_results(
  results: Mapping[str, dict], title: Optional[str] = None
) -> str:
  """A table: GR, BM25 (and dense) rows per query set, metrics as columns."""
  lines = [title] if title else []
  lines.append(
    f"{'query set':<22}{'system':<8}"
    + "".join(f"{n:>10}" for n in METRIC_NAMES)
    + f"{'q/s':>9}"
  )
  for set_name, result in results.items():
    for system in (s for s in SYSTEMS if s in result):
      row = result[system]
      speed = f"{result['queries_per_sec']:9.1f}" if system == "gr" else ""
      lines.append(
        f"{set_name:<22}{system:<8}"
        + "".join(f"{row[n]:10.3f}" for n in METRIC_NAMES)
        + speed
      )
    if "not_verbatim" in result:
      sub = result["not_verbatim"]
      for system in (s for s in SYSTEMS if s in sub):
        lines.append(
          f"{'  not verbatim':<22}{system:<8}"
          + "".join(f"{sub[system][n]:10.3f}" for n in METRIC_NAMES)
          + f"   ({sub['queries']} of {result['queries']})"
        )
    if "beam_vs_exact" in result:
      b = result["beam_vs_exact"]
      lines.append(
        f"{'':<22}beam vs exact on {b['queries']} queries: "
        f"Hits@1 {b['beam_Hits@1']:.3f} vs {b['exact_Hits@1']:.3f},"
        f" Hits@10 {b['beam_Hits@10']:.3f} vs "
        f"{b['exact_Hits@10']:.3f}, top-1 agreement "
        f"{b['top1_agreement']:.3f}"
      )
  return "\n".join(lines)
