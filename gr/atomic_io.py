"""Atomic file writes: a crash leaves either the old file or the new one.

The library's files (index versions' files, docid tables, vocabularies,
model_config.json, results, run files, BEIR folders, pseudo-queries, cached
embeddings and encoder states) are written through here: a temp file in the
same directory, fsync, chmod 0644, then os.replace. Not through here: orbax
checkpoints and the index artifact beside them (gr/checkpoints.py: written
into orbax's temporary step directory, renamed into place as a whole) and
the dynamic-corpus plots (matplotlib's savefig).
"""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
  """Opens a temp file beside `path`; on success fsyncs and renames it.

  Text modes write UTF-8 with '\\n' newlines. On an exception the temp file
  is removed and `path` is left untouched. Missing parent dirs are created.
  """
  path = os.fspath(path)
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
  try:
    text_kwargs = {} if "b" in mode else dict(encoding="utf-8", newline="\n")
    with os.fdopen(fd, mode, **text_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are shared data.
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)
