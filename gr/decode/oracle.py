"""The exact oracle: every docid scored by teacher forcing, then ranked.

`exact_rank` ranks docids, `exact_document_rank` documents (a document's
docids merged as `gr.decode.aggregate.rank_documents` merges beam search's
hits). They are what beam search approximates, and its test.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr import batching
from gr.decode import aggregate
from gr.decode import expand


def exact_rank(
  score_fn: Callable[[jax.Array], jax.Array],
  sequences: Sequence[Sequence[int]],
  values: Sequence[int],
  *,
  batch_size: int = 256,
  max_len: Optional[int] = None,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  plan: Optional[np.ndarray] = None,
  restricted: bool = False,
):
  """Exact ranking of every docid for one query, by teacher forcing.

  Args:
    score_fn: targets [n, L] (EOS then PAD) -> total log-prob [n], or the
      summed raw logits (EOS 0) for beam search's score_mode "logits"
      (gr/model/models.py `step_scores(score_mode=)` summed, the same rule);
      always called with n = batch_size (the last chunk is padded), so it
      compiles once.
    sequences: all docid token sequences, each ending in EOS.
    values: document index of each sequence.
    batch_size: sequences scored per call.
    max_len: L (default: the longest sequence).
    length_penalty_alpha: as in `beam_search`.
    top_k: how many to return (default all).
    plan: [n] a plan score added to each sequence's log-prob (before the
      length penalty, as the plan's bonuses are in beam search).
    restricted: score_fn gives each step's log-prob [n, L] instead, and
      each step is renormalised over the tokens the trie of `sequences`
      allows there (`restricted_to_trie`): the sparse output layer's score.

  Returns:
    (targets [k, L], scores [k], documents [k]) as numpy, best first; ties
    keep input order.
  """
  targets = batching.pad_sequences(sequences, max_len)
  scores = np.concatenate(
    [
      _score_chunk(score_fn, targets[start : start + batch_size], batch_size)
      for start in range(0, len(targets), batch_size)
    ]
  )
  if restricted:
    scores = restricted_to_trie(scores, targets)
  if plan is not None:
    scores = scores + np.asarray(plan, np.float64)
  lengths = np.array([len(s) for s in sequences], np.float64)
  scores = scores / np.asarray(
    expand.length_penalty(lengths, length_penalty_alpha)
  )
  order = np.argsort(-scores, kind="stable")[:top_k]
  return targets[order], scores[order], np.asarray(values)[order]


def restricted_to_trie(step_log_probs: np.ndarray, targets: np.ndarray):
  """Summed log-probs [n] of every docid of a trie, each step renormalised
  over the tokens the trie allows after that step's prefix.

  step_log_probs [n, L] each step's log-prob (0 at padding); targets [n, L]
  all the trie's docids (EOS then PAD = 0). Docids that share a prefix had
  the same decoder input, so the log-probs of the tokens listed after it
  are those of the docids that take them; a step whose only allowed token
  is EOS then scores 0, as in the sparse output layer.
  """
  step_log_probs = np.asarray(step_log_probs, np.float64)
  restricted = np.zeros(len(targets))
  for t in range(targets.shape[1]):
    live = targets[:, t] > 0
    _, prefix = np.unique(targets[:, :t], axis=0, return_inverse=True)
    prefix = prefix.reshape(-1)
    _, first = np.unique(
      np.stack([prefix, targets[:, t]], axis=1)[live], axis=0,
      return_index=True,
    )  # fmt: skip
    listed = np.flatnonzero(live)[first]  # one docid per (prefix, token)
    values = step_log_probs[listed, t]
    peak = np.full(prefix.max() + 1, -np.inf)
    np.maximum.at(peak, prefix[listed], values)
    total = np.zeros_like(peak)
    np.add.at(total, prefix[listed], np.exp(values - peak[prefix[listed]]))
    normaliser = peak + np.log(np.where(total > 0, total, 1.0))
    restricted += np.where(live, step_log_probs[:, t] - normaliser[prefix], 0.0)
  return restricted


def _score_chunk(score_fn, chunk: np.ndarray, batch_size: int) -> np.ndarray:
  """Scores `chunk` [n <= batch_size, L], padded to batch_size rows."""
  count = len(chunk)
  padded = np.concatenate(
    [chunk, np.repeat(chunk[:1], batch_size - count, axis=0)]
  )
  return np.asarray(score_fn(jnp.asarray(padded)), np.float64)[:count]


def exact_document_rank(
  score_fn: Callable[[jax.Array], jax.Array],
  sequences: Sequence[Sequence[int]],
  values: Sequence[int],
  *,
  aggregation: str = "max",
  batch_size: int = 256,
  max_len: Optional[int] = None,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  plan: Optional[np.ndarray] = None,
  restricted: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact ranking of documents: every docid scored, merged per document.

  Arguments as in `exact_rank`; `aggregation` as in `rank_documents`, over
  all docids of a document; `top_k` counts documents.

  Returns:
    (documents [k], scores [k]) as numpy, best first.
  """
  aggregate.check_aggregation(aggregation, "exact_document_rank")
  _, scores, documents = exact_rank(
    score_fn,
    sequences,
    values,
    batch_size=batch_size,
    max_len=max_len,
    length_penalty_alpha=length_penalty_alpha,
    plan=plan,
    restricted=restricted,
  )
  documents, scores = aggregate.aggregate_documents(
    documents, scores, aggregation=aggregation
  )
  return documents[:top_k], scores[:top_k]
