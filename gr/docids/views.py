"""Copy-free mappings and sets that a `DocidTable` is made of.

A table derived by `extend` or `remove` shares its parent's mappings: a
`Layered` mapping is a shared base dict plus a small delta, so an update of
k documents costs O(k) (amortised O(sqrt n) when the delta is folded), not a
copy. `TakenDocids` is the set of docids a new document may not get, as a
view of a table.
"""

import collections.abc
import math
from typing import AbstractSet, Any, Iterable, Iterator, Mapping


class Layered(collections.abc.Mapping):
  """An immutable mapping: a shared base dict plus a small delta on top.

  `changed` makes the next one in O(delta) without copying the base; once
  the delta outgrows sqrt(len(base)) it is folded into a new base (O(n)
  once every sqrt(n) changes), so a change costs amortised O(sqrt n) where a
  copy of a dict would cost O(n). Iteration order is a dict's: the base's
  surviving keys, then the added ones in order.
  """

  __slots__ = ("_base", "_added", "_removed")

  def __init__(
    self,
    base: Mapping[Any, Any],
    added: Mapping[Any, Any] | None = None,
    removed: AbstractSet[Any] = frozenset(),
  ):
    """`removed`: keys of `base` that are gone; `added`: keys not in it."""
    self._base, self._added, self._removed = base, added or {}, removed

  def __getitem__(self, key):
    if key in self._added:
      return self._added[key]
    if key in self._removed:
      raise KeyError(key)
    return self._base[key]

  def __contains__(self, key) -> bool:
    return key in self._added or (
      key not in self._removed and key in self._base
    )

  def __iter__(self) -> Iterator[Any]:
    removed = self._removed
    yield from (k for k in self._base if k not in removed)
    yield from self._added

  def __len__(self) -> int:
    return len(self._base) - len(self._removed) + len(self._added)

  def __repr__(self) -> str:
    return f"Layered({len(self)} items)"

  def changed(
    self, add: Mapping[Any, Any] = {}, remove: Iterable[Any] = ()
  ) -> "Layered":
    """This mapping with keys in `remove` dropped, then `add` (new keys)."""
    added, removed = dict(self._added), set(self._removed)
    for key in remove:
      if added.pop(key, _ABSENT) is _ABSENT:
        removed.add(key)
    added.update(add)
    delta = len(added) + len(removed)
    if delta > max(_MIN_FOLD, math.isqrt(len(self._base))):
      base = {k: v for k, v in self._base.items() if k not in removed}
      base.update(added)
      return Layered(base)
    return Layered(self._base, added, frozenset(removed))


_ABSENT = object()
_MIN_FOLD = 64


class TakenDocids(collections.abc.Set):
  """Docids a new document may not get: the table's current and retired
  ones, plus any `add`ed while naming new documents. Membership is O(1);
  the table's docids are not copied (iterating them all is O(n))."""

  def __init__(self, table):
    """table: a gr.docids.base.DocidTable."""
    self._table, self._extra = table, set()

  def __contains__(self, docid) -> bool:
    return (
      docid in self._extra
      or docid in self._table.docid_to_doc
      or self._table.is_retired(docid)
    )

  def __iter__(self) -> Iterator[str]:
    yield from self._extra
    yield from (d for d in self._table.docid_to_doc if d not in self._extra)
    yield from (
      d
      for d in self._table.retired_docids
      if d not in self._extra and d not in self._table.docid_to_doc
    )

  def __len__(self) -> int:
    return sum(1 for _ in self)

  def add(self, docid: str) -> None:
    self._extra.add(docid)

  def update(self, docids: Iterable[str]) -> None:
    self._extra.update(docids)


def layered(mapping: Mapping[Any, Any]) -> Layered:
  """`mapping` as a Layered one (itself if it already is)."""
  return mapping if isinstance(mapping, Layered) else Layered(mapping)
