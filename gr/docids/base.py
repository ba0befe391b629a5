"""Docid tables (which document has which identifiers) and the scheme protocol.

A docid is a string of space-separated tokens. Tokens shaped like `<...>`
(`<3>`, `<c1_7>`, `<d_123>`) are *reserved*: the vocabulary maps each one to a
single id. Any other token is a plain lowercase word, sentencepiece-encoded.

A `DocidTable` is immutable and always valid (checked on construction):
every document has at least one docid, every docid string belongs to exactly
one document, every reserved-looking token is listed in `reserved_tokens`.
Deleted documents' docids are kept in `arrays["retired_docids"]` so that no
later document is ever given an identifier the model learnt for another one,
unless a scheme's free list hands a retired document's own token out again
(`assign_new(..., reuse_retired=True)`, `extend(reused=...)`: the service's
online adds, which overwrite the token's embedding row with the new
document's, gr/serve/served_index.py).

On disk a table is a directory: table.json (everything but arrays),
arrays.npz (scheme state, e.g. centroids) and manifest.json (sha256 of both),
each written atomically; the manifest is written last
(gr/docids/table_files.py).
"""

import dataclasses
import functools
import json
import os
import re
from typing import (
  AbstractSet,
  Any,
  Callable,
  Iterable,
  Mapping,
  Protocol,
  Sequence,
)

import numpy as np

from gr.data.beir import Document
from gr.docids import table_files
from gr.docids import views
from gr.docids.table_files import (  # noqa: F401 (re-exported)
  ARRAYS_FILE,
  FORMAT,
  MANIFEST_FILE,
  TABLE_FILE,
  DocidTableError,
)

RETIRED_KEY = "retired_docids"
_RESERVED_TOKEN = re.compile(r"<[^<>\s]+>")


def is_reserved_token(token: str) -> bool:
  """True for tokens shaped like `<...>` (no spaces or angle brackets inside)."""
  return _RESERVED_TOKEN.fullmatch(token) is not None


def string_array(strings: Iterable[str]) -> np.ndarray:
  """A unicode numpy array (never object dtype, so npz loads without pickle)."""
  return np.array(list(strings), dtype=np.str_)


@dataclasses.dataclass(frozen=True, eq=False)
class DocidTable:
  """Docids of a corpus under one scheme.

  A table built by its constructor (or `load`) is validated whole. Tables
  made by `extend` and `remove` check only what changed, and share their
  parent's mappings (`Layered`, gr/docids/views.py), so an update of k
  documents costs O(k) (amortised O(k + sqrt n)), not O(n).

  Attributes:
    scheme: scheme name ("naive", "atomic", "semantic", "text", "multi").
    docids_of: doc_id -> its docid strings (>= 1 each), in corpus order
      (`doc_ids` are the corpus keys, in the same order).
    reserved_tokens: tokens that must be single vocabulary ids; append-only
      across versions (removing documents never removes tokens).
    config: scheme constructor arguments, JSON-serialisable.
    version: +1 on every `extend` (assign_new) and `remove`.
    arrays: scheme state (e.g. centroids [num_children, dim]), saved as npz.
  """

  scheme: str
  docids_of: Mapping[str, tuple[str, ...]]
  reserved_tokens: tuple[str, ...]
  config: Mapping[str, Any]
  version: int = 0
  arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    set_field = functools.partial(object.__setattr__, self)
    set_field("docids_of", {d: tuple(ids) for d, ids in self.docids_of.items()})
    set_field("reserved_tokens", tuple(self.reserved_tokens))
    set_field("config", dict(self.config))
    set_field("arrays", {k: np.asarray(v) for k, v in self.arrays.items()})
    self.validate()

  def __eq__(self, other) -> bool:
    if not isinstance(other, DocidTable):
      return NotImplemented
    same_arrays = self.arrays.keys() == other.arrays.keys() and all(
      np.array_equal(v, other.arrays[k]) for k, v in self.arrays.items()
    )
    return (
      self._plain_fields() == other._plain_fields()
      and list(self.docids_of.items()) == list(other.docids_of.items())
      and same_arrays
    )

  __hash__ = None

  def _plain_fields(self) -> tuple[Any, ...]:
    return (
      self.scheme,
      self.reserved_tokens,
      json.dumps(self.config),
      self.version,
    )

  @property
  def doc_ids(self) -> tuple[str, ...]:
    return tuple(self.docids_of)

  @property
  def num_docs(self) -> int:
    return len(self.docids_of)

  @functools.cached_property
  def docid_to_doc(self) -> Mapping[str, str]:
    """Every docid string -> the one document it names."""
    return {s: d for d, ids in self.docids_of.items() for s in ids}

  @functools.cached_property
  def _retired(self) -> views.Layered:
    """Retired docids as the keys of a Layered mapping (values None)."""
    names = self.arrays.get(RETIRED_KEY, np.array([], np.str_)).tolist()
    return views.Layered(dict.fromkeys(names))

  @functools.cached_property
  def _reserved_set(self) -> frozenset[str]:
    return frozenset(self.reserved_tokens)

  @property
  def retired_docids(self) -> frozenset[str]:
    """Docids of removed documents; never handed out again."""
    return frozenset(self._retired)

  def is_retired(self, docid: str) -> bool:
    return docid in self._retired

  def taken_docids(self) -> views.TakenDocids:
    """Docid strings a new document may not get: current and retired."""
    return views.TakenDocids(self)

  def all_docids(self) -> list[tuple[str, str]]:
    """(docid string, doc_id) pairs in corpus order, then per-doc order."""
    return [(s, d) for d, ids in self.docids_of.items() for s in ids]

  def memo(self, key: str, compute: Callable[[], Any]) -> Any:
    """A value a scheme derives from the taken docids, computed once.

    Schemes hand the next table its value with `remember` (e.g. the next
    free number after an extend), so it is never recomputed from all docids.
    `remove` keeps every memo: the taken docids (current and retired) stay.
    """
    memos = self.__dict__.setdefault("_memos", {})
    if key not in memos:
      memos[key] = compute()
    return memos[key]

  def remember(self, key: str, value: Any) -> "DocidTable":
    """Sets `memo(key)` of this table to `value`; returns the table."""
    self.__dict__.setdefault("_memos", {})[key] = value
    return self

  def validate(self) -> None:
    """Raises DocidTableError naming the first offending doc, docid or token."""
    if not isinstance(self.scheme, str) or not self.scheme:
      raise DocidTableError(
        f"scheme must be a non-empty string, got {self.scheme!r}"
      )
    reserved = set(self.reserved_tokens)
    _check_reserved_tokens(self.reserved_tokens, reserved)
    owner: dict[str, str] = {}
    retired = self._retired
    for doc_id, ids in self.docids_of.items():
      _check_document(doc_id, ids, reserved, owner, retired)
    self.__dict__["docid_to_doc"] = owner
    _check_json(self.config)

  def extend(
    self,
    new_docids: Mapping[str, Sequence[str]],
    new_reserved_tokens: Sequence[str] = (),
    arrays: Mapping[str, np.ndarray] | None = None,
    reused: Sequence[str] = (),
  ) -> "DocidTable":
    """Adds documents (version + 1). Existing documents keep their docids.

    Only the new documents are checked: O(k) for k of them (plus O(number
    of reserved tokens) when tokens are appended, O(retired) with `reused`).

    Args:
      new_docids: doc_id -> docid strings for documents not yet in the table.
      new_reserved_tokens: tokens to append (ones already reserved are skipped).
      arrays: replacement scheme state; None keeps the current one. The
        retired docids always carry over (less `reused`).
      reused: retired docids released from retirement: their documents'
        own tokens are handed out again (a scheme's free list, e.g.
        atomic's `reuse_retired`: the caller gives each such token a new
        embedding row); a new docid may then equal one of them.

    Raises:
      DocidTableError: a doc_id is already in the table, a docid is taken,
        or a `reused` docid is not retired.
    """
    new_docids = {d: tuple(ids) for d, ids in new_docids.items()}
    clashes = [d for d in new_docids if d in self.docids_of]
    if clashes:
      raise DocidTableError(f"doc_ids already in the table: {clashes[:5]}")
    known = self._reserved_set
    appended = [t for t in dict.fromkeys(new_reserved_tokens) if t not in known]
    _check_reserved_tokens(tuple(appended), set(appended))
    reserved = known | frozenset(appended) if appended else known
    retired, new_arrays = self._released(reused)
    owner = _NewOwners(self.docid_to_doc)
    for doc_id, ids in new_docids.items():
      _check_document(doc_id, ids, reserved, owner, retired)
    if arrays is not None:
      kept = (
        {RETIRED_KEY: new_arrays[RETIRED_KEY]}
        if RETIRED_KEY in new_arrays
        else {}
      )
      new_arrays = {k: np.asarray(v) for k, v in arrays.items()} | kept
    table = self._derived(
      docids_of=views.layered(self.docids_of).changed(add=new_docids),
      docid_to_doc=views.layered(self.docid_to_doc).changed(add=owner.new),
      retired=retired,
      reserved_tokens=self.reserved_tokens + tuple(appended),
      arrays=new_arrays,
    )
    table.__dict__["_reserved_set"] = reserved
    return table

  def _released(
    self, reused: Sequence[str]
  ) -> tuple[views.Layered, Mapping[str, np.ndarray]]:
    """(retired docids, arrays) with `reused` no longer retired."""
    if not reused:
      return self._retired, self.arrays
    reused = list(dict.fromkeys(reused))
    unknown = [s for s in reused if s not in self._retired]
    if unknown:
      raise DocidTableError(f"cannot reuse docids never retired: {unknown[:5]}")
    old = self.arrays[RETIRED_KEY]
    kept = old[~np.isin(old, string_array(reused))]
    return self._retired.changed(remove=reused), {
      **self.arrays,
      RETIRED_KEY: kept,
    }

  def released_from(self, before: "DocidTable") -> list[str]:
    """The docids `before` retired that this table no longer does (an
    `extend(reused=...)` between them); O(1) when none were."""
    if len(self._retired) >= len(before._retired):
      return []
    return [s for s in before._retired if s not in self._retired]

  def remove(self, doc_ids: Iterable[str]) -> "DocidTable":
    """Deletes documents (version + 1); their docids become retired.

    O(k) for k documents, plus a copy of the retired docids' array.
    """
    doomed = list(dict.fromkeys(doc_ids))
    missing = sorted(d for d in doomed if d not in self.docids_of)
    if missing:
      raise DocidTableError(f"cannot remove unknown doc_ids: {missing[:5]}")
    retired = [s for d in doomed for s in self.docids_of[d]]
    old = self.arrays.get(RETIRED_KEY, np.array([], np.str_))
    table = self._derived(
      docids_of=views.layered(self.docids_of).changed(remove=doomed),
      docid_to_doc=views.layered(self.docid_to_doc).changed(remove=retired),
      retired=self._retired.changed(add=dict.fromkeys(retired)),
      reserved_tokens=self.reserved_tokens,
      arrays={
        **self.arrays,
        RETIRED_KEY: np.concatenate([old, string_array(retired)]),
      },
    )
    table.__dict__["_reserved_set"] = self._reserved_set
    table.__dict__["_memos"] = dict(self.__dict__.get("_memos", {}))
    return table

  def _derived(
    self, *, docids_of, docid_to_doc, retired, reserved_tokens, arrays
  ) -> "DocidTable":
    """The next version, from fields the caller has checked (no validate)."""
    table = object.__new__(DocidTable)
    table.__dict__.update(
      scheme=self.scheme,
      docids_of=docids_of,
      reserved_tokens=reserved_tokens,
      config=self.config,
      version=self.version + 1,
      arrays=arrays,
      docid_to_doc=docid_to_doc,
      _retired=retired,
    )
    return table

  def save(self, directory: str | os.PathLike) -> None:
    """Writes table.json, arrays.npz, then manifest.json, each atomically
    (gr/docids/table_files.py)."""
    table_files.write(directory, self._json_fields(), self.arrays)

  def _json_fields(self) -> dict[str, Any]:
    return {
      "scheme": self.scheme,
      "version": self.version,
      "config": self.config,
      "reserved_tokens": list(self.reserved_tokens),
      "docids": {d: list(ids) for d, ids in self.docids_of.items()},
    }

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "DocidTable":
    """Reads a saved table; DocidTableError if a file is missing or corrupt."""
    fields, arrays = table_files.read(directory)
    try:
      return cls(
        scheme=fields["scheme"],
        docids_of={d: tuple(ids) for d, ids in fields["docids"].items()},
        reserved_tokens=tuple(fields["reserved_tokens"]),
        config=fields["config"],
        version=int(fields["version"]),
        arrays=arrays,
      )
    except (KeyError, TypeError, AttributeError, DocidTableError) as e:
      raise DocidTableError(
        f"{directory}: inconsistent docid table: {e}"
      ) from e


class DocidScheme(Protocol):
  """How documents are named. `assign_new` never changes existing docids."""

  name: str

  def assign(self, corpus: Mapping[str, Document]) -> DocidTable: ...

  def assign_new(
    self, table: DocidTable, new_docs: Mapping[str, Document]
  ) -> DocidTable: ...


def scheme_config(scheme: Any) -> dict[str, Any]:
  """A scheme dataclass's JSON-serialisable constructor arguments.

  Fields with metadata {"config": False} (e.g. an embedder) are left out.
  """
  return {
    f.name: getattr(scheme, f.name)
    for f in dataclasses.fields(scheme)
    if f.metadata.get("config", True)
  }


def check_scheme(table: DocidTable, name: str) -> None:
  """Raises DocidTableError unless `table` was made by scheme `name`."""
  if table.scheme != name:
    raise DocidTableError(
      f"table was built by scheme {table.scheme!r}, not {name!r}"
    )


def extended(
  table: DocidTable,
  new_docs: Iterable[str],
  docids: Iterable[str],
  tokens: Sequence[str] = (),
  *,
  arrays: Mapping[str, np.ndarray] | None = None,
  reused: Sequence[str] = (),
) -> DocidTable:
  """`table` extended by one docid per new document (the i-th doc_id of
  `new_docs` gets the i-th of `docids`), with the reserved `tokens` they
  created (DocidTable.extend's arrays and reused)."""
  return table.extend(
    {d: (docid,) for d, docid in zip(new_docs, docids, strict=True)},
    tokens,
    arrays,
    reused=reused,
  )


def check_new_docs(table: DocidTable, new_docs: Mapping[str, Document]) -> None:
  """Raises DocidTableError if a new doc_id is already in the table."""
  clashes = [d for d in new_docs if d in table.docids_of]
  if clashes:
    raise DocidTableError(f"doc_ids already in the table: {clashes[:5]}")


def _check_reserved_tokens(tokens: tuple[str, ...], unique: AbstractSet[str]):
  if len(unique) != len(tokens):
    raise DocidTableError("reserved_tokens contains duplicates")
  for token in tokens:
    if not is_reserved_token(token):
      raise DocidTableError(
        f"reserved token {token!r} is not shaped like <...>"
      )


class _NewOwners:
  """Docid -> doc_id lookups over a table's owners plus the new ones."""

  def __init__(self, existing: Mapping[str, str]):
    self.existing, self.new = existing, {}

  def __contains__(self, docid: str) -> bool:
    return docid in self.new or docid in self.existing

  def __getitem__(self, docid: str) -> str:
    return self.new[docid] if docid in self.new else self.existing[docid]

  def __setitem__(self, docid: str, doc_id: str) -> None:
    self.new[docid] = doc_id


def _check_document(
  doc_id: str,
  ids: Sequence[str],
  reserved: AbstractSet[str],
  owner,
  retired: Mapping[str, Any],
) -> None:
  """Checks one document's docids; records each in `owner` (docid -> doc)."""
  if not isinstance(doc_id, str) or not doc_id:
    raise DocidTableError(f"doc_id must be a non-empty string, got {doc_id!r}")
  if not ids:
    raise DocidTableError(f"document {doc_id!r} has no docid")
  for docid in ids:
    _check_docid(docid, doc_id, reserved)
    if docid in owner:
      raise DocidTableError(
        f"docid {docid!r} names both {owner[docid]!r} and {doc_id!r}"
      )
    if docid in retired:
      raise DocidTableError(
        f"docid {docid!r} of {doc_id!r} belonged to a removed document"
      )
    owner[docid] = doc_id


def _check_docid(docid: str, doc_id: str, reserved: AbstractSet[str]) -> None:
  if (
    not isinstance(docid, str) or not docid or docid.split() != docid.split(" ")
  ):
    raise DocidTableError(
      f"docid {docid!r} of {doc_id!r} must be non-empty tokens joined by "
      "single spaces"
    )
  for token in docid.split(" "):
    if ("<" in token or ">" in token) and token not in reserved:
      raise DocidTableError(
        f"token {token!r} in docid {docid!r} of {doc_id!r} is not a "
        "reserved token"
      )


def _check_json(config: Mapping[str, Any]) -> None:
  try:
    json.dumps(config)
  except TypeError as e:
    raise DocidTableError(f"config is not JSON-serialisable: {e}") from e
