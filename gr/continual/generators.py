"""Pseudo-query generators of continual indexing: {doc_id: [query, ...]}.

Body sentences and spans (`TextPseudoQueries`, gr/queries/pseudo_queries.py)
or what a doc2query model sampled (`StoredPseudoQueries`,
gr/queries/doc2query.py via scripts/generate_queries.py).
"""

import dataclasses
import functools
from typing import Mapping, Protocol

from gr.data import beir
from gr.queries import pseudo_queries as pseudo_lib


class PseudoQueryGenerator(Protocol):
  """Pseudo-queries for documents: {doc_id: [query, ...]}."""

  def generate(
    self, documents: Mapping[str, beir.Document]
  ) -> dict[str, list[str]]: ...


@dataclasses.dataclass(frozen=True)
class TextPseudoQueries:
  """Sentences and random spans of each body (gr/queries/pseudo_queries.py)."""

  num_sentences: int = 1
  num_spans: int = 2
  seed: int = 0

  def generate(
    self, documents: Mapping[str, beir.Document]
  ) -> dict[str, list[str]]:
    return pseudo_lib.build_pseudo_queries(
      documents.values(),
      num_spans=self.num_spans,
      num_sentences=self.num_sentences,
      seed=self.seed,
    )


@dataclasses.dataclass(frozen=True)
class StoredPseudoQueries:
  """Pseudo-queries read from a file (scripts/generate_queries.py): what a
  doc2query model sampled from each body, seeded per document, so looking
  them up equals generating them again. Documents absent get none."""

  path: str

  def generate(
    self, documents: Mapping[str, beir.Document]
  ) -> dict[str, list[str]]:
    stored = _read_pseudo_queries(self.path)
    return {d: list(stored[d]) for d in documents if d in stored}


@functools.lru_cache(maxsize=4)
def _read_pseudo_queries(path: str) -> dict[str, list[str]]:
  return pseudo_lib.read_pseudo_queries(path)
