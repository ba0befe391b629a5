"""Docid tables (which document has which identifiers) and the scheme protocol.

A docid is a string of space-separated tokens. Tokens shaped like `<...>`
(`<3>`, `<c1_7>`, `<d_123>`) are *reserved*: the vocabulary maps each one to a
single id. Any other token is a plain lowercase word, sentencepiece-encoded.

A `DocidTable` is immutable and always valid (checked on construction):
every document has at least one docid, every docid string belongs to exactly
one document, every reserved-looking token is listed in `reserved_tokens`.
Deleted documents' docids are kept in `arrays["retired_docids"]` so that no
later document is ever given an identifier the model learnt for another one.

On disk a table is a directory: table.json (everything but arrays),
arrays.npz (scheme state, e.g. centroids) and manifest.json (sha256 of both),
each written atomically; the manifest is written last.
"""

import dataclasses
import functools
import hashlib
import io
import json
import os
import re
from typing import AbstractSet, Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from gr import atomic_io
from gr.data.beir import Document

FORMAT = "gr.docid_table/1"
TABLE_FILE = "table.json"
ARRAYS_FILE = "arrays.npz"
MANIFEST_FILE = "manifest.json"
RETIRED_KEY = "retired_docids"
_RESERVED_TOKEN = re.compile(r"<[^<>\s]+>")


class DocidTableError(ValueError):
  """A docid table is inconsistent, or its files on disk are corrupt."""


def is_reserved_token(token: str) -> bool:
  """True for tokens shaped like `<...>` (no spaces or angle brackets inside)."""
  return _RESERVED_TOKEN.fullmatch(token) is not None


def string_array(strings: Iterable[str]) -> np.ndarray:
  """A unicode numpy array (never object dtype, so npz loads without pickle)."""
  return np.array(list(strings), dtype=np.str_)


@dataclasses.dataclass(frozen=True, eq=False)
class DocidTable:
  """Docids of a corpus under one scheme.

  Attributes:
    scheme: scheme name ("naive", "atomic", "semantic", "text", "multi").
    docids: doc_id -> its docid strings (>= 1 each), in corpus order.
    reserved_tokens: tokens that must be single vocabulary ids; append-only
      across versions (removing documents never removes tokens).
    config: scheme constructor arguments, JSON-serialisable.
    version: +1 on every `extend` (assign_new) and `remove`.
    arrays: scheme state (e.g. centroids [num_children, dim]), saved as npz.
  """

  scheme: str
  docids: Mapping[str, tuple[str, ...]]
  reserved_tokens: tuple[str, ...]
  config: Mapping[str, Any]
  version: int = 0
  arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    set_field = functools.partial(object.__setattr__, self)
    set_field("docids", {d: tuple(ids) for d, ids in self.docids.items()})
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
      and list(self.docids.items()) == list(other.docids.items())
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
    return tuple(self.docids)

  @property
  def num_docs(self) -> int:
    return len(self.docids)

  @functools.cached_property
  def docid_to_doc(self) -> dict[str, str]:
    """Every docid string -> the one document it names."""
    return {s: d for d, ids in self.docids.items() for s in ids}

  @property
  def retired_docids(self) -> frozenset[str]:
    """Docids of removed documents; never handed out again."""
    return frozenset(
      self.arrays.get(RETIRED_KEY, np.array([], np.str_)).tolist()
    )

  def taken_docids(self) -> set[str]:
    """Docid strings a new document may not get: current and retired."""
    return set(self.docid_to_doc) | self.retired_docids

  def all_docids(self) -> list[tuple[str, str]]:
    """(docid string, doc_id) pairs in corpus order, then per-doc order."""
    return [(s, d) for d, ids in self.docids.items() for s in ids]

  def validate(self) -> None:
    """Raises DocidTableError naming the first offending doc, docid or token."""
    if not isinstance(self.scheme, str) or not self.scheme:
      raise DocidTableError(
        f"scheme must be a non-empty string, got {self.scheme!r}"
      )
    reserved = set(self.reserved_tokens)
    _check_reserved_tokens(self.reserved_tokens, reserved)
    owner: dict[str, str] = {}
    retired = self.retired_docids
    for doc_id, ids in self.docids.items():
      if not isinstance(doc_id, str) or not doc_id:
        raise DocidTableError(
          f"doc_id must be a non-empty string, got {doc_id!r}"
        )
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
    self.__dict__["docid_to_doc"] = owner
    _check_json(self.config)

  def extend(
    self,
    new_docids: Mapping[str, Sequence[str]],
    new_reserved_tokens: Sequence[str] = (),
    arrays: Mapping[str, np.ndarray] | None = None,
  ) -> "DocidTable":
    """Adds documents (version + 1). Existing documents keep their docids.

    Args:
      new_docids: doc_id -> docid strings for documents not yet in the table.
      new_reserved_tokens: tokens to append (ones already reserved are skipped).
      arrays: replacement scheme state; None keeps the current one. The
        retired docids always carry over.

    Raises:
      DocidTableError: a doc_id is already in the table, or a docid is taken.
    """
    clashes = [d for d in new_docids if d in self.docids]
    if clashes:
      raise DocidTableError(f"doc_ids already in the table: {clashes[:5]}")
    known = set(self.reserved_tokens)
    appended = [t for t in dict.fromkeys(new_reserved_tokens) if t not in known]
    new_arrays = dict(self.arrays if arrays is None else arrays)
    if RETIRED_KEY in self.arrays:
      new_arrays[RETIRED_KEY] = self.arrays[RETIRED_KEY]
    return dataclasses.replace(
      self,
      docids={**self.docids, **new_docids},
      reserved_tokens=self.reserved_tokens + tuple(appended),
      version=self.version + 1,
      arrays=new_arrays,
    )

  def remove(self, doc_ids: Iterable[str]) -> "DocidTable":
    """Deletes documents (version + 1); their docids become retired."""
    doomed = set(doc_ids)
    missing = sorted(doomed - self.docids.keys())
    if missing:
      raise DocidTableError(f"cannot remove unknown doc_ids: {missing[:5]}")
    retired = [s for d, ids in self.docids.items() if d in doomed for s in ids]
    old = self.arrays.get(RETIRED_KEY, np.array([], np.str_)).tolist()
    return dataclasses.replace(
      self,
      docids={d: v for d, v in self.docids.items() if d not in doomed},
      version=self.version + 1,
      arrays={**self.arrays, RETIRED_KEY: string_array(old + retired)},
    )

  def save(self, directory: str | os.PathLike) -> None:
    """Writes table.json, arrays.npz, then manifest.json, each atomically."""
    os.makedirs(directory, exist_ok=True)
    table_bytes = json.dumps(self._json_fields(), indent=1).encode()
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **self.arrays)
    arrays_bytes = buffer.getvalue()
    atomic_io.write_bytes(os.path.join(directory, TABLE_FILE), table_bytes)
    atomic_io.write_bytes(os.path.join(directory, ARRAYS_FILE), arrays_bytes)
    manifest = {
      "format": FORMAT,
      "sha256": {
        TABLE_FILE: _sha256(table_bytes),
        ARRAYS_FILE: _sha256(arrays_bytes),
      },
    }
    atomic_io.write_bytes(
      os.path.join(directory, MANIFEST_FILE),
      json.dumps(manifest, indent=1).encode(),
    )

  def _json_fields(self) -> dict[str, Any]:
    return {
      "scheme": self.scheme,
      "version": self.version,
      "config": self.config,
      "reserved_tokens": list(self.reserved_tokens),
      "docids": {d: list(ids) for d, ids in self.docids.items()},
    }

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "DocidTable":
    """Reads a saved table; DocidTableError if a file is missing or corrupt."""
    manifest = _read_json(os.path.join(directory, MANIFEST_FILE))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
      raise DocidTableError(
        f"{os.path.join(directory, MANIFEST_FILE)}: not a {FORMAT} manifest"
      )
    contents = {
      name: _read_verified(directory, name, manifest)
      for name in (TABLE_FILE, ARRAYS_FILE)
    }
    fields = _parse_json(
      os.path.join(directory, TABLE_FILE), contents[TABLE_FILE]
    )
    with np.load(io.BytesIO(contents[ARRAYS_FILE]), allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
    try:
      return cls(
        scheme=fields["scheme"],
        docids={d: tuple(ids) for d, ids in fields["docids"].items()},
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


def check_new_docs(table: DocidTable, new_docs: Mapping[str, Document]) -> None:
  """Raises DocidTableError if a new doc_id is already in the table."""
  clashes = [d for d in new_docs if d in table.docids]
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


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _read_verified(directory, name: str, manifest: Mapping[str, Any]) -> bytes:
  path = os.path.join(directory, name)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DocidTableError(f"{path}: cannot read: {e}") from e
  expected = manifest.get("sha256", {}).get(name)
  if _sha256(data) != expected:
    raise DocidTableError(
      f"{path}: sha256 does not match {MANIFEST_FILE} "
      "(corrupt or partially written)"
    )
  return data


def _read_json(path: str) -> Any:
  try:
    with open(path, "rb") as f:
      return _parse_json(path, f.read())
  except OSError as e:
    raise DocidTableError(f"{path}: cannot read: {e}") from e


def _parse_json(path: str, data: bytes) -> Any:
  try:
    return json.loads(data)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DocidTableError(f"{path}: invalid JSON: {e}") from e
