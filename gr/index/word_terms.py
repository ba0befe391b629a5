"""Whole words spelled in word pieces: one term per word, not per piece.

A tokeniser splits a rare word into pieces ('zel', '##ens', '##ky'). As
terms, those pieces match pieces of other words and lose the word's
weight; BM25 tokenisers see one word. Here each word of two or more pieces
gets a code, a hash of its first `MAX_PIECES` piece ids, and a frozen table
built from the indexed corpus maps codes to terms: the word's fold (its
stem with a language, its spelling without), the same term a one-piece
word of that fold has, or a new term id past the vocabulary. A word that
is not in the table (first seen after indexing, in a query or an online
add) is one term too: one of `WORD_BUCKETS` terms after the table's, by
its code, unstemmed, the same on the document side and the query side. So
a query word no indexed document has matches nothing, as in BM25, and an
online add is still found by its new words. Two words of one code (a hash
collision, or a shared first `MAX_PIECES` pieces) are left out of the
table, so they share a bucket.

`fold` runs the same in numpy (documents, the exact oracle) and in
jax.numpy (inside the jitted search): pass the array module as `xp`.

Shapes: tokens [..., L] int; classes [V] int32 (each piece's own term,
gr/index/lexicon.py); continuation [V] bool (the piece continues a word);
table codes [W] uint32 sorted ascending and terms [W] int32, whose last
entry is the sentinel (code 2**32 - 1, term 0); buckets: the terms
[num_terms - buckets, num_terms) of words not in the table (0: such words
keep their pieces, the folding of pieces as terms).
"""

from typing import Callable, Optional, Sequence

import numpy as np

from gr.docids import term_sets as term_sets_lib

MAX_PIECES = 8
WORD_BUCKETS = 1 << 14
_MULTIPLIER = np.uint32(16777619)  # FNV-1's prime
SENTINEL = np.uint32(term_sets_lib.SENTINEL)


def _shifted(xp, x, j: int, fill):
  """x [..., L] moved j places left along the last axis, `fill` after."""
  tail = xp.full(x.shape[:-1] + (min(j, x.shape[-1]),), fill, x.dtype)
  return xp.concatenate([x[..., j:], tail], axis=-1)


def _cummax(xp, x):
  """Running maximum along the last axis of x [..., L]."""
  if xp is np:
    return np.maximum.accumulate(x, axis=-1)
  import jax  # pylint: disable=g-import-not-at-top

  return jax.lax.cummax(x, axis=x.ndim - 1)


def word_codes(xp, tokens, continuation):
  """tokens [..., L] -> (codes [..., L] uint32, starts [..., L] bool,
  multi [..., L] bool): at each word start, the code of its first
  MAX_PIECES pieces; multi marks starts of words of two or more pieces.
  Ids past `continuation` (docid tokens) start words."""
  size = continuation.shape[0]
  safe = xp.clip(tokens, 0, size - 1)
  continues = xp.where(tokens == safe, continuation[safe], False)
  values = tokens.astype(xp.uint32) + xp.uint32(1)
  codes, alive = values, ~continues
  multi = None
  for j in range(1, MAX_PIECES):
    alive = alive & _shifted(xp, continues, j, False)
    step = codes * _MULTIPLIER + _shifted(xp, values, j, 0)
    codes = xp.where(alive, step, codes)
    multi = alive if multi is None else multi
  return codes, ~continues, multi


def fold(
  xp, tokens, classes, continuation, table_codes, table_terms, buckets=0,
  num_terms=0,
):  # fmt: skip
  """tokens [..., L] -> terms [..., L] int32 (0: none): a word of several
  pieces is its term at its first piece and 0 at the rest (a word not in
  the table: its bucket, num_terms - buckets + code % buckets, if buckets);
  every other piece is classes[piece] (ids past classes: 0)."""
  safe = xp.clip(tokens, 0, classes.shape[0] - 1)
  pieces = xp.where(tokens == safe, classes[safe], 0)
  codes, starts, multi = word_codes(xp, tokens, continuation)
  found = xp.clip(
    xp.searchsorted(table_codes, codes), 0, table_codes.shape[0] - 1
  )
  hit = starts & multi & (table_codes[found] == codes)
  word = xp.where(hit, table_terms[found], 0)
  if buckets:
    bucket = (codes % xp.uint32(buckets)).astype(xp.int32)
    word = xp.where(
      starts & multi & (word == 0), num_terms - buckets + bucket, word
    )
  positions = xp.broadcast_to(xp.arange(tokens.shape[-1]), tokens.shape)
  start_of = _cummax(xp, xp.where(starts, positions, 0))
  in_word = xp.take_along_axis(word > 0, start_of, axis=-1)
  return xp.where(in_word, word, pieces).astype(xp.int32)


def build_table(
  token_lists: Sequence[np.ndarray],
  continuation: np.ndarray,
  spelling: Callable[[Sequence[int]], str],
  term_of: Callable[[str], Optional[int]],
) -> tuple[np.ndarray, np.ndarray]:
  """The table (codes [W] uint32, terms [W] int32) of every word of two or
  more pieces in token_lists (each [L] int).

  spelling(piece ids) -> the word as text; term_of(word) -> its term id
  (None or 0: no term, such as a stopword; it keeps its pieces).
  """
  spellings: dict[int, set[str]] = {}
  for tokens in token_lists:
    tokens = np.asarray(tokens, np.int64)
    codes, starts, multi = word_codes(np, tokens, continuation)
    bounds = np.append(np.flatnonzero(starts), len(tokens))
    for start, end in zip(bounds[:-1], bounds[1:]):
      if multi[start]:
        word = spelling(tokens[start:end])
        spellings.setdefault(int(codes[start]), set()).add(word)
  table = {}
  for code, words in spellings.items():
    if len(words) == 1 and code != SENTINEL:
      term = term_of(words.pop())
      if term:
        table[code] = term
  codes = np.array(sorted(table), np.uint32)
  terms = np.array([table[c] for c in sorted(table)], np.int32)
  return (
    np.concatenate([codes, term_sets_lib.empty_word_codes()]),
    np.concatenate([terms, term_sets_lib.empty_word_terms()]),
  )
