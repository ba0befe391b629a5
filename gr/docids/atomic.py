"""Atomic docids: one reserved token per document, `<d_N>`.

N counts documents in corpus order. `reserved_tokens` lists every token ever
handed out (removal keeps them), so `assign_new` continues at
N = len(reserved_tokens) and the model's embedding rows for new tokens are
appended after the existing ones.
"""

import dataclasses
from typing import ClassVar, Mapping

from gr.data.beir import Document
from gr.docids import base


def atomic_token(number: int) -> str:
  return f"<d_{number}>"


@dataclasses.dataclass(frozen=True)
class AtomicScheme:
  """One `<d_N>` token per document."""

  name: ClassVar[str] = "atomic"

  def assign(self, corpus: Mapping[str, Document]) -> base.DocidTable:
    tokens = tuple(atomic_token(i) for i in range(len(corpus)))
    docids = {d: (token,) for d, token in zip(corpus, tokens)}
    return base.DocidTable(self.name, docids, tokens, base.scheme_config(self))

  def assign_new(
    self, table: base.DocidTable, new_docs: Mapping[str, Document]
  ) -> base.DocidTable:
    base.check_scheme(table, self.name)
    start = len(table.reserved_tokens)
    tokens = [atomic_token(start + i) for i in range(len(new_docs))]
    return table.extend({d: (t,) for d, t in zip(new_docs, tokens)}, tokens)
