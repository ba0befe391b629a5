"""The index's lexical side: each document's term set in the index's
vocabulary (gr/docids/term_sets.py), kept beside the docid table.

Terms are the ids of the encoder input a text gets (`vocab.encode_inputs`)
that are text tokens (`term_mask`: no PAD, EOS, specials or docid tokens),
so a document's terms and a query's come from one tokeniser: WordPiece
pieces with a pretrained encoder, sentencepiece pieces otherwise. Rows
follow the index's document order (`Index.doc_ids`).
"""

from typing import Mapping, Sequence

import numpy as np

from gr.data import beir
from gr.docids import term_sets as term_sets_lib


def term_mask(vocab) -> np.ndarray:
  """[vocab_size] bool: the ids that count as lexical terms."""
  mask = np.zeros(vocab.vocab_size, bool)
  mask[vocab.text_token_ids()] = True
  return mask


def document_terms(vocab, texts: Sequence[str]) -> list[list[int]]:
  """Each text's terms: its whole (untrimmed) encoder input ids that are
  terms, in order."""
  mask = term_mask(vocab)
  return [
    [t for t in vocab.encode_inputs(text, 1 << 30) if mask[t]] for text in texts
  ]


def build_term_sets(
  index,
  corpus: Mapping[str, beir.Document],
  *,
  max_terms: int = 0,
  k1: float = 1.5,
  b: float = 0.75,
) -> term_sets_lib.TermSets:
  """Term sets of `index`'s documents (their bodies, as BM25 indexes them)
  with statistics from them (max_terms 0 = every term)."""
  missing = [d for d in index.doc_ids if d not in corpus]
  if missing:
    raise ValueError(
      f"build_term_sets: {len(missing)} indexed documents are not in the "
      f"corpus, e.g. {missing[0]!r}"
    )
  texts = [corpus[d].text for d in index.doc_ids]
  return term_sets_lib.build_term_sets(
    document_terms(index.vocab, texts),
    index.vocab.vocab_size,
    max_terms=max_terms,
    k1=k1,
    b=b,
  )
