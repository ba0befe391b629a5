"""Documents from docids: several docids of one document merged into one hit.

Documents with several docids (multi-docids, up to D each):
`constrained_document_search` decodes a pool of top_k * D docids, merges
each document's docids ("max" or "logsumexp", `rank_documents` on device,
`aggregate_documents` in numpy) and returns top_k distinct documents with
the docids that found them; gr/decode/oracle.py's `exact_document_rank` is
its oracle.

Shapes: B = batch, K = hits, R = documents returned, D = docids kept per
document, P = finished docid pool, L = max length.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gr.decode import constraint as constraint_lib
from gr.decode import hooks
from gr.index import trie as trie_lib

AGGREGATIONS = ("max", "logsumexp")


def check_aggregation(aggregation: str, caller: str) -> None:
  if aggregation not in AGGREGATIONS:
    raise ValueError(
      f"{caller}: aggregation {aggregation!r} is not 'max' or 'logsumexp'"
    )


def rank_documents(
  doc_indices: jax.Array, scores: jax.Array, *, aggregation: str = "max"
) -> tuple[jax.Array, jax.Array]:
  """Merges several docids of one document into one ranked entry.

  Args:
    doc_indices: [B, K] document of each hit, -1 = empty.
    scores: [B, K] hit scores (-inf = empty).
    aggregation: "max" keeps a document's best hit; "logsumexp" adds the
      probabilities of all its hits.

  Returns:
    documents [B, K] (each at most once, best first, -1 padding) and their
    scores [B, K] (-inf padding).
  """
  check_aggregation(aggregation, "rank_documents")
  valid = (doc_indices >= 0) & (scores > hooks.NEG_INF)  # [B, K]
  same = (
    (doc_indices[:, :, None] == doc_indices[:, None, :])
    & valid[:, :, None]
    & valid[:, None, :]
  )  # [B, K, K]
  hits = jnp.where(same, scores[:, None, :], hooks.NEG_INF)
  if aggregation == "max":
    merged = jnp.max(hits, axis=2)
  else:
    merged = jax.nn.logsumexp(hits, axis=2)
  earlier = jnp.tril(jnp.ones(same.shape[1:], bool), k=-1)  # j < i
  first = valid & ~jnp.any(same & earlier, axis=2)
  merged = jnp.where(first, merged, hooks.NEG_INF)
  order = jnp.argsort(-merged, axis=1, stable=True)
  ranked_scores = jnp.take_along_axis(merged, order, axis=1)
  ranked_docs = jnp.take_along_axis(
    jnp.where(first, doc_indices, -1), order, axis=1
  )
  return ranked_docs, ranked_scores


@flax.struct.dataclass
class RankedDocuments:
  """Distinct documents a search found, and the docids that found each.

  R = documents returned, D = docids kept per document.
  """

  documents: jax.Array  # [B, R] int32, -1 = empty slot
  scores: jax.Array  # [B, R] float32 merged docid scores, -inf = empty
  docids: jax.Array  # [B, R, D, L] int32 its docids found, best first; PAD
  docid_scores: jax.Array  # [B, R, D] float32, -inf = no docid in the slot


def document_search_sizes(
  beam_size: int, top_k: int, docids_per_doc: int
) -> tuple[int, int]:
  """(docid beams, finished docid pool) that can hold top_k documents.

  One docid per document: (beam_size, top_k), the search as it is. With up
  to D docids per document, both are scaled by D (the pool to top_k * D, the
  beams to D * max(beam_size, top_k)), so that top_k distinct documents fit
  even when each is found through all its docids.
  """
  if min(beam_size, top_k, docids_per_doc) < 1:
    raise ValueError(
      f"document_search_sizes: need beam_size ({beam_size}), "
      f"top_k ({top_k}), docids_per_doc ({docids_per_doc}) "
      ">= 1"
    )
  if docids_per_doc == 1:
    return beam_size, top_k
  return docids_per_doc * max(beam_size, top_k), docids_per_doc * top_k


def _document_hits(
  documents: jax.Array,
  hit_documents: jax.Array,
  hit_scores: jax.Array,
  width: int,
):
  """Best `width` hits of each document.

  Args:
    documents: [B, R] ranked documents, -1 = empty.
    hit_documents: [B, P] document of each hit, -1 = empty.
    hit_scores: [B, P] (-inf = empty).
    width: D <= P.

  Returns:
    (hit index [B, R, D], hit scores [B, R, D]), best first; -inf where the
    document has fewer than D hits.
  """
  same = (documents[:, :, None] == hit_documents[:, None, :]) & (
    documents[:, :, None] >= 0
  )  # [B, R, P]
  scores = jnp.where(same, hit_scores[:, None, :], hooks.NEG_INF)
  top_scores, index = jax.lax.top_k(scores, width)
  return index, top_scores


def rank_found(
  found: constraint_lib.ConstrainedResult,
  *,
  top_k: int,
  docids_per_doc: int,
  aggregation: str = "max",
) -> RankedDocuments:
  """The top_k distinct documents of a search's finished docids.

  Args:
    found: P finished docids ([B, P] documents and scores, [B, P, L]).
    top_k: R, documents returned.
    docids_per_doc: D, docids kept per document (clipped to P).
    aggregation: how a document's docid scores merge (`rank_documents`).
  """
  documents, scores = rank_documents(
    found.documents, found.scores, aggregation=aggregation
  )
  documents, scores = documents[:, :top_k], scores[:, :top_k]  # --> [B, R]
  width = min(docids_per_doc, found.scores.shape[1])
  index, docid_scores = _document_hits(
    documents, found.documents, found.scores, width
  )
  rows = jnp.arange(index.shape[0])[:, None, None]
  docids = found.sequences[rows, index]  # --> [B, R, D, L]
  docids = jnp.where((docid_scores > hooks.NEG_INF)[..., None], docids, 0)
  return RankedDocuments(
    documents=documents, scores=scores, docids=docids, docid_scores=docid_scores
  )


def constrained_document_search(
  tokens_to_logits: hooks.TokensToLogits,
  initial_cache: hooks.PyTree,
  batch_size: int,
  trie_arrays: trie_lib.TrieArrays,
  *,
  beam_size: int,
  max_decode_len: int,
  top_k: int,
  docids_per_doc: int = 1,
  aggregation: str = "max",
  length_penalty_alpha: float = 0.0,
  dense_mask: bool = False,
  sparse_output: bool = False,
  potential: Optional[jax.Array] = None,
  score_mode: str = "log_probs",
  first_step: Optional[hooks.TokensToLogits] = None,
) -> RankedDocuments:
  """Constrained beam search for top_k distinct documents.

  Decodes with `document_search_sizes(beam_size, top_k, docids_per_doc)`
  (beams, pool): `tokens_to_logits` sees N = batch_size * beams rows. The
  pool's docids are merged per document by `aggregation` and the best
  top_k documents returned (with one docid per document: exactly
  `constrained_beam_search`'s hits). Other arguments as in
  `constrained_beam_search` (gr/decode/constraint.py).
  """
  check_aggregation(aggregation, "constrained_document_search")
  beams, pool = document_search_sizes(beam_size, top_k, docids_per_doc)
  found = constraint_lib.constrained_beam_search(
    tokens_to_logits,
    initial_cache,
    batch_size,
    trie_arrays,
    beam_size=beams,
    max_decode_len=max_decode_len,
    length_penalty_alpha=length_penalty_alpha,
    top_k=pool,
    dense_mask=dense_mask,
    sparse_output=sparse_output,
    potential=potential,
    score_mode=score_mode,
    first_step=first_step,
  )
  return rank_found(
    found, top_k=top_k, docids_per_doc=docids_per_doc, aggregation=aggregation
  )


def aggregate_documents(
  documents: np.ndarray, scores: np.ndarray, *, aggregation: str = "max"
) -> tuple[np.ndarray, np.ndarray]:
  """Per-docid scores -> one score per document (numpy), best first.

  Args:
    documents: [n] document of each docid.
    scores: [n] its score.
    aggregation: "max" or "logsumexp", as in `rank_documents`.

  Returns:
    (documents [m], scores [m]), m distinct documents; ties keep the order
    in which documents first appear.
  """
  check_aggregation(aggregation, "aggregate_documents")
  documents = np.asarray(documents)
  unique, first, inverse = np.unique(
    documents, return_index=True, return_inverse=True
  )
  merged = np.full(len(unique), -np.inf)
  combine = np.maximum if aggregation == "max" else np.logaddexp
  combine.at(merged, inverse.reshape(-1), np.asarray(scores, np.float64))
  order = np.lexsort((first, -merged))
  return unique[order], merged[order]
