"""Document embeddings a user supplies (computed elsewhere), as one .npz file.

Users often embed a corpus on another machine. Embedding-based docid
schemes (semantic k-means, RQ codes) then take the vectors from a file
instead of running an encoder here. The format is one NumPy `.npz` archive
with two arrays:

  ids      [N] str    document ids (`_id` of corpus.jsonl), each once
  vectors  [N, D]     float16/32/64, finite; row i is document ids[i]

Rows may come in any order and the file may hold documents the corpus
lacks; `vectors_for` returns the corpus's rows in corpus order and fails,
naming the file and the ids, when any document has no row. Object arrays
(pickles) are refused: a data file must not run code. Errors are
`EmbeddingsFileError` naming the file and the offending row or id.
"""

import os
from typing import Sequence

import numpy as np

from gr import atomic_io

IDS, VECTORS = "ids", "vectors"


class EmbeddingsFileError(ValueError):
  """A supplied embeddings file is malformed; the message names the file."""


def write_embeddings(
  path: str, ids: Sequence[str], vectors: np.ndarray
) -> None:
  """Writes ids [N] and vectors [N, D] (float32) as an .npz atomically."""
  ids = np.asarray(list(ids), dtype=str)
  vectors = np.asarray(vectors, np.float32)
  check(path, ids, vectors)
  with atomic_io.atomic_open(path, "wb") as f:
    np.savez(f, **{IDS: ids, VECTORS: vectors})


def load_embeddings(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N] str, vectors [N, D] float32) of a checked .npz file."""
  if not os.path.isfile(path):
    raise EmbeddingsFileError(f"{path}: no such embeddings file")
  try:
    ids, vectors = _arrays(path, np.load(path, allow_pickle=False))
  except (OSError, ValueError) as e:
    if isinstance(e, EmbeddingsFileError):
      raise
    raise EmbeddingsFileError(
      f"{path}: not a readable .npz of plain arrays ({e})"
    ) from e
  check(path, ids, vectors)
  return ids.astype(str), vectors.astype(np.float32, copy=False)


def _arrays(path: str, loaded) -> tuple[np.ndarray, np.ndarray]:
  """The ids and vectors arrays of what np.load returned (closed after)."""
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise EmbeddingsFileError(
      f"{path}: holds one array {getattr(loaded, 'shape', '')}, not an .npz "
      f"with '{IDS}' [N] and '{VECTORS}' [N, D]"
    )
  with loaded as archive:
    missing = [k for k in (IDS, VECTORS) if k not in archive.files]
    if missing:
      raise EmbeddingsFileError(
        f"{path}: lacks array(s) {missing}; an embeddings file is an .npz "
        f"with '{IDS}' [N] and '{VECTORS}' [N, D] (has {archive.files})"
      )
    return archive[IDS], archive[VECTORS]


def check(path: str, ids: np.ndarray, vectors: np.ndarray) -> None:
  """Raises EmbeddingsFileError unless ids [N] (unique, non-empty strings)
  and vectors [N, D] (finite floats) fit together."""
  if ids.ndim != 1 or ids.dtype.kind not in "US":
    raise EmbeddingsFileError(
      f"{path}: '{IDS}' must be a 1-D string array, got shape {ids.shape} "
      f"dtype {ids.dtype}"
    )
  if vectors.ndim != 2 or vectors.dtype.kind != "f" or vectors.shape[1] < 1:
    raise EmbeddingsFileError(
      f"{path}: '{VECTORS}' must be a 2-D float array [N, D], got shape "
      f"{vectors.shape} dtype {vectors.dtype}"
    )
  if len(ids) != len(vectors):
    raise EmbeddingsFileError(
      f"{path}: {len(ids)} ids but {len(vectors)} vector rows"
    )
  _check_ids(path, ids)
  bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
  if bad.size:
    row = int(bad[0])
    raise EmbeddingsFileError(
      f"{path}: row {row} (id {str(ids[row])!r}) holds a NaN or infinite "
      f"value ({bad.size} such rows)"
    )


def _check_ids(path: str, ids: np.ndarray) -> None:
  """Every id non-empty and unique; the error names the rows."""
  empty = np.flatnonzero(np.char.str_len(ids) == 0)
  if empty.size:
    raise EmbeddingsFileError(f"{path}: row {int(empty[0])} has an empty id")
  order = np.argsort(ids, kind="stable")
  same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
  if same.size:
    first, second = sorted(int(r) for r in order[same[0] : same[0] + 2])
    raise EmbeddingsFileError(
      f"{path}: id {str(ids[first])!r} appears twice (rows {first} and "
      f"{second})"
    )


def vectors_for(path: str, doc_ids: Sequence[str]) -> np.ndarray:
  """[len(doc_ids), D] float32: the file's rows for `doc_ids`, in order."""
  ids, vectors = load_embeddings(path)
  row_of = {doc_id: row for row, doc_id in enumerate(ids.tolist())}
  missing = [d for d in doc_ids if d not in row_of]
  if missing:
    raise EmbeddingsFileError(
      f"{path}: no vector for {len(missing)} of {len(doc_ids)} documents, "
      f"e.g. {missing[:3]}"
    )
  return vectors[np.fromiter((row_of[d] for d in doc_ids), np.int64)]
