"""Pseudo-queries cut from a document's own text, and their JSONL files.

Two kinds, both seeded and deterministic, both from the body only (never
the title, which is the query in known-item benchmarks):

  span_queries:      n random spans of min_words..max_words words,
  sentence_queries:  sentences of the body (the first n, or n at random).

`PseudoQueries` maps doc_id -> list of query strings; model-generated
(doc2query) queries use the same container and file format: one JSON object
per line, `{"_id": doc_id, "queries": [...]}`.
"""

import hashlib
import json
import random
import re
from typing import Iterable, Mapping, Optional

from gr import atomic_io

PseudoQueries = Mapping[str, list[str]]

# A sentence ends at . ! or ? followed by whitespace (or at a line break).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _derived_seed(seed: int, key: str) -> int:
  """A 64-bit seed from (seed, key), stable across processes."""
  digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big")


def _rng(seed: int, key: str) -> random.Random:
  return random.Random(_derived_seed(seed, key))


def span_queries(
  text: str, n: int, *, min_words: int = 4, max_words: int = 16, seed: int = 0
) -> list[str]:
  """n spans of consecutive words, length uniform in [min_words, max_words].

  A text shorter than the drawn length gives the whole text as its span; an
  empty text gives no queries. Same arguments -> same spans.
  """
  if not 1 <= min_words <= max_words:
    raise ValueError(
      f"need 1 <= min_words <= max_words, got {min_words}, {max_words}"
    )
  words = text.split()
  if not words or n <= 0:
    return []
  rng = _rng(seed, text)
  spans = []
  for _ in range(n):
    length = min(rng.randint(min_words, max_words), len(words))
    start = rng.randint(0, len(words) - length)
    spans.append(" ".join(words[start : start + length]))
  return spans


def split_sentences(text: str) -> list[str]:
  """The non-empty sentences of `text`, whitespace collapsed."""
  pieces = (" ".join(piece.split()) for piece in _SENTENCE_END.split(text))
  return [piece for piece in pieces if piece]


def sentence_queries(
  text: str, n: int, *, seed: Optional[int] = None
) -> list[str]:
  """The first n sentences, or (with a seed) n distinct ones at random.

  Random picks keep document order. Fewer sentences than n gives them all.
  """
  sentences = split_sentences(text)
  if seed is None or n >= len(sentences):
    return sentences[: max(n, 0)]
  picked = sorted(_rng(seed, text).sample(range(len(sentences)), n))
  return [sentences[i] for i in picked]


def build_pseudo_queries(
  documents: Iterable,
  *,
  num_spans: int = 0,
  num_sentences: int = 0,
  min_words: int = 4,
  max_words: int = 16,
  seed: int = 0,
) -> dict[str, list[str]]:
  """Pseudo-queries for each Document (uses `doc.text` only, never title).

  Each document's generator is seeded from (seed, doc_id), so adding a
  document does not change the others' queries. Sentences come first, then
  spans; documents with no queries are left out.
  """
  queries = {}
  for doc in documents:
    doc_seed = _derived_seed(seed, doc.doc_id)
    found = sentence_queries(doc.text, num_sentences) + span_queries(
      doc.text,
      num_spans,
      min_words=min_words,
      max_words=max_words,
      seed=doc_seed,
    )
    if found:
      queries[doc.doc_id] = found
  return queries


def write_pseudo_queries(path: str, queries: PseudoQueries) -> None:
  """Writes one `{"_id", "queries"}` JSON line per doc, atomically."""
  with atomic_io.atomic_open(path, "w") as f:
    for doc_id, doc_queries in queries.items():
      record = {"_id": doc_id, "queries": list(doc_queries)}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_pseudo_queries(path: str) -> dict[str, list[str]]:
  """Reads a file written by `write_pseudo_queries`.

  Raises:
    ValueError: naming the file and line of a malformed record or a doc_id
      that appears twice.
  """
  queries = {}
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      doc_id, doc_queries = _parse_record(line, f"{path}:{line_number}")
      if doc_id in queries:
        raise ValueError(f"{path}:{line_number}: doc_id {doc_id!r} repeated")
      queries[doc_id] = doc_queries
  return queries


def _parse_record(line: str, where: str) -> tuple[str, list[str]]:
  """One JSONL line -> (doc_id, queries); `where` is 'file:line'."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e})") from e
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object")
  doc_id, doc_queries = record.get("_id"), record.get("queries")
  if not isinstance(doc_id, str) or not doc_id:
    raise ValueError(f"{where}: field '_id' must be a non-empty string")
  if not isinstance(doc_queries, list) or not all(
    isinstance(q, str) for q in doc_queries
  ):
    raise ValueError(f"{where}: field 'queries' must be a list of strings")
  return doc_id, doc_queries
