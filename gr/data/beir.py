"""BEIR folders: read, write, validate (corpus.jsonl, queries.jsonl, qrels/).

A BEIR folder is the IR ecosystem's exchange format:

  corpus.jsonl       one JSON object a line: `_id`, `title`, `text`; any other
                     field is kept in `Document.metadata` and written back as a
                     top-level field.
  queries.jsonl      one JSON object a line: `_id`, `text` (others ignored).
  qrels/<split>.tsv  header `query-id<TAB>corpus-id<TAB>score`, then one
                     integer judgement a row.

Reads stream line by line. Bad input raises `BeirFormatError` naming the file
and line. With `skip_invalid=True` bad records are skipped instead, and every
skipped record is logged and appended to the caller's `skipped` list as a
`Skipped(file, line, reason)`. Blank lines are not records and are ignored.
Writes are atomic per file (temp file in the same folder, fsync, os.replace).
"""

import dataclasses
import json
import logging
import os
from typing import Any, Iterable, Iterator, Mapping, Optional

from gr import atomic_io

QRELS_HEADER = ("query-id", "corpus-id", "score")
_QRELS_HEADER_BYTES = tuple(c.encode() for c in QRELS_HEADER)
_CORPUS_CORE_FIELDS = ("_id", "title", "text")

Qrels = dict[str, dict[str, int]]


@dataclasses.dataclass(frozen=True)
class Document:
  """One corpus record. `metadata` holds any extra fields (e.g. publish_date)."""

  doc_id: str
  title: str
  text: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class BeirFormatError(ValueError):
  """A BEIR file is malformed; the message names the file and line."""

  def __init__(self, path: str, line: Optional[int], reason: str):
    where = f"{path}:{line}" if line is not None else path
    super().__init__(f"{where}: {reason}")
    self.path = path
    self.line = line
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A record skipped under `skip_invalid=True`."""

  file: str
  line: int
  reason: str


class _Reporter:
  """Raises on a bad record, or (skip_invalid) logs and collects it."""

  def __init__(self, skip_invalid: bool, skipped: Optional[list[Skipped]]):
    self.skip_invalid = skip_invalid
    self.skipped = skipped

  def bad(self, error: BeirFormatError) -> None:
    if not self.skip_invalid:
      raise error
    logging.warning("Skipping invalid record: %s", error)
    if self.skipped is not None:
      self.skipped.append(Skipped(error.path, error.line, error.reason))


# ------------------------------------------------------------------ reading


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based line number, raw line sans newline) of non-blank lines."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise BeirFormatError(path, None, "file not found")
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if raw.strip():
        yield line_no, raw.rstrip(b"\r\n")


def _decode(path: str, line_no: int, raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BeirFormatError(path, line_no, f"invalid UTF-8: {e}") from None


def _parse_json_object(path: str, line_no: int, raw: bytes) -> dict[str, Any]:
  line = _decode(path, line_no, raw)
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise BeirFormatError(path, line_no, f"malformed JSON: {e}") from None
  if not isinstance(record, dict):
    raise BeirFormatError(path, line_no, "a record must be a JSON object")
  return record


def _field(
  path: str,
  line_no: int,
  record: Mapping[str, Any],
  name: str,
  *,
  required: bool = True,
  nonempty: bool = False,
) -> str:
  """Returns record[name] as a checked string ('' when optional and absent)."""
  if name not in record:
    if required:
      raise BeirFormatError(path, line_no, f"missing field {name!r}")
    return ""
  value = record[name]
  if not isinstance(value, str):
    raise BeirFormatError(
      path,
      line_no,
      f"field {name!r} must be a string, got {type(value).__name__}",
    )
  if nonempty and not value.strip():
    raise BeirFormatError(path, line_no, f"field {name!r} is empty")
  return value


def _parse_document(path: str, line_no: int, raw: bytes) -> Document:
  record = _parse_json_object(path, line_no, raw)
  doc_id = _field(path, line_no, record, "_id", nonempty=True)
  title = _field(path, line_no, record, "title", required=False)
  text = _field(path, line_no, record, "text", nonempty=True)
  metadata = {k: v for k, v in record.items() if k not in _CORPUS_CORE_FIELDS}
  return Document(doc_id=doc_id, title=title, text=text, metadata=metadata)


def iter_corpus(
  path: str,
  *,
  skip_invalid: bool = False,
  skipped: Optional[list[Skipped]] = None,
) -> Iterator[Document]:
  """Streams the Documents of a corpus.jsonl, one line at a time.

  `_id` and `text` are required non-empty strings, `title` an optional string.
  Only the set of ids seen so far is kept (to reject duplicates).
  """
  reporter = _Reporter(skip_invalid, skipped)
  seen = set()
  for line_no, raw in _iter_lines(path):
    try:
      doc = _parse_document(os.fspath(path), line_no, raw)
      if doc.doc_id in seen:
        raise BeirFormatError(
          os.fspath(path), line_no, f"duplicate _id {doc.doc_id!r}"
        )
    except BeirFormatError as e:
      reporter.bad(e)
      continue
    seen.add(doc.doc_id)
    yield doc


def read_corpus(
  path: str,
  *,
  skip_invalid: bool = False,
  skipped: Optional[list[Skipped]] = None,
) -> dict[str, Document]:
  """Reads a corpus.jsonl into {doc_id: Document}, in file order."""
  return {
    doc.doc_id: doc
    for doc in iter_corpus(path, skip_invalid=skip_invalid, skipped=skipped)
  }


def read_queries(
  path: str,
  *,
  skip_invalid: bool = False,
  skipped: Optional[list[Skipped]] = None,
) -> dict[str, str]:
  """Reads a queries.jsonl into {query_id: text}, in file order."""
  path = os.fspath(path)
  reporter = _Reporter(skip_invalid, skipped)
  queries = {}
  for line_no, raw in _iter_lines(path):
    try:
      record = _parse_json_object(path, line_no, raw)
      query_id = _field(path, line_no, record, "_id", nonempty=True)
      text = _field(path, line_no, record, "text", nonempty=True)
      if query_id in queries:
        raise BeirFormatError(path, line_no, f"duplicate _id {query_id!r}")
    except BeirFormatError as e:
      reporter.bad(e)
      continue
    queries[query_id] = text
  return queries


def _parse_qrels_row(
  path: str, line_no: int, raw: bytes
) -> tuple[str, str, int]:
  columns = _decode(path, line_no, raw).split("\t")
  if len(columns) != 3:
    raise BeirFormatError(
      path, line_no, f"expected 3 tab-separated columns, got {len(columns)}"
    )
  query_id, doc_id, score = (c.strip() for c in columns)
  if not query_id or not doc_id:
    raise BeirFormatError(path, line_no, "empty query-id or corpus-id")
  try:
    return query_id, doc_id, int(score)
  except ValueError:
    raise BeirFormatError(
      path, line_no, f"score must be an integer, got {score!r}"
    ) from None


def _check_reference(
  path: str,
  line_no: int,
  query_id: str,
  doc_id: str,
  query_ids: Optional[Iterable[str]],
  corpus_ids: Optional[Iterable[str]],
) -> None:
  if query_ids is not None and query_id not in query_ids:
    raise BeirFormatError(path, line_no, f"unknown query-id {query_id!r}")
  if corpus_ids is not None and doc_id not in corpus_ids:
    raise BeirFormatError(path, line_no, f"unknown corpus-id {doc_id!r}")


def read_qrels(
  path: str,
  *,
  query_ids: Optional[Iterable[str]] = None,
  corpus_ids: Optional[Iterable[str]] = None,
  skip_invalid: bool = False,
  skipped: Optional[list[Skipped]] = None,
) -> Qrels:
  """Reads a qrels .tsv into {query_id: {doc_id: score}}.

  If `query_ids` / `corpus_ids` are given (sets or dicts), rows that point
  elsewhere are errors. A repeated (query-id, corpus-id) pair is an error.
  """
  path = os.fspath(path)
  reporter = _Reporter(skip_invalid, skipped)
  lines = _iter_lines(path)
  header = next(lines, None)
  if (
    header is None
    or tuple(c.strip() for c in header[1].split(b"\t")) != _QRELS_HEADER_BYTES
  ):
    raise BeirFormatError(
      path,
      header[0] if header else 1,
      f"expected header {chr(9).join(QRELS_HEADER)!r}",
    )
  qrels: Qrels = {}
  for line_no, raw in lines:
    try:
      query_id, doc_id, score = _parse_qrels_row(path, line_no, raw)
      _check_reference(path, line_no, query_id, doc_id, query_ids, corpus_ids)
      if doc_id in qrels.get(query_id, {}):
        raise BeirFormatError(
          path, line_no, f"duplicate pair ({query_id!r}, {doc_id!r})"
        )
    except BeirFormatError as e:
      reporter.bad(e)
      continue
    qrels.setdefault(query_id, {})[doc_id] = score
  return qrels


# ------------------------------------------------------------------ dataset


def _qrels_splits(qrels_dir: str, splits: Optional[Iterable[str]]) -> list[str]:
  if splits is not None:
    return list(splits)
  if not os.path.isdir(qrels_dir):
    raise BeirFormatError(qrels_dir, None, "qrels folder not found")
  return sorted(
    name[: -len(".tsv")]
    for name in os.listdir(qrels_dir)
    if name.endswith(".tsv")
  )


@dataclasses.dataclass(frozen=True)
class BeirDataset:
  """A loaded BEIR folder: corpus, queries and qrels per split.

  Attributes:
    corpus: {doc_id: Document}, in file order.
    queries: {query_id: text}, in file order.
    qrels: {split: {query_id: {doc_id: score}}}.
    skipped: records skipped under `skip_invalid=True` (empty otherwise).
  """

  corpus: dict[str, Document]
  queries: dict[str, str]
  qrels: dict[str, Qrels]
  skipped: tuple[Skipped, ...] = ()

  @classmethod
  def load(
    cls,
    folder: str,
    *,
    queries_file: str = "queries.jsonl",
    qrels_dir: str = "qrels",
    splits: Optional[Iterable[str]] = None,
    skip_invalid: bool = False,
  ) -> "BeirDataset":
    """Loads and cross-validates a BEIR folder.

    Args:
      folder: the BEIR folder (holds corpus.jsonl).
      queries_file: queries path relative to `folder`.
      qrels_dir: qrels folder relative to `folder`.
      splits: qrels splits to load (each must exist); None loads every
        `<split>.tsv` in `qrels_dir`.
      skip_invalid: skip (and report in `.skipped`) bad records instead of
        raising; qrels rows that point to a skipped or unknown id are skipped.
    """
    folder = os.fspath(folder)
    skipped: list[Skipped] = []
    kwargs = dict(skip_invalid=skip_invalid, skipped=skipped)
    corpus = read_corpus(os.path.join(folder, "corpus.jsonl"), **kwargs)
    queries = read_queries(os.path.join(folder, queries_file), **kwargs)
    qrels_path = os.path.join(folder, qrels_dir)
    qrels = {
      split: read_qrels(
        os.path.join(qrels_path, f"{split}.tsv"),
        query_ids=queries,
        corpus_ids=corpus,
        **kwargs,
      )
      for split in _qrels_splits(qrels_path, splits)
    }
    if skipped:
      logging.warning("Skipped %d invalid records in %s", len(skipped), folder)
    return cls(corpus, queries, qrels, tuple(skipped))

  def restricted_to(
    self,
    doc_ids: Iterable[str],
    *,
    splits: Optional[Iterable[str]] = None,
    whole_queries: bool = False,
  ) -> "BeirDataset":
    """This dataset on the documents `doc_ids` only, in that order.

    Each query's judgments keep only the kept documents, and a query left
    with none is dropped; with `whole_queries`, a query is kept only if
    every document it judges is kept. `queries` keeps the judged ones (in
    their order here). splits: the qrels splits kept (default: all).
    """
    corpus = {d: self.corpus[d] for d in doc_ids}
    qrels = {}
    for split in self.qrels if splits is None else splits:
      judged = {}
      for query_id, docs in self.qrels.get(split, {}).items():
        kept = {d: score for d, score in docs.items() if d in corpus}
        if kept and (len(kept) == len(docs) or not whole_queries):
          judged[query_id] = kept
      qrels[split] = judged
    queries = {
      q: text
      for q, text in self.queries.items()
      if any(q in judged for judged in qrels.values())
    }
    return dataclasses.replace(
      self, corpus=corpus, queries=queries, qrels=qrels
    )


# ------------------------------------------------------------------ writing


def _json_line(record: Mapping[str, Any]) -> str:
  return json.dumps(record, ensure_ascii=False) + "\n"


def _document_record(doc: Document) -> dict[str, Any]:
  clash = set(doc.metadata) & set(_CORPUS_CORE_FIELDS)
  if clash:
    raise ValueError(
      f"Document {doc.doc_id!r}: metadata keys {sorted(clash)} clash with "
      "corpus fields"
    )
  return {
    "_id": doc.doc_id,
    "title": doc.title,
    "text": doc.text,
    **doc.metadata,
  }


def write_corpus(
  path: str, corpus: Mapping[str, Document] | Iterable[Document]
) -> None:
  """Writes Documents (a {doc_id: Document} mapping or an iterable) as jsonl."""
  docs = corpus.values() if isinstance(corpus, Mapping) else corpus
  with atomic_io.atomic_open(path) as f:
    for doc in docs:
      f.write(_json_line(_document_record(doc)))


def write_queries(path: str, queries: Mapping[str, str]) -> None:
  """Writes {query_id: text} as a queries.jsonl."""
  with atomic_io.atomic_open(path) as f:
    for query_id, text in queries.items():
      f.write(_json_line({"_id": query_id, "text": text}))


def write_qrels(path: str, qrels: Mapping[str, Mapping[str, int]]) -> None:
  """Writes {query_id: {doc_id: score}} as a qrels .tsv with header."""
  with atomic_io.atomic_open(path) as f:
    f.write("\t".join(QRELS_HEADER) + "\n")
    for query_id, judged in qrels.items():
      for doc_id, score in judged.items():
        if any(
          s != s.strip() or any(c in s for c in "\t\n\r")
          for s in (query_id, doc_id)
        ):
          raise ValueError(
            f"qrels ids may not hold tabs, newlines or surrounding spaces: "
            f"{query_id!r} {doc_id!r}"
          )
        f.write(f"{query_id}\t{doc_id}\t{int(score)}\n")


def write_beir(
  folder: str,
  corpus: Mapping[str, Document] | Iterable[Document],
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, Mapping[str, int]]],
  *,
  queries_file: str = "queries.jsonl",
  qrels_dir: str = "qrels",
) -> None:
  """Writes a BEIR folder: corpus.jsonl, queries, qrels/<split>.tsv."""
  folder = os.fspath(folder)
  write_corpus(os.path.join(folder, "corpus.jsonl"), corpus)
  write_queries(os.path.join(folder, queries_file), queries)
  for split, split_qrels in qrels.items():
    write_qrels(os.path.join(folder, qrels_dir, f"{split}.tsv"), split_qrels)
