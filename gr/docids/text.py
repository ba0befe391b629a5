"""Text docids: a few words of the document body, e.g. "merkel refugees berlin".

Only `Document.text` is used (the title is the test query). Words are the
[a-z0-9]+ runs of the accent-stripped, lowercased body, minus English
stopwords (bm25s' NLTK list). Two methods:

  * "tfidf": the `num_words` words with the highest tf * idf, idf =
    ln((1 + N) / (1 + df)) + 1 over the corpus given to `assign`; listed by
    score or, with order="appearance", by first position in the body.
  * "prefix": the first `num_words` distinct words of the body.

A docid already taken (by another document, or retired) is made unique by
appending the document's next candidate words, then a counter word ("2",
"3", ...). A body with no usable words is named "empty" (+ counter).
`assign_new` scores new documents with the idf statistics stored at `assign`
time (arrays idf_words [V], idf_values [V], idf_num_docs []), so existing
docids never change. Docids have variable length and no reserved tokens.
"""

import collections
import dataclasses
import math
import re
import unicodedata
from typing import AbstractSet, ClassVar, Mapping, Sequence

import bm25s.stopwords
import numpy as np

from gr.data.beir import Document
from gr.docids import base
from gr.docids import views

STOPWORDS = frozenset(bm25s.stopwords.STOPWORDS_EN_PLUS)
EMPTY_WORD = "empty"
_WORD = re.compile(r"[a-z0-9]+")


def body_words(text: str) -> list[str]:
  """Lowercased [a-z0-9]+ words of `text` in order, stopwords removed."""
  folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore")
  words = _WORD.findall(folded.decode().lower())
  return [w for w in words if w not in STOPWORDS]


@dataclasses.dataclass(frozen=True)
class Idf:
  """Inverse document frequencies; unseen words get the maximum idf."""

  num_docs: int
  values: Mapping[str, float]

  @classmethod
  def fit(cls, documents: Sequence[Sequence[str]]) -> "Idf":
    df = collections.Counter(w for words in documents for w in set(words))
    n = len(documents)
    return cls(n, {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()})

  def __call__(self, word: str) -> float:
    return self.values.get(word, math.log(1 + self.num_docs) + 1)

  def to_arrays(self) -> dict[str, np.ndarray]:
    words = sorted(self.values)
    return {
      "idf_words": base.string_array(words),
      "idf_values": np.array([self.values[w] for w in words], np.float64),
      "idf_num_docs": np.array(self.num_docs, np.int64),
    }

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "Idf":
    try:
      words, values = (
        arrays["idf_words"].tolist(),
        arrays["idf_values"].tolist(),
      )
      return cls(int(arrays["idf_num_docs"]), dict(zip(words, values)))
    except KeyError as e:
      raise base.DocidTableError(f"text docid table lacks array {e}") from e


def tfidf_ranking(words: Sequence[str], idf: Idf) -> list[str]:
  """Distinct words by tf * idf, descending; ties by first position."""
  counts = collections.Counter(words)
  first = {w: i for i, w in reversed(list(enumerate(words)))}
  return sorted(counts, key=lambda w: (-counts[w] * idf(w), first[w]))


def unique_docid(
  candidates: Sequence[str], num_words: int, taken: AbstractSet[str]
) -> str:
  """The first `num_words` candidates, lengthened until not in `taken`."""
  chosen = list(candidates[:num_words]) or [EMPTY_WORD]
  extra = list(candidates[num_words:])
  while " ".join(chosen) in taken and extra:
    chosen.append(extra.pop(0))
  docid, counter = " ".join(chosen), 2
  while docid in taken:
    docid = f"{' '.join(chosen)} {counter}"
    counter += 1
  return docid


@dataclasses.dataclass(frozen=True)
class TextScheme:
  """Docids made of body words (method "tfidf" or "prefix")."""

  name: ClassVar[str] = "text"
  method: str = "tfidf"
  num_words: int = 3
  order: str = "score"

  def __post_init__(self):
    if self.method not in ("tfidf", "prefix"):
      raise ValueError(
        f"method must be 'tfidf' or 'prefix', got {self.method!r}"
      )
    if self.order not in ("score", "appearance"):
      raise ValueError(
        f"order must be 'score' or 'appearance', got {self.order!r}"
      )
    if self.num_words < 1:
      raise ValueError(f"num_words must be >= 1, got {self.num_words}")

  def assign(
    self,
    corpus: Mapping[str, Document],
    *,
    taken: AbstractSet[str] = frozenset(),
  ) -> base.DocidTable:
    """`taken`: docids that must be avoided too (e.g. other schemes' ids)."""
    words = {d: body_words(doc.text) for d, doc in corpus.items()}
    idf = Idf.fit(list(words.values()))
    docids = self._name_all(words, idf, set(taken))
    return base.DocidTable(
      self.name, docids, (), base.scheme_config(self), arrays=idf.to_arrays()
    )

  def assign_new(
    self,
    table: base.DocidTable,
    new_docs: Mapping[str, Document],
    *,
    taken: AbstractSet[str] = frozenset(),
  ) -> base.DocidTable:
    base.check_scheme(table, self.name)
    base.check_new_docs(table, new_docs)
    words = {d: body_words(doc.text) for d, doc in new_docs.items()}
    idf = Idf.from_arrays(table.arrays)
    avoid = table.taken_docids()
    avoid.update(taken)
    docids = self._name_all(words, idf, avoid)
    return table.extend(docids)

  def _name_all(
    self,
    words: Mapping[str, list[str]],
    idf: Idf,
    taken: "set[str] | views.TakenDocids",
  ) -> dict[str, tuple[str]]:
    """Names documents in order; each new docid joins `taken`."""
    docids = {}
    for doc_id, doc_words in words.items():
      docid = unique_docid(
        self._candidates(doc_words, idf), self.num_words, taken
      )
      taken.add(docid)
      docids[doc_id] = (docid,)
    return docids

  def _candidates(self, words: Sequence[str], idf: Idf) -> list[str]:
    """Distinct words in docid order: the first num_words form the docid."""
    if self.method == "prefix":
      return list(dict.fromkeys(words))
    ranked = tfidf_ranking(words, idf)
    if self.order == "appearance":
      first = {w: i for i, w in reversed(list(enumerate(words)))}
      head = sorted(ranked[: self.num_words], key=first.__getitem__)
      return head + ranked[self.num_words :]
    return ranked
