"""The index's lexical side: each document's term set in the index's
vocabulary (gr/docids/term_sets.py), kept beside the docid table.

A term is a class of vocabulary ids (`term_classes`): the ids of the encoder
input a text gets (`vocab.encode_inputs`) that are text tokens (no PAD, EOS,
specials or docid tokens). With a language, a piece that is a whole word is
folded to its stem (Snowball, PyStemmer) and stopwords are no term, as BM25
tokenisers do. Without one (`language=''`), every text piece is its own
term. A class is named by its smallest member id, so a document's terms and
a query's are vocabulary ids and come from one tokeniser: WordPiece pieces
with a pretrained encoder, sentencepiece pieces otherwise.

A word split into several pieces keeps its pieces (`piece_folding`), or,
with `words`, is one term (`word_folding`, gr/index/word_terms.py): its
stem, or a new id from `base_size` on, by a table frozen from the indexed
corpus. A `TermFolding` is the whole rule, the same for documents, queries
and the jitted search (gr/model/lexical.py). Rows follow the index's
document order (`Index.doc_ids`).
"""

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

from bm25s import stopwords as bm25s_stopwords
import numpy as np
import Stemmer

from gr.data import beir
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact
from gr.index import word_terms

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
  return _folded_pieces(vocab, check_language(language))[0]


@functools.lru_cache(maxsize=8)
def _folded_pieces(vocab, language: str) -> tuple[np.ndarray, dict]:
  """(classes [vocab_size] int32, {fold: class}) of the vocabulary's pieces."""
  classes = np.zeros(vocab.vocab_size, np.int32)
  ids = vocab.text_token_ids()
  folds = {}
  if language:
    folds = _fold_pieces(classes, ids, vocab.word_pieces(ids), language)
  else:
    classes[ids] = ids
  classes.flags.writeable = False
  return classes, folds


def _fold_pieces(classes, ids, pieces, language: str) -> dict[str, int]:
  """Writes each piece's term into classes[id]: a whole word's stem (no
  term for a stopword), a continuation or non-word piece itself. Returns
  {whole word's stem: its class}."""
  stemmer = Stemmer.Stemmer(language)
  stopwords = set(STOPWORDS.get(language, ()))
  first: dict[str, int] = {}
  stems: dict[str, int] = {}
  for i, piece in zip(ids, pieces):
    word = piece.lower()
    if word.startswith("##") or not word.isalpha():
      classes[i] = first.setdefault(piece, i)
    elif word not in stopwords:
      stem = stemmer.stemWord(word)
      classes[i] = stems[stem] = first.setdefault(stem, i)
  return stems


@functools.lru_cache(maxsize=8)
def continuation_pieces(vocab) -> np.ndarray:
  """[base_size] bool: the text pieces that continue a word ('##ing'; a
  sentencepiece piece without the word mark); specials (PAD, EOS, [SEP])
  never do. Read-only."""
  ids = vocab.text_token_ids()
  out = np.zeros(vocab.base_size, bool)
  out[ids] = [p.startswith("##") for p in vocab.word_pieces(ids)]
  out.flags.writeable = False
  return out


@dataclasses.dataclass(frozen=True)
class TermFolding:
  """How token ids become terms: classes [base_size] int32 per piece,
  continuation [base_size] bool, and the whole-word table (word_codes [W]
  uint32, word_terms [W] int32, gr/index/word_terms.py) with its
  word_buckets for words not in it (0 = pieces as terms). num_terms: the
  term id space, [0, num_terms), the buckets last.
  """

  classes: np.ndarray
  continuation: np.ndarray
  word_codes: np.ndarray
  word_terms: np.ndarray
  num_terms: int
  word_buckets: int = 0

  def terms(self, tokens: np.ndarray) -> np.ndarray:
    """tokens [..., L] -> [..., L] each token's term (0: none)."""
    return word_terms.fold(
      np, np.asarray(tokens, np.int64), self.classes, self.continuation,
      self.word_codes, self.word_terms, self.word_buckets, self.num_terms,
    )  # fmt: skip

  def text_terms(self, vocab, texts: Sequence[str]) -> list[list[int]]:
    """Each text's terms: its whole (untrimmed) encoder input folded, in
    order (`vocab`: any version of the vocabulary the folding was made
    for; they share the text ids)."""
    return self.token_terms(encoded_texts(vocab, texts))

  def token_terms(self, token_lists) -> list[list[int]]:
    """Each token list's ([L] ids) terms, in order."""
    out = []
    for tokens in token_lists:
      out.append([int(t) for t in self.terms(tokens) if t])
    return out


def encoded_texts(vocab, texts: Sequence[str]) -> list[list[int]]:
  """Each text's whole (untrimmed) encoder input ids."""
  return [vocab.encode_inputs(text, 1 << 30) for text in texts]


def folding(vocab, term_sets: term_sets_lib.TermSets) -> TermFolding:
  """The folding `term_sets` were built with, over `vocab`'s pieces."""
  classes = term_classes(vocab, term_sets.language)[: vocab.base_size]
  return TermFolding(
    classes=classes,
    continuation=continuation_pieces(vocab),
    word_codes=term_sets.word_codes,
    word_terms=term_sets.word_terms,
    num_terms=term_sets.num_terms,
    word_buckets=term_sets.word_buckets,
  )


def word_folding(vocab, token_lists, language: str = "") -> TermFolding:
  """A folding with every word of several pieces as one term: for the
  words of `token_lists` (`encoded_texts`), its stem with a language (the class of a one-piece
  word of that stem, or a new id from base_size on), its spelling
  without; for other words, a bucket by its spelling (`word_terms`)."""
  language = check_language(language)
  classes, folds = _folded_pieces(vocab, language)
  continuation = continuation_pieces(vocab)
  stemmer = Stemmer.Stemmer(language) if language else None
  stopwords = set(STOPWORDS.get(language, ()))
  new: dict[str, int] = {}

  def term_of(word: str):
    word = word.lower()
    if word in stopwords:
      return None
    fold = stemmer.stemWord(word) if stemmer and word.isalpha() else word
    if fold in folds:
      return folds[fold]
    return new.setdefault(fold, vocab.base_size + len(new))

  codes, terms = word_terms.build_table(
    token_lists,
    continuation,
    lambda ids: "".join(p.removeprefix("##") for p in vocab.word_pieces(ids)),
    term_of,
  )
  return TermFolding(
    classes=classes[: vocab.base_size],
    continuation=continuation,
    word_codes=codes,
    word_terms=terms,
    num_terms=vocab.base_size + len(new) + word_terms.WORD_BUCKETS,
    word_buckets=word_terms.WORD_BUCKETS,
  )


def piece_folding(vocab, language: str = "") -> TermFolding:
  """The folding of pieces as terms (no word table)."""
  return TermFolding(
    classes=term_classes(vocab, language)[: vocab.base_size],
    continuation=continuation_pieces(vocab),
    word_codes=term_sets_lib.empty_word_codes(),
    word_terms=term_sets_lib.empty_word_terms(),
    num_terms=vocab.base_size,
  )


def query_terms(
  folding: TermFolding,
  tokens: np.ndarray,
  token_weights: Optional[np.ndarray] = None,
) -> np.ndarray:
  """[num_terms] occurrences of each term in one text's token ids [L]
  (ids past the vocabulary's pieces, such as docid tokens, are no term);
  with token_weights [L], each term's summed token weights instead."""
  terms = folding.terms(tokens)
  weights = np.ones(len(terms)) if token_weights is None else token_weights
  weights = np.asarray(weights, np.float64)
  return np.bincount(
    terms[terms > 0], weights=weights[terms > 0], minlength=folding.num_terms
  )


def document_terms(
  vocab, texts: Sequence[str], language: str = ""
) -> list[list[int]]:
  """Each text's terms with pieces as terms (`piece_folding`)."""
  return piece_folding(vocab, language).text_terms(vocab, texts)


def build_term_sets(
  index,
  corpus: Mapping[str, beir.Document],
  *,
  max_terms: int = 0,
  language: str = "",
  words: bool = False,
  k1: float = 1.5,
  b: float = 0.75,
) -> term_sets_lib.TermSets:
  """Term sets of `index`'s documents (their bodies, as BM25 indexes them)
  with statistics from them (max_terms 0 = every term; words: a word of
  several pieces is one term, `word_folding`)."""
  missing = [d for d in index.doc_ids if d not in corpus]
  if missing:
    raise ValueError(
      f"build_term_sets: {len(missing)} indexed documents are not in the "
      f"corpus, e.g. {missing[0]!r}"
    )
  vocab = index.vocab
  tokens = encoded_texts(vocab, [corpus[d].text for d in index.doc_ids])
  if words:
    fold = word_folding(vocab, tokens, language)
  else:
    fold = piece_folding(vocab, language)
  return term_sets_lib.build_term_sets(
    fold.token_terms(tokens),
    fold.num_terms,
    max_terms=max_terms,
    language=language,
    word_table=(fold.word_codes, fold.word_terms, fold.word_buckets),
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
  words: bool = False,
) -> term_sets_lib.TermSets:
  """The index's term sets, saved beside its current version in
  `index_dir` (so every checkpoint's artifact carries them); built once
  for these max_terms, language and words."""
  version_dir = artifact.current_version_dir(index_dir)
  sets = term_sets_lib.TermSets.load(version_dir)
  wanted = (max_terms, language, words)
  if sets is None or (sets.max_terms, sets.language, sets.words) != wanted:
    sets = build_term_sets(
      index, corpus, max_terms=max_terms, language=language, words=words
    )
    sets.save(version_dir)
  return sets
