"""Queries with their candidates and everything the plan's term-weight
head needs to rescore them, on top of a frozen model
(gr/experiments/lexical_head.py trains on them).

For each judged query: its candidates (the documents the searcher ranks
first, plus, for training, its relevant ones), each candidate's model
score (teacher-forced, fixed), the query's encoder states and tokens, and
the impact of each query token's term in each candidate. An expansion's
added terms are scored against the candidates' whole term sets
(`TermSpace`), so any term can be looked up.

Shapes: Q queries, Li query tokens (padded), K candidates, E encoder
width, N documents, M the widest term set, V the vocabulary's pieces.
"""

import logging
import time
from typing import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gr import batching
from gr.index import lexicon
from gr.index import vocab as vocab_lib
from gr.search import retrieval


@flax.struct.dataclass
class RerankSet:
  """Queries with their candidates, ready for the head.

  states [Q, Li, E] float32 each query's encoder states; tokens [Q, Li]
  int32 (0: padding); terms [Q, Li] int32 each token's term (0: none);
  contributions [Q, Li, K] float32 the impact of the token's term in each
  candidate; documents [Q, K] int32 each candidate's position in the index
  (-1: padding); model [Q, K] float32 its model score (-inf: padding);
  relevant [Q, K] bool.
  """

  states: np.ndarray
  tokens: np.ndarray
  terms: np.ndarray
  contributions: np.ndarray
  documents: np.ndarray
  model: np.ndarray
  relevant: np.ndarray


@flax.struct.dataclass
class TermSpace:
  """The term space an expansion's added terms live in: the folding's
  term_of [V] int32 and continuation [V] bool, and every document's term
  set sorted by term, terms [N, M] int32 (padding: int32 max) and impacts
  [N, M] float32 (padding: 0); num_terms (static) the term id space."""

  term_of: jax.Array
  continuation: jax.Array
  set_terms: jax.Array
  set_impacts: jax.Array
  num_terms: int = flax.struct.field(pytree_node=False, default=0)

  def impacts(self, documents: jax.Array, terms: jax.Array) -> jax.Array:
    """documents [Q, K] (-1: padding, impact 0), terms [Q, X] -> [Q, X, K]
    the impact of each term in each document's set."""
    rows = jnp.maximum(documents, 0)
    sorted_terms = self.set_terms[rows]  # [Q, K, M]
    sorted_impacts = self.set_impacts[rows]

    def one(row_terms, row_impacts, wanted):  # [M], [M], [X] -> [X]
      at = jnp.clip(
        jnp.searchsorted(row_terms, wanted), 0, row_terms.shape[0] - 1
      )
      return jnp.where(row_terms[at] == wanted, row_impacts[at], 0.0)

    per_document = jax.vmap(one, in_axes=(0, 0, None))  # over K
    found = jax.vmap(per_document)(sorted_terms, sorted_impacts, terms)
    found = jnp.where(documents[..., None] >= 0, found, 0.0)  # [Q, K, X]
    return jnp.swapaxes(found, 1, 2)


def term_space(searcher: retrieval.Searcher) -> TermSpace:
  """The searcher's `TermSpace`: its term sets, under the folding its
  search uses (`Searcher.lexical_index`)."""
  term_sets = searcher.term_sets
  lexical = searcher.lexical_index
  terms = np.where(
    term_sets.impacts > 0, term_sets.terms, np.iinfo(np.int32).max
  ).astype(np.int32)
  order = np.argsort(terms, axis=1, kind="stable")
  return TermSpace(
    term_of=lexical.term_of,
    continuation=lexical.continuation,
    set_terms=jnp.asarray(np.take_along_axis(terms, order, axis=1)),
    set_impacts=jnp.asarray(
      np.take_along_axis(term_sets.impacts, order, axis=1), jnp.float32
    ),
    num_terms=lexical.num_terms,
  )


def rerank_set(
  searcher: retrieval.Searcher,
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
  *,
  add_relevant: bool,
) -> RerankSet:
  """The searcher's candidates for the judged `queries` (plus their
  relevant documents where add_relevant: training), with the model's
  score of each (the searcher's plan removed) and the lexical
  contributions of each query token."""
  started = time.time()
  qids = [q for q in qrels if q in queries]
  vocab = searcher.index.vocab
  tokens = vocab_lib.encode_texts(
    vocab, [queries[q] for q in qids], searcher.input_length
  )
  found, _ = searcher.search_tokens(tokens)  # [Q, k] positions
  position = {d: i for i, d in enumerate(searcher.index.doc_ids)}
  candidates = []
  for qid, row in zip(qids, found):
    docs = [int(d) for d in row if d >= 0]
    relevant = {position[d] for d, r in qrels[qid].items() if r > 0}
    if add_relevant:
      docs += sorted(relevant - set(docs))
    candidates.append((docs, relevant))
  model = _model_scores(searcher, tokens, [c for c, _ in candidates])
  out = _assembled(searcher, tokens, candidates, model)
  logging.info(
    "rerank set: %d queries, %d candidates each at most, %.1f s",
    len(qids), model.shape[1], time.time() - started,
  )  # fmt: skip
  return out


def _model_scores(searcher, tokens, candidates) -> np.ndarray:
  """[Q, K] each candidate's best docid score by the model alone
  (teacher-forced, as the exact oracle scores), -inf padding."""
  width = max(len(c) for c in candidates)
  scores = np.full((len(candidates), width), -np.inf, np.float32)
  score = retrieval.make_score_fn(
    searcher.model, searcher.mesh, searcher.config.score_mode
  )
  sequences, documents = searcher.index.docid_sequences()
  rows_of = {}
  for row, document in enumerate(documents):
    rows_of.setdefault(int(document), []).append(row)
  targets = batching.pad_sequences(sequences)
  rows_per_query = width * max(map(len, rows_of.values()))  # one shape
  for q, (query, docs) in enumerate(zip(tokens, candidates)):
    # Cut to its length bucket: the padding's encoder work is most of it.
    query = retrieval.cut_to_bucket(query[None])[0]
    rows = [r for d in docs for r in rows_of[d]]
    padded = np.zeros((rows_per_query,), np.int64)
    padded[: len(rows)] = rows
    values = np.asarray(score(searcher.params, query, targets[padded]))
    start = 0
    for k, d in enumerate(docs):
      count = len(rows_of[d])
      scores[q, k] = values[start : start + count].max()
      start += count
  return scores


def _assembled(searcher, tokens, candidates, model) -> RerankSet:
  """The `RerankSet` of candidates [(docs, relevant positions)] per query
  and their model scores [Q, K]."""
  term_sets = searcher.term_sets
  folding = lexicon.folding(searcher.index.vocab, term_sets)
  tokens = retrieval.cut_to_bucket(tokens)  # [Q, Li], Li the longest's
  terms = folding.terms(tokens)  # [Q, Li]
  queries, length = tokens.shape
  documents = np.full(model.shape, -1, np.int32)
  relevant = np.zeros(model.shape, bool)
  contributions = np.zeros((queries, length, model.shape[1]), np.float32)
  for q, (docs, positives) in enumerate(candidates):
    documents[q, : len(docs)] = docs
    relevant[q, : len(docs)] = [d in positives for d in docs]
    match = term_sets.terms[docs][None] == terms[q][:, None, None]
    contributions[q, :, : len(docs)] = np.where(
      terms[q][:, None] > 0, (match * term_sets.impacts[docs][None]).sum(2), 0
    )
  return RerankSet(
    states=_encoded(searcher, tokens),
    tokens=tokens.astype(np.int32),
    terms=terms.astype(np.int32),
    contributions=contributions,
    documents=documents,
    model=model,
    relevant=relevant,
  )


def _encoded(searcher, tokens, batch_size: int = 64) -> np.ndarray:
  """tokens [Q, Li] -> their encoder states [Q, Li, E] float32, in
  batches of one shape (one compile)."""
  encode = jax.jit(searcher.model.encode)
  out = []
  for start in range(0, len(tokens), batch_size):
    chunk = tokens[start : start + batch_size]
    padded = batching.pad_rows(chunk, batch_size)
    states = np.asarray(encode(searcher.params, padded), np.float32)
    out.append(states[: len(chunk)])
  return np.concatenate(out)


def merged(sets: list[RerankSet]) -> RerankSet:
  """One `RerankSet` of several (query sets), tokens and candidates
  padded to the longest and widest."""
  length = max(r.tokens.shape[1] for r in sets)
  width = max(r.model.shape[1] for r in sets)

  def padded(array, fill, axes):
    pad = [(0, 0)] * array.ndim
    for axis, size in axes:
      pad[axis] = (0, size - array.shape[axis])
    return np.pad(array, pad, constant_values=fill)

  def joined(name, fill, axes):
    return np.concatenate([padded(getattr(r, name), fill, axes) for r in sets])

  return RerankSet(
    states=joined("states", 0.0, [(1, length)]),
    tokens=joined("tokens", 0, [(1, length)]),
    terms=joined("terms", 0, [(1, length)]),
    contributions=joined("contributions", 0.0, [(1, length), (2, width)]),
    documents=joined("documents", -1, [(1, width)]),
    model=joined("model", -np.inf, [(1, width)]),
    relevant=joined("relevant", False, [(1, width)]),
  )


def length_groups(rerank: RerankSet) -> list[tuple[int, np.ndarray]]:
  """[(length, rows [n])]: the queries grouped by the length bucket of
  their own tokens (`retrieval.input_lengths`), shortest first, so a batch
  of a group is cut to the length its queries need."""
  tokens = rerank.tokens
  last = np.where(tokens > 0, np.arange(tokens.shape[1]) + 1, 0).max(axis=1)
  options = retrieval.input_lengths(tokens.shape[1])
  buckets = np.array([next(n for n in options if n >= max(k, 1)) for k in last])
  return [(int(n), np.flatnonzero(buckets == n)) for n in np.unique(buckets)]


def cut(rerank: RerankSet, rows: np.ndarray, length: int) -> RerankSet:
  """The queries `rows` [n] of `rerank`, their tokens cut to `length`."""
  return RerankSet(
    states=rerank.states[rows, :length],
    tokens=rerank.tokens[rows, :length],
    terms=rerank.terms[rows, :length],
    contributions=rerank.contributions[rows, :length],
    documents=rerank.documents[rows],
    model=rerank.model[rows],
    relevant=rerank.relevant[rows],
  )


def sampled(by_name: dict, max_queries: int) -> dict:
  """{name: (queries, qrels)} with at most `max_queries` judged queries in
  all, the same share of each query set, a fixed sample (seed 0)."""
  total = sum(len(qrels) for _, qrels in by_name.values())
  if total <= max_queries:
    return by_name
  rng = np.random.default_rng(0)
  out = {}
  for name, (queries, qrels) in by_name.items():
    keep = max(1, len(qrels) * max_queries // total)
    qids = sorted(qrels)
    chosen = rng.choice(len(qids), size=min(keep, len(qids)), replace=False)
    out[name] = (queries, {qids[i]: qrels[qids[i]] for i in sorted(chosen)})
  return out
