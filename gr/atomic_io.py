"""Crash-safe files: atomic whole-file writes, append-only logs, checksums.

Whole files (index versions' files, docid tables, vocabularies,
model_config.json, results, run files, BEIR folders, pseudo-queries, cached
embeddings and encoder states, checkpoint artifact manifests) are written
through `atomic_open`: a temp file in the same directory, fsync, chmod 0644,
then os.replace, so a crash leaves either the old file or the new one.
Append-only logs (the served index's update log, the online documents) go
through `append_lines` / `read_lines`: a record is committed once its line,
newline included, is on disk; readers skip a torn last line and the writer
cuts it off (`repair_log`) before appending. Not
through here: orbax checkpoints (renamed into place as a whole by orbax) and
the dynamic-corpus plots (matplotlib's savefig).
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence


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


def staging_dir(parent: str, prefix: str) -> str:
  """A new empty folder in `parent`, to be renamed into place once
  complete. mkdtemp makes it 0700; it is made 0755, as the 0644 files
  written into it, so that the folder it becomes (an index version, a
  tuned encoder, ...) is readable by another user (a service account)."""
  staging = tempfile.mkdtemp(dir=parent, prefix=prefix)
  os.chmod(staging, 0o755)
  return staging


@contextlib.contextmanager
def replaced_dir(directory: str | os.PathLike):
  """Yields an empty staging folder beside `directory`; on success it
  replaces `directory` whole (the old one is moved aside first and removed
  after), so `directory` is only ever absent, old or complete. On an
  exception the staging folder is removed and `directory` is untouched."""
  directory = os.path.abspath(os.fspath(directory))
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = staging_dir(parent, ".staging-")
  try:
    yield staging
    old = None
    if os.path.exists(directory):
      old = tempfile.mkdtemp(dir=parent, prefix=".replaced-")
      os.rename(directory, os.path.join(old, "folder"))
    os.rename(staging, directory)
    if old:
      shutil.rmtree(old)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def write_json(path: str | os.PathLike, record: Any, **dump_kwargs) -> None:
  """Writes `record` as JSON (json.dump keyword arguments) atomically."""
  with atomic_open(path, "w") as f:
    json.dump(record, f, **dump_kwargs)


def sha256_bytes(data: bytes) -> str:
  """Hex sha256 of `data`."""
  return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, opener: Callable = open) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks.

  opener: opens `path` for binary reads (e.g. tf.io.gfile.GFile for
  remote paths).
  """
  digest = hashlib.sha256()
  with opener(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def append_lines(path: str | os.PathLike, lines: Sequence[str]) -> None:
  """Appends UTF-8 lines (no newline inside one) to `path`; one fsync.

  Each line is committed once this returns; a crash during the write
  leaves at most a torn last line, which readers skip.
  """
  if any("\n" in line for line in lines):
    raise ValueError(f"{path}: a log record must be one line")
  data = "".join(line + "\n" for line in lines).encode("utf-8")
  with open(path, "ab") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
  """(line number from 1, text) of each committed line of a log.

  A last line without its newline is a write that a crash cut short: it is
  left out (`repair_log` removes it). A missing file has no lines.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  committed = data[: data.rfind(b"\n") + 1].decode("utf-8")
  return list(enumerate(committed.split("\n")[:-1], start=1))


def repair_log(path: str | os.PathLike) -> bool:
  """Cuts a torn last line off a log (the writer calls this before it
  appends); True if there was one."""
  if not os.path.exists(path):
    return False
  with open(path, "rb+") as f:
    data = f.read()
    committed = data.rfind(b"\n") + 1
    if committed == len(data):
      return False
    f.truncate(committed)
    f.flush()
    os.fsync(f.fileno())
  return True
