"""A synthetic BEIR corpus of any size, with planted known-item queries.

Bodies are made-up words (syllable strings, so sentencepiece and BM25 see
word-like text) drawn from a Zipf distribution over a common vocabulary.
A planted document also holds `rare_per_doc` rare words (a separate
vocabulary, each word shared by a few planted documents at most) whose
combination no other document holds; its query repeats that combination
plus two of its common words, shuffled. So each planted query has exactly
one document holding all its rare words: a known item.

Embeddings come from `HashingEmbedder`, a stand-in for the encoder a user
would run on another machine: a document's vector is the normalised sum of
one fixed random vector per word (seeded by the word's crc32), so
documents that share words lie near each other, and the same embedder
places documents added later (online adds) in the same space.

`write_synthetic_beir` writes the folder (corpus.jsonl, queries.jsonl,
qrels/{train,dev,test}.tsv) and the embeddings file (embeddings.npz,
gr/data/embeddings_file.py) streaming, in chunks: memory is O(chunk +
planted documents), not O(corpus).
"""

import dataclasses
import os
import zlib
from typing import Iterator, Sequence

import numpy as np

from gr import atomic_io
from gr.data import beir
from gr.data import embeddings_file

_ONSETS = "b d f g k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()
_RARE_ONSETS = "qu x y w j".split()
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate.

  Attributes:
    num_docs: N, documents in the corpus (ids d0000000, ...).
    queries: planted queries per split (train, dev, test); each names its
      own planted document.
    words_per_doc: common words in a body.
    common_vocab: size of the common vocabulary (Zipf over it).
    rare_per_doc: rare words planted in a document and repeated by its query.
    dim: D of the embeddings.
    seed: same spec, same files.
  """

  num_docs: int
  queries: tuple[int, int, int] = (2000, 100, 1000)
  words_per_doc: int = 30
  common_vocab: int = 20000
  rare_per_doc: int = 3
  dim: int = 64
  seed: int = 0

  def __post_init__(self):
    if sum(self.queries) > self.num_docs:
      raise ValueError(
        f"{sum(self.queries)} planted queries need at least as many "
        f"documents, got num_docs={self.num_docs}"
      )
    if self.rare_per_doc < 2 or self.words_per_doc < 2:
      raise ValueError("need rare_per_doc >= 2 and words_per_doc >= 2")


def make_words(count: int, onsets: Sequence[str], syllables: int) -> list[str]:
  """`count` distinct words of `syllables` onset+vowel pairs (then more)."""
  base = len(onsets) * len(_VOWELS)
  words = []
  for i in range(count):
    parts, n = [], i
    for _ in range(syllables):
      n, r = divmod(n, base)
      parts.append(onsets[r // len(_VOWELS)] + _VOWELS[r % len(_VOWELS)])
    while n:
      n, r = divmod(n - 1, base)
      parts.append(onsets[r // len(_VOWELS)] + _VOWELS[r % len(_VOWELS)])
    words.append("".join(parts))
  return words


def doc_id(i: int) -> str:
  return f"d{i:07d}"


class HashingEmbedder:
  """Texts -> [n, dim] unit vectors: the normalised sum of per-word random
  vectors (each seeded by crc32(word) and `seed`). `embed` is the embedder
  protocol gr/docids/semantic.py uses."""

  def __init__(self, dim: int = 64, seed: int = 0):
    self.dim, self.seed = dim, seed
    self._index: dict[str, int] = {}
    self._rows: list[np.ndarray] = []
    self._matrix = np.zeros((0, dim), np.float32)

  def word_vector(self, word: str) -> np.ndarray:
    """[dim] float32, the same for the same word, dim and seed."""
    key = zlib.crc32(word.encode()) ^ (self.seed * 0x9E3779B1 & 0xFFFFFFFF)
    row = np.random.default_rng(key).standard_normal(self.dim)
    return row.astype(np.float32)

  def _word_index(self, word: str) -> int:
    index = self._index.get(word)
    if index is None:
      index = self._index[word] = len(self._rows)
      self._rows.append(self.word_vector(word))
    return index

  def embed(self, texts: Sequence[str], batch_size: int = 0) -> np.ndarray:
    """[len(texts), dim] float32 unit rows (zero for a text of no words)."""
    del batch_size  # The embedder protocol's argument; nothing to batch.
    words, starts = [], []
    for text in texts:
      starts.append(len(words))
      words.extend(self._word_index(w) for w in text.split())
    if len(self._matrix) < len(self._rows):
      self._matrix = np.stack(self._rows)  # [words seen, dim]
    out = np.zeros((len(texts), self.dim), np.float32)
    lengths = np.diff(starts + [len(words)])
    some = lengths > 0
    if words:
      sums = np.add.reduceat(self._matrix[words], np.asarray(starts)[some])
      out[some] = sums
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


@dataclasses.dataclass(frozen=True)
class Planted:
  """The planted documents: doc index -> rare words, and the query texts."""

  docs: np.ndarray  # [P] document indices, split order (train, dev, test)
  rare: list[tuple[str, ...]]  # [P] each document's rare words
  queries: dict[str, str]  # query id -> text, P queries
  qrels: dict[str, dict[str, dict[str, int]]]  # split -> qid -> {doc: 1}


def plant(spec: SyntheticSpec, rng: np.random.Generator) -> Planted:
  """Chooses the planted documents and their unique rare-word combinations
  (queries filled in by `write_synthetic_beir`, which knows the bodies)."""
  total = sum(spec.queries)
  docs = rng.choice(spec.num_docs, size=total, replace=False)
  # Each rare word is shared by about 3 planted documents (at least 30 words).
  vocab = make_words(max(30, total), _RARE_ONSETS, 3)
  seen, rare = set(), []
  while len(rare) < total:
    words = tuple(sorted(rng.choice(len(vocab), spec.rare_per_doc, False)))
    if words not in seen:
      seen.add(words)
      rare.append(tuple(vocab[w] for w in words))
  return Planted(docs, rare, {}, {split: {} for split in SPLITS})


def _bodies(
  spec: SyntheticSpec, common: list[str], start: int, stop: int, seed: int
) -> list[list[str]]:
  """Bodies of documents start..stop-1 as word lists (Zipf over `common`)."""
  rng = np.random.default_rng([spec.seed, seed, start])
  ranks = rng.zipf(1.2, size=(stop - start, spec.words_per_doc))
  ids = (ranks - 1) % len(common)  # [chunk, words]
  return [[common[w] for w in row] for row in ids]


def _query(rng: np.random.Generator, rare: tuple[str, ...], body: list[str]):
  """The planted query: the rare words and two of the body's own words."""
  words = list(rare) + [str(w) for w in rng.choice(body, 2, replace=False)]
  rng.shuffle(words)
  return " ".join(words)


def iter_documents(
  spec: SyntheticSpec, planted: Planted, chunk: int = 50_000
) -> Iterator[beir.Document]:
  """Every document in id order; planted ones get their rare words (at a
  random place) and their query written into `planted`."""
  common = make_words(spec.common_vocab, _ONSETS, 2)
  where = {int(d): n for n, d in enumerate(planted.docs)}
  split_of = np.repeat(np.arange(3), spec.queries)
  rng = np.random.default_rng([spec.seed, 1])
  for start in range(0, spec.num_docs, chunk):
    stop = min(start + chunk, spec.num_docs)
    for i, words in enumerate(_bodies(spec, common, start, stop, 0), start):
      n = where.get(i)
      if n is not None:
        query_id = f"q{n:07d}"
        planted.queries[query_id] = _query(rng, planted.rare[n], words)
        planted.qrels[SPLITS[split_of[n]]][query_id] = {doc_id(i): 1}
        at = int(rng.integers(len(words) + 1))
        words = words[:at] + list(planted.rare[n]) + words[at:]
      yield beir.Document(doc_id(i), "", " ".join(words))


def write_synthetic_beir(folder: str, spec: SyntheticSpec) -> dict:
  """Writes the BEIR folder and folder/embeddings.npz; returns a summary.

  The corpus is written (atomically) while its embeddings [N, dim] are
  filled in chunk by chunk; queries and qrels are written after it.
  """
  planted = plant(spec, np.random.default_rng([spec.seed, 0]))
  embedder = HashingEmbedder(spec.dim, spec.seed)
  vectors = np.zeros((spec.num_docs, spec.dim), np.float32)  # [N, D]
  batch: list[beir.Document] = []

  def flush():
    first = int(batch[0].doc_id[1:])
    vectors[first : first + len(batch)] = embedder.embed(
      [d.text for d in batch]
    )
    batch.clear()

  def documents():
    for doc in iter_documents(spec, planted):
      batch.append(doc)
      if len(batch) == 10_000:
        flush()
      yield doc
    if batch:
      flush()

  beir.write_corpus(os.path.join(folder, "corpus.jsonl"), documents())
  beir.write_queries(os.path.join(folder, "queries.jsonl"), planted.queries)
  for split in SPLITS:
    path = os.path.join(folder, "qrels", f"{split}.tsv")
    beir.write_qrels(path, planted.qrels[split])
  embeddings_file.write_embeddings(
    os.path.join(folder, "embeddings.npz"),
    [doc_id(i) for i in range(spec.num_docs)],
    vectors,
  )
  summary = {**dataclasses.asdict(spec), "planted": len(planted.queries)}
  atomic_io.write_json(os.path.join(folder, "synthetic.json"), summary)
  return summary


def fresh_documents(
  count: int, *, words_per_doc: int = 30, seed: int = 1, prefix: str = "new"
) -> tuple[list[beir.Document], dict[str, str]]:
  """(documents, {doc_id: query}) to add to a synthetic corpus later.

  Bodies are common words of the corpus's vocabulary plus three words no
  corpus document holds (onsets h, c), unique to the document; its query
  is those three words. Ids are `{prefix}{i:07d}`.
  """
  rng = np.random.default_rng([seed, 2])
  common = make_words(20000, _ONSETS, 2)
  fresh = make_words(3 * count, ["h", "c"], 4)
  docs, queries = [], {}
  for i in range(count):
    ranks = rng.zipf(1.2, size=words_per_doc)
    words = [common[(r - 1) % len(common)] for r in ranks]
    rare = fresh[3 * i : 3 * i + 3]
    at = int(rng.integers(len(words) + 1))
    doc = beir.Document(
      f"{prefix}{i:07d}", "", " ".join(words[:at] + rare + words[at:])
    )
    docs.append(doc)
    queries[doc.doc_id] = " ".join(rare)
  return docs, queries
