"""The index's lexical side: each document's term set in the index's
vocabulary (gr/docids/term_sets.py), kept beside the docid table.

A term is a class of vocabulary ids (`term_classes`): the ids of the encoder
input a text gets (`vocab.encode_inputs`) that are text tokens (no PAD, EOS,
specials or docid tokens). With a language, a piece that is a whole word is
folded to its stem (Snowball, PyStemmer) and stopwords are no term, as BM25
tokenisers do; a word split into several pieces keeps its pieces. Without
one (`language=''`), every text piece is its own term. A class is named by
its smallest member id, so a document's terms and a query's are vocabulary
ids and come from one tokeniser: WordPiece pieces with a pretrained encoder,
sentencepiece pieces otherwise. Rows follow the index's document order
(`Index.doc_ids`).
"""

import functools
from typing import Mapping, Optional, Sequence

from bm25s import stopwords as bm25s_stopwords
import numpy as np
import Stemmer

from gr.data import beir
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact

STOPWORDS = {
  "english": bm25s_stopwords.STOPWORDS_EN,
  "german": bm25s_stopwords.STOPWORDS_GERMAN,
  "dutch": bm25s_stopwords.STOPWORDS_DUTCH,
  "french": bm25s_stopwords.STOPWORDS_FRENCH,
  "spanish": bm25s_stopwords.STOPWORDS_SPANISH,
  "portuguese": bm25s_stopwords.STOPWORDS_PORTUGUESE,
  "italian": bm25s_stopwords.STOPWORDS_ITALIAN,
  "russian": bm25s_stopwords.STOPWORDS_RUSSIAN,
  "swedish": bm25s_stopwords.STOPWORDS_SWEDISH,
  "norwegian": bm25s_stopwords.STOPWORDS_NORWEGIAN,
  "danish": bm25s_stopwords.STOPWORDS_DANISH,
  "turkish": bm25s_stopwords.STOPWORDS_TURKISH,
}


def check_language(language: str) -> str:
  """`language` if terms can be folded in it ('' = no folding)."""
  if language and language not in Stemmer.algorithms():
    raise ValueError(
      f"term language {language!r}: not a PyStemmer language "
      f"({', '.join(Stemmer.algorithms())}), or '' for no stemming"
    )
  return language


def term_classes(vocab, language: str = "") -> np.ndarray:
  """[vocab_size] int32: each id's term (the smallest id of its class), 0
  for ids that are no term. Read-only: one array per vocabulary and
  language, shared by every caller."""
  return _term_classes(vocab, check_language(language))


@functools.lru_cache(maxsize=8)
def _term_classes(vocab, language: str) -> np.ndarray:
  classes = np.zeros(vocab.vocab_size, np.int32)
  ids = vocab.text_token_ids()
  if language:
    _fold_pieces(classes, ids, vocab.word_pieces(ids), language)
  else:
    classes[ids] = ids
  classes.flags.writeable = False
  return classes


def _fold_pieces(classes, ids, pieces, language: str) -> None:
  """Writes each piece's term into classes[id]: a whole word's stem (no
  term for a stopword), a continuation or non-word piece itself."""
  stemmer = Stemmer.Stemmer(language)
  stopwords = set(STOPWORDS.get(language, ()))
  first: dict[str, int] = {}
  for i, piece in zip(ids, pieces):
    word = piece.lower()
    if word.startswith("##") or not word.isalpha():
      classes[i] = first.setdefault(piece, i)
    elif word not in stopwords:
      classes[i] = first.setdefault(stemmer.stemWord(word), i)


def query_terms(
  classes: np.ndarray,
  tokens: np.ndarray,
  token_weights: Optional[np.ndarray] = None,
) -> np.ndarray:
  """[V] occurrences of each term in one text's token ids [L] (ids past
  the classes, such as docid tokens, are no term); with token_weights [L],
  each term's summed token weights instead."""
  tokens = np.asarray(tokens)
  weights = np.ones(len(tokens)) if token_weights is None else token_weights
  known = tokens < len(classes)
  terms, weights = classes[tokens[known]], np.asarray(weights)[known]
  return np.bincount(
    terms[terms > 0], weights=weights[terms > 0], minlength=len(classes)
  )


def document_terms(
  vocab, texts: Sequence[str], language: str = ""
) -> list[list[int]]:
  """Each text's terms: its whole (untrimmed) encoder input ids folded to
  their terms, in order."""
  return text_terms(term_classes(vocab, language), vocab, texts)


def text_terms(
  classes: np.ndarray, vocab, texts: Sequence[str]
) -> list[list[int]]:
  """`document_terms` with the term classes given (`term_classes`, or its
  first vocab.base_size ids: docid tokens are no term), so a caller that
  folds many texts over changing vocabularies (the service's online adds)
  computes the classes once."""
  out = []
  for text in texts:
    tokens = np.asarray(vocab.encode_inputs(text, 1 << 30), np.int64)
    terms = classes[tokens[tokens < len(classes)]]
    out.append([int(c) for c in terms if c])
  return out


def build_term_sets(
  index,
  corpus: Mapping[str, beir.Document],
  *,
  max_terms: int = 0,
  language: str = "",
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
    document_terms(index.vocab, texts, language),
    index.vocab.vocab_size,
    max_terms=max_terms,
    language=language,
    k1=k1,
    b=b,
  )


def saved_term_sets(
  index,
  corpus: Mapping[str, beir.Document],
  index_dir: str,
  *,
  max_terms: int = 0,
  language: str = "",
) -> term_sets_lib.TermSets:
  """The index's term sets, saved beside its current version in
  `index_dir` (so every checkpoint's artifact carries them); built once
  for these max_terms and language."""
  version_dir = artifact.current_version_dir(index_dir)
  sets = term_sets_lib.TermSets.load(version_dir)
  if sets is None or (sets.max_terms, sets.language) != (max_terms, language):
    sets = build_term_sets(
      index, corpus, max_terms=max_terms, language=language
    )
    sets.save(version_dir)
  return sets
