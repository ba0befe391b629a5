"""Docid schemes: how documents are named. Look a scheme up by name.

Example:

  scheme = get_scheme("semantic", k=10, c=10)
  table = scheme.assign(corpus)              # DocidTable
  table = scheme.assign_new(table, new_docs)  # existing docids unchanged
  scheme = scheme_for_table(table)           # same scheme, from table.config
"""

from typing import Any

from gr.docids.atomic import AtomicScheme
from gr.docids.base import DocidScheme, DocidTable, DocidTableError
from gr.docids.multi import MultiScheme
from gr.docids.naive import NaiveScheme
from gr.docids.rq import RQScheme
from gr.docids.semantic import SemanticScheme
from gr.docids.text import TextScheme

SCHEMES = {
  cls.name: cls
  for cls in (
    NaiveScheme,
    AtomicScheme,
    SemanticScheme,
    RQScheme,
    TextScheme,
    MultiScheme,
  )
}


def get_scheme(name: str, **kwargs: Any) -> DocidScheme:
  """A scheme object by name ("naive", "atomic", "semantic", "rq", "text",
  "multi")."""
  if name not in SCHEMES:
    raise ValueError(f"unknown docid scheme {name!r}; known: {sorted(SCHEMES)}")
  return SCHEMES[name](**kwargs)


def scheme_for_table(table: DocidTable, **extra: Any) -> DocidScheme:
  """The scheme that built `table` (extra: e.g. embedder=...)."""
  return get_scheme(table.scheme, **{**table.config, **extra})


__all__ = [
  "AtomicScheme",
  "DocidScheme",
  "DocidTable",
  "DocidTableError",
  "MultiScheme",
  "NaiveScheme",
  "RQScheme",
  "SCHEMES",
  "SemanticScheme",
  "TextScheme",
  "get_scheme",
  "scheme_for_table",
]
