"""Multiple docids per document: one id from each part scheme.

`parts` lists part schemes as JSON dicts, e.g. (the default)
  {"scheme": "semantic"}, {"scheme": "text", "method": "tfidf", "num_words": 3},
  {"scheme": "text", "method": "prefix", "num_words": 5}
Document d gets docids[d][i] from part i. At most one part may use reserved
tokens (naive, atomic or semantic): their docids could otherwise coincide.
Text parts avoid every docid already taken (earlier parts, existing and
retired documents), so every docid string names exactly one document.

Each part's state is kept in `arrays` under "{i}/<key>", and its reserved
tokens under "{i}/reserved_tokens", so `assign_new` can rebuild each part's
own table and call that part's `assign_new`.
"""

import dataclasses
import re
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from gr.data.beir import Document
from gr.docids import atomic, base, naive, semantic, text

PART_SCHEMES = {
  "naive": naive.NaiveScheme,
  "atomic": atomic.AtomicScheme,
  "semantic": semantic.SemanticScheme,
  "text": text.TextScheme,
}
DEFAULT_PARTS = (
  {"scheme": "semantic"},
  {"scheme": "text", "method": "tfidf", "num_words": 3},
  {"scheme": "text", "method": "prefix", "num_words": 5},
)


@dataclasses.dataclass(frozen=True)
class MultiScheme:
  """Several docids per document (many-to-one table).

  Attributes:
    parts: part scheme specs {"scheme": name, **kwargs}.
    embedder: passed to a semantic part (not saved in the config).
  """

  name: ClassVar[str] = "multi"
  parts: Sequence[Mapping[str, Any]] = DEFAULT_PARTS
  embedder: Any = dataclasses.field(
    default=None, compare=False, metadata={"config": False}
  )

  def __post_init__(self):
    object.__setattr__(self, "parts", [dict(p) for p in self.parts])
    schemes = self.part_schemes()
    if not schemes:
      raise ValueError("multi scheme needs at least one part")
    if sum(not isinstance(s, text.TextScheme) for s in schemes) > 1:
      raise ValueError(
        "at most one multi part may use reserved tokens "
        f"(naive, atomic, semantic); got {self.parts}"
      )

  def part_schemes(self) -> list[Any]:
    """The part scheme objects, in order."""
    return [_make_part(spec, self.embedder) for spec in self.parts]

  def assign(
    self,
    corpus: Mapping[str, Document],
    *,
    embeddings: np.ndarray | None = None,
  ) -> base.DocidTable:
    """embeddings: optional [len(corpus), dim] for a semantic part."""
    per_doc: dict[str, list[str]] = {d: [] for d in corpus}
    reserved, arrays, taken = [], {}, set()
    for i, part in enumerate(self.part_schemes()):
      sub = _call(part, "assign", corpus, taken=taken, embeddings=embeddings)
      _collect(i, sub, per_doc, taken, reserved, arrays)
    return base.DocidTable(
      self.name,
      per_doc,
      tuple(dict.fromkeys(reserved)),
      base.scheme_config(self),
      arrays=arrays,
    )

  @property
  def reuses_tokens(self) -> bool:
    """Whether `assign_new(reuse_retired=True)` reuses deleted documents'
    own tokens: when its token part does (atomic, semantic node tokens)."""
    return any(getattr(p, "reuses_tokens", False) for p in self.part_schemes())

  def assign_new(
    self,
    table: base.DocidTable,
    new_docs: Mapping[str, Document],
    *,
    embeddings: np.ndarray | None = None,
    reuse_retired: bool = False,
  ) -> base.DocidTable:
    """reuse_retired: the token part (if it `reuses_tokens`) hands out its
    deleted documents' docids first; text docids are never reused."""
    base.check_scheme(table, self.name)
    base.check_new_docs(table, new_docs)
    per_doc: dict[str, list[str]] = {d: [] for d in new_docs}
    reserved, arrays, taken, reused = [], {}, table.taken_docids(), []
    for i, part in enumerate(self.part_schemes()):
      reuse = reuse_retired and getattr(part, "reuses_tokens", False)
      part_table = _part_table(table, i, part, own_retired=reuse)
      sub = _call(
        part,
        "assign_new",
        part_table,
        new_docs,
        taken=taken,
        embeddings=embeddings,
        **({"reuse_retired": True} if reuse else {}),
      )
      _collect(i, sub, per_doc, taken, reserved, arrays)
      reused += sub.released_from(part_table) if reuse else []
    return table.extend(per_doc, reserved, arrays, reused=reused)


def _make_part(spec: Mapping[str, Any], embedder: Any) -> Any:
  kwargs = dict(spec)
  name = kwargs.pop("scheme", None)
  if name not in PART_SCHEMES:
    raise ValueError(
      f"multi part {spec!r}: 'scheme' must be one of {sorted(PART_SCHEMES)}"
    )
  if name == "semantic":
    kwargs["embedder"] = embedder
  return PART_SCHEMES[name](**kwargs)


def _call(
  part: Any, method: str, *args, taken, embeddings, **kwargs
) -> base.DocidTable:
  """Calls part.assign / assign_new with the keyword its scheme accepts
  (and `kwargs`)."""
  if isinstance(part, text.TextScheme):
    return getattr(part, method)(*args, taken=frozenset(taken), **kwargs)
  if isinstance(part, semantic.SemanticScheme):
    return getattr(part, method)(*args, embeddings=embeddings, **kwargs)
  return getattr(part, method)(*args, **kwargs)


def _collect(
  i: int,
  sub: base.DocidTable,
  per_doc: dict[str, list[str]],
  taken: set[str],
  reserved: list[str],
  arrays: dict[str, np.ndarray],
) -> None:
  """Adds part i's docids (one per doc in per_doc) and state to the totals."""
  for doc_id in per_doc:
    (docid,) = sub.docids_of[doc_id]
    per_doc[doc_id].append(docid)
    taken.add(docid)
  reserved.extend(sub.reserved_tokens)
  arrays.update(
    {f"{i}/{k}": v for k, v in sub.arrays.items() if k != base.RETIRED_KEY}
  )
  arrays[f"{i}/reserved_tokens"] = base.string_array(sub.reserved_tokens)


def _part_table(
  table: base.DocidTable, i: int, part: Any, *, own_retired: bool = False
) -> base.DocidTable:
  """Part i's own table, rebuilt from the multi table. Its retired docids
  are every part's (so its new docids avoid them all), or with
  `own_retired` only those its documents held (its free list)."""
  prefix = f"{i}/"
  arrays = {
    k[len(prefix) :]: v
    for k, v in table.arrays.items()
    if k.startswith(prefix) and k != prefix + "reserved_tokens"
  }
  if base.RETIRED_KEY in table.arrays:
    retired = table.arrays[base.RETIRED_KEY]
    if own_retired:
      retired = retired[[_part_docid(part, d) for d in retired.tolist()]]
    arrays[base.RETIRED_KEY] = retired
  reserved = table.arrays.get(prefix + "reserved_tokens", np.array([], np.str_))
  return base.DocidTable(
    part.name,
    {d: (ids[i],) for d, ids in table.docids_of.items()},
    tuple(reserved.tolist()),
    base.scheme_config(part),
    table.version,
    arrays,
  )


def _part_docid(part: Any, docid: str) -> bool:
  """Whether `docid` has the form of a token part's docids (`<d_N>`, or a
  semantic path of its token style)."""
  if isinstance(part, semantic.SemanticScheme):
    return part.docid_to_path(docid) is not None
  if isinstance(part, atomic.AtomicScheme):
    return re.fullmatch(r"<d_\d+>", docid) is not None
  return False
