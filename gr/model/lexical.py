"""The model's lexical plan: a weight for every vocabulary term of a query,
and each document's score as the weighted sum over its term set.

Query side: weight[v] = occurrences of term v in the query, each token
folded to its term (gr/index/lexicon.py: stems, no stopwords or specials),
BM25's query-side factor, since the document side already
carries idf (gr/docids/term_sets.py); so the plan is BM25 over each
document's term set. (A trained SPLADE-style expansion head, PAG's
"simultaneous" pass, is not built yet.) Document side: the term sets
flattened to their non-padding entries, P = sum of set sizes.

  score[b, d] = sum_j weight[b, term_j] * impact_j over entries j of d

Everything here runs inside the jitted search and loss (no host step).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class LexicalIndex:
  """Device form of the term sets.

  terms [P] int32, impacts [P] float32, documents [P] int32 (the row of
  each entry in the index's document order), term_of [V] int32 (each token
  id's term, 0 for ids that are no term: PAD, [CLS], [SEP], stopwords,
  docid tokens).
  """

  terms: jax.Array
  impacts: jax.Array
  documents: jax.Array
  term_of: jax.Array
  num_documents: int = flax.struct.field(pytree_node=False, default=0)


def lexical_index(term_sets, term_of: np.ndarray) -> LexicalIndex:
  """A `LexicalIndex` of `term_sets` (gr/docids/term_sets.TermSets);
  term_of: [V] int32 (gr/index/lexicon.term_classes)."""
  terms, impacts, documents = term_sets.flat()
  return LexicalIndex(
    terms=jnp.asarray(terms),
    impacts=jnp.asarray(impacts),
    documents=jnp.asarray(documents),
    term_of=jnp.asarray(term_of, jnp.int32),
    num_documents=len(term_sets),
  )


def query_weights(lexical: LexicalIndex, tokens: jax.Array) -> jax.Array:
  """tokens [B, Li] -> [B, V] occurrences of each term in each query
  (column 0, no term, stays 0)."""
  term_of = lexical.term_of
  safe = jnp.clip(tokens, 0, term_of.shape[0] - 1)
  terms = jnp.where(tokens == safe, term_of[safe], 0)  # [B, Li]
  rows = jnp.broadcast_to(jnp.arange(tokens.shape[0])[:, None], tokens.shape)
  zeros = jnp.zeros((tokens.shape[0], term_of.shape[0]), jnp.float32)
  return zeros.at[rows, terms].add((terms > 0).astype(jnp.float32))


def document_scores(lexical: LexicalIndex, weights: jax.Array) -> jax.Array:
  """weights [B, V] -> [B, N] each document's lexical score."""
  contributions = weights[:, lexical.terms] * lexical.impacts  # [B, P]
  return jax.vmap(
    lambda row: jax.ops.segment_sum(
      row, lexical.documents, num_segments=lexical.num_documents
    )
  )(contributions)
