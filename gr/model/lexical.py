"""The model's lexical plan: a weight for every vocabulary term of a query,
and each document's score as the weighted sum over its term set.

Query side (PAG's "simultaneous" pass, SPLADE-style):

  weight[v] = copy[v] + expansion[v]
  copy[v] = occurrences of term v in the query (special tokens excluded)
  expansion[v] = max over positions of log(1 + relu(h_i . W[:, v] + c[v]))

over the encoder states h [Li, E]. The expansion kernel W [E, V] and bias
c [V] start at zero, so step 0 is BM25 over each document's term set
(gr/docids/term_sets.py: the document side already carries idf), and
training can only add terms. Document side: the term sets flattened to
their non-padding entries, P = sum of set sizes.

  score[b, d] = sum_j weight[b, term_j] * impact_j over entries j of d

Everything here runs inside the jitted search and loss (no host step).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

Params = Any


@flax.struct.dataclass
class LexicalIndex:
  """Device form of the term sets.

  terms [P] int32, impacts [P] float32, documents [P] int32 (the row of
  each entry in the index's document order), is_term [V] bool (token ids a
  query term may be: no PAD, [CLS], [SEP] or docid tokens). P may carry
  zero-impact padding (so edits can keep shapes).
  """

  terms: jax.Array
  impacts: jax.Array
  documents: jax.Array
  is_term: jax.Array
  num_documents: int = flax.struct.field(pytree_node=False, default=0)


def lexical_index(term_sets, is_term: np.ndarray, pad_to: int = 1):
  """A `LexicalIndex` of `term_sets` (gr/docids/term_sets.TermSets).

  is_term: [V] bool. pad_to: P is rounded up to a multiple of it.
  """
  terms, impacts, documents = term_sets.flat()
  padding = -len(terms) % max(pad_to, 1)
  return LexicalIndex(
    terms=jnp.asarray(np.pad(terms, (0, padding))),
    impacts=jnp.asarray(np.pad(impacts, (0, padding))),
    documents=jnp.asarray(np.pad(documents, (0, padding))),
    is_term=jnp.asarray(is_term, bool),
    num_documents=len(term_sets),
  )


def copy_weights(tokens: jax.Array, is_term: jax.Array) -> jax.Array:
  """tokens [B, Li] -> [B, V] occurrences of each term in each query."""
  batch = tokens.shape[0]
  safe = jnp.clip(tokens, 0, is_term.shape[0] - 1)
  counts = is_term[safe].astype(jnp.float32) * (tokens == safe)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], tokens.shape)
  zeros = jnp.zeros((batch, is_term.shape[0]), jnp.float32)
  return zeros.at[rows, safe].add(counts)


def init_expansion(width: int, vocab_size: int) -> Params:
  """Zero expansion head: {'kernel': [E, V], 'bias': [V]}."""
  return {
    "kernel": jnp.zeros((width, vocab_size), jnp.float32),
    "bias": jnp.zeros((vocab_size,), jnp.float32),
  }


def expansion_weights(
  params: Params, encoded: jax.Array, tokens: jax.Array, is_term: jax.Array
) -> jax.Array:
  """encoded [B, Li, E], tokens [B, Li] -> [B, V] SPLADE max-pooled weights
  log(1 + relu(logits)) over the non-padding positions, terms only."""
  logits = encoded.astype(jnp.float32) @ params["kernel"] + params["bias"]
  weights = jnp.log1p(jax.nn.relu(logits))  # [B, Li, V]
  weights = jnp.where((tokens > 0)[..., None], weights, 0.0)
  return jnp.max(weights, axis=1) * is_term[None, :]


def query_weights(
  lexical: LexicalIndex,
  tokens: jax.Array,
  encoded: jax.Array | None = None,
  expansion: Params | None = None,
) -> jax.Array:
  """[B, V] term weights of queries tokens [B, Li]: copy (+ expansion)."""
  weights = copy_weights(tokens, lexical.is_term)
  if expansion is not None:
    weights = weights + expansion_weights(
      expansion, encoded, tokens, lexical.is_term
    )
  return weights


def document_scores(lexical: LexicalIndex, weights: jax.Array) -> jax.Array:
  """weights [B, V] -> [B, N] each document's lexical score."""
  contributions = weights[:, lexical.terms] * lexical.impacts  # [B, P]
  return jax.vmap(
    lambda row: jax.ops.segment_sum(
      row, lexical.documents, num_segments=lexical.num_documents
    )
  )(contributions)
