"""The exact ranking a `retrieval.Searcher` approximates (the oracle of
its beam search): every docid of the index scored by teacher forcing,
merged per document by the searcher's aggregation, plus the lexical plan
in numpy (the oracle of `plan_lib.LexicalPlan.document_scores`), with the
searcher's term-weight head and expansion where it has them.

Shapes: Li query tokens, N documents, X terms an expansion adds.
"""

import functools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from gr import batching
from gr.decode import oracle
from gr.docids import term_sets as term_sets_lib
from gr.index import lexicon
from gr.index import vocab as vocab_lib
from gr.model import lexical as lexical_lib
from gr.search.retrieval import Ranking
from gr.search.retrieval import Searcher
from gr.search.retrieval import make_score_fn


def exact_ranking(
  searcher: Searcher,
  query_texts: Sequence[str],
  *,
  top_k: int = 10,
  batch_size: int = 512,
) -> list[Ranking]:
  """Every docid scored by teacher forcing, per query (the oracle).

  A document's docids are merged by the searcher's config.aggregation (over
  all of them); top_k counts documents. With the config's sparse output
  layer (log-probs), each step is renormalised over the tokens the trie
  allows, as the search scores it (`oracle.restricted_to_trie`). On the
  searcher's mesh, each batch of docids is split over 'data' (batch_size
  rounded up to a multiple).
  """
  config = searcher.config
  restricted = config.sparse_output and config.score_mode == "log_probs"
  score = make_score_fn(
    searcher.model, searcher.mesh, config.score_mode, per_step=restricted
  )
  sequences, values = searcher.index.docid_sequences()
  tokens = vocab_lib.encode_texts(
    searcher.index.vocab, query_texts, searcher.input_length
  )
  doc_ids = searcher.index.doc_ids
  weight = searcher.lexical_weight
  rankings = []
  for query in tokens:
    lexical = (
      exact_lexical_scores(
        searcher.term_sets,
        searcher.index.vocab,
        query,
        *query_head_weights(searcher, query),
      )
      if weight > 0
      else None
    )  # [N]
    if np.isinf(weight):
      docs = np.argsort(-lexical, kind="stable")[:top_k]
      docs, scores = docs[lexical[docs] > 0], lexical[docs]
    else:
      score_fn = functools.partial(score, searcher.params, query)
      docs, scores = oracle.exact_document_rank(
        score_fn,
        sequences,
        values,
        aggregation=searcher.config.aggregation,
        batch_size=batching.data_multiple(batch_size, searcher.mesh),
        top_k=top_k,
        length_penalty_alpha=searcher.config.length_penalty_alpha,
        plan=None if lexical is None else weight * lexical[values],
        restricted=restricted,
      )
    rankings.append([(doc_ids[d], float(s)) for d, s in zip(docs, scores)])
  return rankings


def query_head_weights(
  searcher: Searcher, query: np.ndarray
) -> tuple[Optional[np.ndarray], Optional[tuple[np.ndarray, np.ndarray]]]:
  """What the searcher's term-weight head gives one query [Li]: each
  token's weight [Li] (None without a head: every token weighs 1) and,
  with an expansion, its added (terms [X], weights [X]) (else None)."""
  head = searcher.term_weight_head
  if head is None:
    return None, None
  tokens = jnp.asarray(query)[None]
  states = searcher.model.encode(searcher.params, tokens)
  added = None
  if head.expansion is not None:
    terms, weights = lexical_lib.expansion_terms(
      searcher.lexical_index, head.expansion, tokens, states
    )
    added = (np.asarray(terms)[0], np.asarray(weights)[0])
  return np.asarray(head.token_weights(states))[0], added


def exact_lexical_scores(
  term_sets: term_sets_lib.TermSets,
  vocab,
  query: np.ndarray,
  token_weights: Optional[np.ndarray] = None,
  added: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> np.ndarray:
  """[N] each document's lexical score for one query's tokens [Li] (each
  token weighing token_weights [Li], default 1, and the expansion's added
  (terms [X], weights [X]) joining them), in numpy (the oracle of
  `plan_lib.LexicalPlan.document_scores`)."""
  folding = lexicon.folding(vocab, term_sets)
  weights = lexicon.query_terms(folding, query, token_weights)
  if added is not None:
    np.add.at(weights, np.asarray(added[0]), np.asarray(added[1], np.float64))
  return term_sets.document_scores(weights)
