"""Term-set docids: each document as its top-m terms with BM25 impacts.

The lexical docid of PAG: a document is the set of its m highest-impact
terms (token ids of the model's input vocabulary), each with the impact

  impact(t, d) = idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
  idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

(Lucene's BM25, bm25s's default). A query scores a document by the sum,
over the document's terms, of the query's weight for the term times its
impact: with every term kept and weight = occurrences in the query, that
is BM25 over the same tokens (tests/test_term_sets.py checks it against
bm25s).

Terms are ids of a vocabulary (gr/index/lexicon.py folds pieces to terms;
`language` records how, so that later documents and queries are folded the
same way).

Corpus statistics rule: frozen at indexing time. A document added later
gets its set from the frozen N, avgdl and df (a term unseen at indexing
has df 0, the largest idf); existing sets never change, so an online add
touches one row.

Shapes: N documents, M = the most terms any set keeps (<= max_terms),
V = vocabulary size the token ids index.
"""

import dataclasses
import functools
import io
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from gr import atomic_io

FORMAT = "gr.term_sets.v1"
SENTINEL = 0xFFFFFFFF  # the word table's last code (gr/index/word_terms.py)


def empty_word_codes() -> np.ndarray:
  """[1] uint32: a word table of no words (the sentinel alone)."""
  return np.array([SENTINEL], np.uint32)


def empty_word_terms() -> np.ndarray:
  """[1] int32: the sentinel's term, none."""
  return np.zeros(1, np.int32)


FILE_NAME = "term_sets.npz"


@dataclasses.dataclass(frozen=True)
class CorpusStats:
  """What impacts are computed from (frozen at indexing time)."""

  num_docs: int
  avg_length: float
  document_frequency: np.ndarray  # [V] int64
  k1: float = 1.5
  b: float = 0.75

  def idf(self, terms: np.ndarray) -> np.ndarray:
    """Lucene idf of token ids `terms` [n] (ids past V: df 0)."""
    vocab = len(self.document_frequency)
    df = np.where(
      terms < vocab, self.document_frequency[np.minimum(terms, vocab - 1)], 0
    )
    return np.log1p((self.num_docs - df + 0.5) / (df + 0.5))


def corpus_stats(
  token_lists: Sequence[Sequence[int]],
  vocab_size: int,
  *,
  k1: float = 1.5,
  b: float = 0.75,
) -> CorpusStats:
  """N, average length and df over documents given as term id lists."""
  df = np.zeros(vocab_size, np.int64)
  for tokens in token_lists:
    df[np.unique(np.asarray(tokens, np.int64))] += 1
  lengths = [len(tokens) for tokens in token_lists]
  return CorpusStats(
    num_docs=len(token_lists),
    avg_length=float(np.mean(lengths)) if lengths else 1.0,
    document_frequency=df,
    k1=k1,
    b=b,
  )


def term_set(
  tokens: Sequence[int], stats: CorpusStats, max_terms: int
) -> tuple[np.ndarray, np.ndarray]:
  """One document's (terms [m], impacts [m]), best first, m <= max_terms."""
  terms, tf = np.unique(np.asarray(tokens, np.int64), return_counts=True)
  if not len(terms):
    return np.zeros(0, np.int32), np.zeros(0, np.float32)
  norm = stats.k1 * (
    1 - stats.b + stats.b * len(tokens) / max(stats.avg_length, 1e-9)
  )
  impacts = stats.idf(terms) * tf / (tf + norm)
  order = np.argsort(-impacts, kind="stable")[: max_terms or None]
  return terms[order].astype(np.int32), impacts[order].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TermSets:
  """Every document's term set, rows in the index's document order.

  terms [N, M] int32 and impacts [N, M] float32; padding has term 0 and
  impact 0 (it adds nothing to any score).
  """

  terms: np.ndarray
  impacts: np.ndarray
  stats: CorpusStats
  max_terms: int
  language: str = ""  # how text was folded to terms ('' = pieces as is)
  # The frozen whole-word table (gr/index/word_terms.py): codes [W] uint32
  # sorted, terms [W] int32, and the buckets of other words (the last
  # word_buckets term ids); the empty table and 0 = pieces as terms.
  word_codes: np.ndarray = dataclasses.field(default_factory=empty_word_codes)
  word_terms: np.ndarray = dataclasses.field(default_factory=empty_word_terms)
  word_buckets: int = 0

  def __len__(self) -> int:
    return len(self.terms)

  @property
  def words(self) -> bool:
    """Whether a word of several pieces is one term."""
    return self.word_buckets > 0

  @property
  def num_terms(self) -> int:
    """The term id space [0, num_terms) of these sets' folding."""
    return len(self.stats.document_frequency)

  def appended(self, token_lists: Iterable[Sequence[int]]) -> "TermSets":
    """New documents' rows after these, from the frozen statistics."""
    rows = [term_set(t, self.stats, self.max_terms) for t in token_lists]
    return self.with_rows([*self.rows(), *rows])

  def with_rows(self, rows) -> "TermSets":
    """These statistics and folding over other rows [(terms, impacts)]."""
    stacked = _stacked(rows, self.stats, self.max_terms)
    return dataclasses.replace(
      self, terms=stacked.terms, impacts=stacked.impacts
    )

  def rows(self) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per document (terms, impacts) without padding."""
    keep = self.impacts > 0
    return [(t[k], i[k]) for t, i, k in zip(self.terms, self.impacts, keep)]

  def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-padding entries: (terms [P], impacts [P], documents [P])."""
    return self._flat

  @functools.cached_property
  def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    documents, slots = np.nonzero(self.impacts > 0)
    return (
      self.terms[documents, slots],
      self.impacts[documents, slots],
      documents.astype(np.int32),
    )

  def document_scores(self, weights: np.ndarray) -> np.ndarray:
    """[N] each document's sum over its set of weights[term] * impact, for
    query term weights [V] (numpy, float64)."""
    terms, impacts, documents = self.flat()
    return np.bincount(
      documents,
      weights=np.asarray(weights, np.float64)[terms] * impacts,
      minlength=len(self),
    )

  def save(self, directory: str) -> str:
    """Writes directory/term_sets.npz atomically; returns the path."""
    buffer = io.BytesIO()
    np.savez(
      buffer,
      format=np.array(FORMAT),
      language=np.array(self.language),
      word_codes=self.word_codes,
      word_terms=self.word_terms,
      word_buckets=np.array(self.word_buckets),
      terms=self.terms,
      impacts=self.impacts,
      document_frequency=self.stats.document_frequency,
      scalars=np.array(
        [self.stats.num_docs, self.stats.avg_length, self.stats.k1,
         self.stats.b, self.max_terms],
        np.float64,
      ),
    )  # fmt: skip
    path = os.path.join(directory, FILE_NAME)
    atomic_io.write_bytes(path, buffer.getvalue())
    return path

  @classmethod
  def load(cls, directory: str) -> Optional["TermSets"]:
    """The sets saved in `directory`, or None if it has none."""
    path = os.path.join(directory, FILE_NAME)
    if not os.path.exists(path):
      return None
    with np.load(path) as data:
      if "format" not in data or str(data["format"]) != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
      num_docs, avg_length, k1, b, max_terms = data["scalars"].tolist()
      stats = CorpusStats(
        int(num_docs), avg_length, data["document_frequency"], k1, b
      )
      language = str(data["language"]) if "language" in data else ""
      words = {k: data[k] for k in ("word_codes", "word_terms") if k in data}
      if "word_buckets" in data:
        words["word_buckets"] = int(data["word_buckets"])
      return cls(
        data["terms"], data["impacts"], stats, int(max_terms), language,
        **words,
      )  # fmt: skip


def _stacked(
  rows, stats: CorpusStats, max_terms: int, language: str = "", **words
) -> TermSets:
  """Rows of (terms [m], impacts [m]) padded to [N, M]."""
  width = max((len(t) for t, _ in rows), default=0) or 1
  terms = np.zeros((len(rows), width), np.int32)
  impacts = np.zeros((len(rows), width), np.float32)
  for i, (t, w) in enumerate(rows):
    terms[i, : len(t)], impacts[i, : len(w)] = t, w
  return TermSets(terms, impacts, stats, max_terms, language, **words)


def build_term_sets(
  token_lists: Sequence[Sequence[int]],
  vocab_size: int,
  *,
  max_terms: int = 0,
  language: str = "",
  word_table: Optional[tuple[np.ndarray, np.ndarray, int]] = None,
  k1: float = 1.5,
  b: float = 0.75,
) -> TermSets:
  """Term sets of documents given as term id lists in [0, vocab_size)
  (max_terms 0 = all); `language` and word_table (codes [W], terms [W],
  buckets) are recorded, not applied (the ids are terms already)."""
  stats = corpus_stats(token_lists, vocab_size, k1=k1, b=b)
  rows = [term_set(t, stats, max_terms) for t in token_lists]
  words = {}
  if word_table is not None:
    words = dict(zip(("word_codes", "word_terms", "word_buckets"), word_table))
  return _stacked(rows, stats, max_terms, language, **words)
