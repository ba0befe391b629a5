"""Dense retrieval baseline: all-MiniLM-L6-v2 and exact cosine over a corpus.

  python -m gr.search.dense --data_dir data/news [--queries_file
      subtitles/queries.jsonl --qrels_dir subtitles/qrels] [--split test]
      [--cache_dir data/news/embeddings] [--out runs/dense_test.trec]

The same encoder the semantic docids use (gr/model/embed.py). Only `Document.text`
is embedded (never the title); document vectors are cached under cache_dir,
keyed by the texts and the encoder (gr.model.embed.document_embeddings). Every
query is scored against every document (no approximate index), so this is
what a user would pick instead of generative retrieval. Writes a TREC run
and prints Hits@1, Hits@10, MRR@10 and Recall@100 (gr.search.metrics semantics).

`dense_baseline` is this baseline; `encoder_dense_baseline` is the same
exact cosine with a run's own pretrained encoder (gr/experiments/run.py).
"""

import argparse
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from gr.index import artifact as index_lib
from gr.index import vocab as vocab_lib
from gr.model import pretrained
from gr.model import embed
from gr.search import metrics
from gr.search import bm25
from gr.data import beir

_QUERY_CHUNK = 256  # queries scored at once: bounds the [chunk, n_docs] scores


def _unit_rows(x: np.ndarray) -> np.ndarray:
  """x [n, d] -> rows scaled to unit L2 norm (zero rows stay zero), float32."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _tie_rank(doc_ids: Sequence[str]) -> np.ndarray:
  """[n] int: 0 for the doc_id trec_eval puts first among equal scores.

  trec_eval breaks score ties by doc_id in descending order (gr.search.metrics).
  """
  order = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i], reverse=True)
  rank = np.empty(len(doc_ids), np.int64)
  rank[order] = np.arange(len(doc_ids))
  return rank


def dense_run(
  doc_ids: Sequence[str],
  doc_vectors: np.ndarray,
  query_vectors: np.ndarray,
  query_ids: Sequence[str],
  k: int = 100,
) -> metrics.Run:
  """Top-`k` documents by exact cosine: {query_id: {doc_id: score}}.

  doc_vectors [n_docs, d] (row i is doc_ids[i]), query_vectors [n_queries, d]
  (row j is query_ids[j]); neither needs unit norm. Ties are broken as
  trec_eval breaks them (doc_id descending), so the k kept are trec_eval's
  top k of the full ranking; each query's dict is in rank order.
  """
  doc_vectors, query_vectors = (
    _unit_rows(doc_vectors),
    _unit_rows(query_vectors),
  )
  if doc_vectors.shape[0] != len(doc_ids) or query_vectors.shape[0] != len(
    query_ids
  ):
    raise ValueError(
      f"{len(doc_ids)} doc ids for {doc_vectors.shape[0]} "
      f"vectors, {len(query_ids)} query ids for "
      f"{query_vectors.shape[0]} vectors"
    )
  if doc_vectors.shape[1] != query_vectors.shape[1]:
    raise ValueError(
      f"dims differ: docs {doc_vectors.shape[1]}, queries "
      f"{query_vectors.shape[1]}"
    )
  k = min(k, len(doc_ids))
  tie_rank = _tie_rank(doc_ids)
  run: metrics.Run = {}
  for start in range(0, len(query_ids), _QUERY_CHUNK):
    scores = query_vectors[start : start + _QUERY_CHUNK] @ doc_vectors.T
    # --> [chunk, n_docs]
    ties = np.broadcast_to(tie_rank, scores.shape)
    top = np.lexsort((ties, -scores), axis=-1)[:, :k]  # --> [chunk, k]
    for qid, row, row_scores in zip(query_ids[start:], top, scores):
      run[qid] = {doc_ids[d]: float(row_scores[d]) for d in row}
  return run


def dense_baseline(
  corpus: Mapping[str, beir.Document],
  queries: Mapping[str, str],
  embedder: embed.Embedder,
  cache_dir: str,
  k: int = 100,
  *,
  batch_size: int = 64,
) -> metrics.Run:
  """Embeds bodies (cached) and queries, then `dense_run` over all of them."""
  if not corpus or not queries:
    raise ValueError("dense_baseline needs a non-empty corpus and query set")
  doc_vectors = embed.document_embeddings(
    corpus, embedder, cache_dir, batch_size=batch_size
  )
  query_ids = list(queries)
  query_vectors = embed.cached_embeddings(
    [queries[q] for q in query_ids],
    embedder,
    cache_dir,
    "queries",
    batch_size=batch_size,
  )
  return dense_run(list(corpus), doc_vectors, query_vectors, query_ids, k)


def encoder_dense_baseline(
  model,
  params,
  index: index_lib.Index,
  doc_vectors: np.ndarray,
  input_length: int,
):
  """(corpus, queries) -> run: exact cosine with a run's own encoder.

  `doc_vectors` [n_docs, dim] are the index's documents, embedded once.
  """
  doc_ids = list(index.doc_ids)

  def run(corpus, queries: Mapping[str, str]):
    del corpus  # the documents are the index's, embedded once
    qids = list(queries)
    vectors = pretrained.pooled_vectors(
      model,
      params,
      vocab_lib.encode_texts(
        index.vocab, [queries[q] for q in qids], input_length
      ),
    )
    return dense_run(doc_ids, doc_vectors, vectors, qids, k=100)

  return run


def _arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--cache_dir",
    default=None,
    help="embedding cache (default: DATA_DIR/embeddings)",
  )
  parser.add_argument("--batch_size", type=int, default=64)


def _run(args: argparse.Namespace, corpus, queries) -> dict:
  return dense_baseline(
    corpus,
    queries,
    embed.Embedder.load(),
    args.cache_dir or os.path.join(args.data_dir, "embeddings"),
    k=args.k,
    batch_size=args.batch_size,
  )


def main(argv: Sequence[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  bm25.baseline_main(
    argv,
    name="dense",
    description="Dense (MiniLM, exact cosine) baseline on a BEIR folder",
    make_run=_run,
    add_arguments=_arguments,
  )


if __name__ == "__main__":
  main()
