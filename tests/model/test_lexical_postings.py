"""The lexical plan's two segments (gr/model/lexical.py): postings by term
(main) and flat entries (delta) score every document as the numpy sum
over its term set does, alone or split between them."""

import jax.numpy as jnp
import numpy as np
import pytest

from gr.docids import term_sets
from gr.model import lexical

NUM_TERMS, DOCS, VOCAB = 40, 30, 50


def _entries(seed: int):
  """Random term sets: (terms [P], impacts [P], documents [P])."""
  rng = np.random.default_rng(seed)
  terms, impacts, documents = [], [], []
  for d in range(DOCS):
    own = rng.choice(np.arange(1, NUM_TERMS), rng.integers(0, 12), False)
    terms += list(own)
    impacts += list(rng.random(len(own)) + 0.1)
    documents += [d] * len(own)
  return (
    np.array(terms, np.int32),
    np.array(impacts, np.float32),
    np.array(documents, np.int32),
  )


def _index(main_part, delta_part) -> lexical.LexicalIndex:
  """Piece v is term v % NUM_TERMS (piece 0: none), no word table."""
  main, _ = lexical.postings(*main_part, NUM_TERMS, capacity=7)
  return lexical.LexicalIndex(
    main=main,
    terms=jnp.asarray(delta_part[0]),
    impacts=jnp.asarray(delta_part[1]),
    documents=jnp.asarray(delta_part[2]),
    term_of=jnp.asarray(np.arange(VOCAB) % NUM_TERMS, jnp.int32),
    continuation=jnp.zeros(VOCAB, bool),
    word_codes=jnp.asarray(term_sets.empty_word_codes()),
    word_terms=jnp.asarray(term_sets.empty_word_terms()),
    num_documents=DOCS,
    num_terms=NUM_TERMS,
  )


def _want(entries, tokens, weights) -> np.ndarray:
  terms, impacts, documents = entries
  out = np.zeros((len(tokens), DOCS))
  for b, (row, w) in enumerate(zip(tokens, weights)):
    query = np.zeros(NUM_TERMS)
    np.add.at(query, row % NUM_TERMS, w * (row % NUM_TERMS > 0))
    np.add.at(out[b], documents, query[terms] * impacts)
  return out


@pytest.mark.parametrize("split", [0.0, 0.5, 1.0])
def test_main_and_delta_score_as_the_term_sets(split):
  entries = _entries(0)
  cut = int(split * len(entries[0]))
  main = tuple(a[:cut] for a in entries)
  delta = tuple(a[cut:] for a in entries)
  index = _index(main, delta)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, VOCAB, (4, 9)).astype(np.int32)
  tokens[0, :3] = [5, 5, 45]  # a repeated term, and 45 -> term 5 again
  weights = rng.random(tokens.shape).astype(np.float32)
  for w in (None, weights):
    got = lexical.document_scores(index, jnp.asarray(tokens), w)
    want = _want(entries, tokens, np.ones(tokens.shape) if w is None else w)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_postings_group_entries_by_term():
  terms, impacts, documents = _entries(2)
  postings, row_of = lexical.postings(terms, impacts, documents, NUM_TERMS)
  start = np.asarray(postings.start)
  np.testing.assert_array_equal(
    np.diff(start), np.bincount(terms, minlength=NUM_TERMS)
  )
  np.testing.assert_array_equal(
    np.asarray(postings.documents)[row_of], documents
  )
  np.testing.assert_array_equal(np.asarray(postings.impacts)[row_of], impacts)
  longest = np.bincount(terms).max()
  assert longest <= postings.width < 2 * longest  # a power of two
  assert postings.width & (postings.width - 1) == 0


def test_postings_refuse_terms_outside_the_space():
  with pytest.raises(ValueError, match="outside"):
    lexical.postings(np.array([NUM_TERMS]), [1.0], [0], NUM_TERMS)
