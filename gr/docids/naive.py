"""DSI "naive string" docids: an integer written as digit tokens, `<1> <2> <3>`.

Integers are given in corpus order from 0 (or as a seeded permutation of
0..n-1). `assign_new` continues after the largest integer ever given out,
including removed documents' (retired) ones, so an integer is never reused.
"""

import dataclasses
import re
from typing import ClassVar, Iterable, Mapping

import numpy as np

from gr.data.beir import Document
from gr.docids import base

DIGIT_TOKENS = tuple(f"<{i}>" for i in range(10))
_NAIVE_DOCID = re.compile(r"<\d>( <\d>)*")
_NEXT_NUMBER = "naive.next_number"  # DocidTable.memo key


def number_to_docid(number: int) -> str:
  """123 -> "<1> <2> <3>"."""
  return " ".join(f"<{digit}>" for digit in str(number))


def docid_to_number(docid: str) -> int | None:
  """ "<1> <2> <3>" -> 123; None for strings that are not naive docids."""
  if not _NAIVE_DOCID.fullmatch(docid):
    return None
  return int(docid.replace("<", "").replace(">", "").replace(" ", ""))


def next_free_number(docids: Iterable[str]) -> int:
  """1 + the largest number among naive docids (0 if there are none)."""
  numbers = (docid_to_number(s) for s in docids)
  return 1 + max((n for n in numbers if n is not None), default=-1)


@dataclasses.dataclass(frozen=True)
class NaiveScheme:
  """Integers as digit tokens; `shuffle` permutes them under `seed`."""

  name: ClassVar[str] = "naive"
  shuffle: bool = False
  seed: int = 0

  def assign(self, corpus: Mapping[str, Document]) -> base.DocidTable:
    numbers = np.arange(len(corpus))
    if self.shuffle:
      numbers = np.random.default_rng(self.seed).permutation(len(corpus))
    docids = {d: (number_to_docid(int(n)),) for d, n in zip(corpus, numbers)}
    return base.DocidTable(
      self.name, docids, DIGIT_TOKENS, base.scheme_config(self)
    )

  def assign_new(
    self, table: base.DocidTable, new_docs: Mapping[str, Document]
  ) -> base.DocidTable:
    base.check_scheme(table, self.name)
    start = table.memo(
      _NEXT_NUMBER, lambda: next_free_number(table.taken_docids())
    )
    docids = {d: (number_to_docid(start + i),) for i, d in enumerate(new_docs)}
    return table.extend(docids).remember(_NEXT_NUMBER, start + len(docids))
