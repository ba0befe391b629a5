"""The served index dir's own files: the two append-only online logs and
the lock (gr/serve/served_run.py loads them; gr/serve/served_index.py's
updates append to them).

  <index>/online_documents.jsonl  documents added online, appended as BEIR
                               corpus lines (a doc_id added again after a
                               delete appears twice: the last line is its);
                               only those the table still has are served
  <index>/online_rows.jsonl    embedding rows of docid tokens created
                               online (pretrained-encoder models), appended
                               as {"token", "row": base64 float32 [D]}; the
                               last line of a token is its row
  <index>/.serving.lock        held while a Retriever serves the directory

Both logs are append-only (gr/atomic_io.py `append_lines`): an add appends
its documents and rows first and commits with the index's update record
last, so a crash in between leaves lines that no table entry uses
(ignored). `compact_online_files` rewrites them (atomically) when the index
compacts.
"""

import base64
import fcntl
import json
import os
from typing import Iterable, Mapping

import numpy as np

from gr import atomic_io
from gr.data import beir
from gr.index import artifact as index_lib
from gr.serve.serving_config import RunLoadError

ONLINE_DOCUMENTS_FILE = "online_documents.jsonl"
ONLINE_ROWS_FILE = "online_rows.jsonl"
LOCK_FILE = ".serving.lock"


def _documents_path(index_dir: str) -> str:
  return os.path.join(index_dir, ONLINE_DOCUMENTS_FILE)


def _rows_path(index_dir: str) -> str:
  return os.path.join(index_dir, ONLINE_ROWS_FILE)


def read_online_documents(index_dir: str) -> dict[str, beir.Document]:
  """Documents added online to `index_dir` (empty if none), the last line
  of each doc_id winning; a torn last line is left out.

  Raises:
    RunLoadError: a committed line is not a BEIR corpus record.
  """
  path = _documents_path(index_dir)
  documents = {}
  for line_no, line in atomic_io.read_lines(path):
    try:
      doc = beir._parse_document(path, line_no, line.encode("utf-8"))  # pylint: disable=protected-access
    except beir.BeirFormatError as e:
      raise RunLoadError(str(e)) from e
    documents.pop(doc.doc_id, None)  # re-added: moves to the end
    documents[doc.doc_id] = doc
  return documents


def append_online_documents(
  index_dir: str, documents: Iterable[beir.Document]
) -> None:
  """Appends BEIR corpus lines, one fsync for all of them."""
  lines = [
    json.dumps(beir._document_record(doc), ensure_ascii=False)  # pylint: disable=protected-access
    for doc in documents
  ]
  atomic_io.append_lines(_documents_path(index_dir), lines)


def read_online_rows(index_dir: str) -> dict[str, np.ndarray]:
  """Docid token -> embedding row [D] set online in `index_dir` (maybe none).

  Raises:
    RunLoadError: a committed line is malformed.
  """
  path = _rows_path(index_dir)
  rows = {}
  for line_no, line in atomic_io.read_lines(path):
    try:
      record = json.loads(line)
      rows[record["token"]] = np.frombuffer(
        base64.b64decode(record["row"]), np.float32
      )
    except (ValueError, KeyError, TypeError) as e:
      raise RunLoadError(f"{path}:{line_no}: bad row record: {e}") from e
  return rows


def _row_line(token: str, row: np.ndarray) -> str:
  encoded = base64.b64encode(np.asarray(row, np.float32).tobytes())
  return json.dumps({"token": token, "row": encoded.decode("ascii")})


def append_online_rows(index_dir: str, rows: Mapping[str, np.ndarray]) -> None:
  """Appends one line per token, one fsync for all of them."""
  lines = [_row_line(token, row) for token, row in rows.items()]
  atomic_io.append_lines(_rows_path(index_dir), lines)


def repair_online_logs(index_dir: str) -> None:
  """Cuts torn last lines off both logs and the index's update log (the
  lock holder does this before it appends)."""
  atomic_io.repair_log(_documents_path(index_dir))
  atomic_io.repair_log(_rows_path(index_dir))
  index_lib.repair_updates(index_dir)


def compact_online_files(
  index_dir: str,
  documents: Mapping[str, beir.Document],
  rows: Mapping[str, np.ndarray],
) -> None:
  """Rewrites both logs with only `documents` and `rows`, atomically."""
  beir.write_corpus(_documents_path(index_dir), documents)
  with atomic_io.atomic_open(_rows_path(index_dir)) as f:
    for token, row in rows.items():
      f.write(_row_line(token, row) + "\n")


def hold_lock(index_dir: str):
  """An open file holding an exclusive flock on the index dir's lock file."""
  handle = open(os.path.join(index_dir, LOCK_FILE), "a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise RunLoadError(
      f"{index_dir} is already served by another Retriever "
      f"(lock {LOCK_FILE} is held)"
    ) from None
  return handle
