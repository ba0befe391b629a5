"""A docid table's files on disk (gr/docids/base.py's DocidTable.save /
load): table.json (everything but arrays), arrays.npz (scheme state, e.g.
centroids) and manifest.json (sha256 of both), each written atomically; the
manifest is written last, so a table is either whole or refused.
"""

import io
import json
import os
from typing import Any, Mapping

import numpy as np

from gr import atomic_io

FORMAT = "gr.docid_table/1"
TABLE_FILE = "table.json"
ARRAYS_FILE = "arrays.npz"
MANIFEST_FILE = "manifest.json"


class DocidTableError(ValueError):
  """A docid table is inconsistent, or its files on disk are corrupt."""


def write(
  directory: str | os.PathLike,
  fields: Mapping[str, Any],
  arrays: Mapping[str, np.ndarray],
) -> None:
  """Writes table.json (`fields`), arrays.npz, then manifest.json."""
  os.makedirs(directory, exist_ok=True)
  table_bytes = json.dumps(fields, indent=1).encode()
  buffer = io.BytesIO()
  np.savez(buffer, allow_pickle=False, **arrays)
  arrays_bytes = buffer.getvalue()
  atomic_io.write_bytes(os.path.join(directory, TABLE_FILE), table_bytes)
  atomic_io.write_bytes(os.path.join(directory, ARRAYS_FILE), arrays_bytes)
  manifest = {
    "format": FORMAT,
    "sha256": {
      TABLE_FILE: atomic_io.sha256_bytes(table_bytes),
      ARRAYS_FILE: atomic_io.sha256_bytes(arrays_bytes),
    },
  }
  atomic_io.write_bytes(
    os.path.join(directory, MANIFEST_FILE),
    json.dumps(manifest, indent=1).encode(),
  )


def read(
  directory: str | os.PathLike,
) -> tuple[Any, dict[str, np.ndarray]]:
  """(table.json's fields, arrays) of a saved table, checksums verified.

  Raises:
    DocidTableError: a file is missing, corrupt or not of FORMAT.
  """
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
  return fields, arrays


def _read_verified(directory, name: str, manifest: Mapping[str, Any]) -> bytes:
  path = os.path.join(directory, name)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DocidTableError(f"{path}: cannot read: {e}") from e
  expected = manifest.get("sha256", {}).get(name)
  if atomic_io.sha256_bytes(data) != expected:
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
