"""Atomic docids: one reserved token per document, `<d_N>`.

N counts documents in corpus order. `reserved_tokens` lists every token ever
handed out (removal keeps them), so `assign_new` continues at
N = len(reserved_tokens) and the model's embedding rows for new tokens are
appended after the existing ones.

With `reuse_retired=True` (the service's online adds, gr/serve/) new
documents first take the retired tokens, smallest N first (the free list:
the table's retired docids, so it is the same after a restart that replays
the same updates), and only then new ones; the caller gives each reused
token its new document's embedding row. Without it (the default: continual
training, where the model has learnt the retired tokens) a retired token is
never handed out again.
"""

import dataclasses
from typing import ClassVar, Mapping

from gr.data.beir import Document
from gr.docids import base


def atomic_token(number: int) -> str:
  return f"<d_{number}>"


def token_number(token: str) -> int:
  """`<d_N>` -> N."""
  return int(token[3:-1])


@dataclasses.dataclass(frozen=True)
class AtomicScheme:
  """One `<d_N>` token per document."""

  name: ClassVar[str] = "atomic"
  reuses_tokens: ClassVar[bool] = True  # assign_new(reuse_retired=True)

  def assign(self, corpus: Mapping[str, Document]) -> base.DocidTable:
    tokens = tuple(atomic_token(i) for i in range(len(corpus)))
    docids = {d: (token,) for d, token in zip(corpus, tokens)}
    return base.DocidTable(self.name, docids, tokens, base.scheme_config(self))

  def assign_new(
    self,
    table: base.DocidTable,
    new_docs: Mapping[str, Document],
    *,
    reuse_retired: bool = False,
  ) -> base.DocidTable:
    """reuse_retired: hand out retired tokens first (module docstring)."""
    base.check_scheme(table, self.name)
    free = free_tokens(table)[: len(new_docs)] if reuse_retired else []
    start = len(table.reserved_tokens)
    tokens = [atomic_token(start + i) for i in range(len(new_docs) - len(free))]
    return base.extended(table, new_docs, free + tokens, tokens, reused=free)


def free_tokens(table: base.DocidTable) -> list[str]:
  """Retired `<d_N>` docids, smallest N first: O(retired)."""
  return sorted(table.retired_docids, key=token_number)
