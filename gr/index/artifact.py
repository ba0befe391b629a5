"""The index artifact: a DocidTable and the Vocabulary that encodes it.

Everything a trained model needs to turn decoded tokens back into documents
lives here, versioned on disk so that an update that crashes half-way leaves
the previous version loadable:

  <index_dir>/
    CURRENT                 name of the live version dir, written atomically
    v000003/
      docids/               DocidTable.save
      vocab/spm.model       sentencepiece model
      vocab/spm.gr_vocab.json  docid tokens + model sha256
      index.json            scheme, table version, vocab fingerprint, counts
    v000003.updates.jsonl   updates since v000003 was written, one JSON line
                            each: {"version", "add": {doc_id: [docids]},
                            "reserved": [new tokens], "reused": [retired
                            docids given out again, if any]} or
                            {"version", "remove": [doc_ids]}

A new version is written completely into its own directory first; CURRENT
is switched last (os.replace), so readers see either the old or the new
version, never a mix. Older versions beyond `keep` are deleted afterwards.

Online updates (`record_update`) append one line to the current version's
log instead of writing a version: O(k) for k documents, no copy of the table
or the sentencepiece model. `load_index` replays the log; a torn last line
(a crash mid-append) is an update that never happened. Once the log holds
more than `compact_after(num_docs)` updates, or an update changed the
scheme's state arrays, the next update writes a full version instead
(compaction), which starts an empty log.

The trie maps each docid's token ids (ending in EOS) to the document's
position in `table.doc_ids`.
"""

import dataclasses
import functools
import json
import os
import shutil
from typing import Iterable, Mapping, Sequence

from gr import atomic_io
from gr import batching
from gr.index import docid_trie
from gr.index import sentencepiece_training as sp_training
from gr.index import vocab as vocab_lib
from gr.index import wordpiece
from gr.data.beir import Document
from gr.docids import base as docids_base

CURRENT_FILE = "CURRENT"
INDEX_FILE = "index.json"
FORMAT = "gr.index/1"
UPDATES_SUFFIX = ".updates.jsonl"
MIN_COMPACTION = 1000  # updates a log may always hold before compaction


class IndexArtifactError(ValueError):
  """An index directory is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Index:
  """A docid table with its vocabulary (docid tokens = reserved tokens)."""

  table: docids_base.DocidTable
  vocab: vocab_lib.Vocabulary

  def __post_init__(self):
    reserved, tokens = self.table.reserved_tokens, self.vocab.docid_tokens
    if tokens[: len(reserved)] == reserved:
      return
    known = set(tokens)
    missing = [t for t in reserved if t not in known]
    if missing:
      raise IndexArtifactError(
        f"vocabulary lacks {len(missing)} reserved docid "
        f"tokens of the table, e.g. {missing[:3]}"
      )

  @property
  def doc_ids(self) -> tuple[str, ...]:
    """Document of each trie value: doc_ids[value]."""
    return self.table.doc_ids

  def docid_sequences(self) -> tuple[list[list[int]], list[int]]:
    """Token ids (+EOS) of every docid, and the doc position of each.

    Encoded once per Index (cached; do not modify the lists).
    """
    return self._docid_sequences

  @functools.cached_property
  def _docid_sequences(self) -> tuple[list[list[int]], list[int]]:
    position = {doc_id: i for i, doc_id in enumerate(self.table.doc_ids)}
    sequences, values = [], []
    for docid, doc_id in self.table.all_docids():
      sequences.append(self.vocab.encode_docid(docid) + [vocab_lib.EOS_ID])
      values.append(position[doc_id])
    return sequences, values

  def max_docid_length(self) -> int:
    """Longest docid in tokens, EOS included."""
    return max(len(s) for s in self.docid_sequences()[0])

  def build_trie(self, **capacities) -> docid_trie.DocidTrie:
    """The trie of every docid (values: positions in doc_ids), bulk-built.

    Args:
      **capacities: DocidTrie's capacity, vocab_size, fanout_capacity,
        level_capacity.
    """
    sequences, values = self.docid_sequences()
    return docid_trie.DocidTrie.from_padded(
      batching.pad_sequences(sequences),
      values,
      eos_id=vocab_lib.EOS_ID,
      **capacities,
    )

  def with_table(self, table: docids_base.DocidTable) -> "Index":
    """The index for an updated table; new reserved tokens are appended."""
    vocab = self.vocab
    if table.reserved_tokens != vocab.docid_tokens:
      vocab = vocab.with_docid_tokens(table.reserved_tokens)
    return Index(table, vocab)


def build_index(
  table: docids_base.DocidTable,
  texts: Sequence[str],
  work_dir: str,
  *,
  vocab_size: int = 8000,
  seed: int = 0,
) -> Index:
  """Trains sentencepiece on `texts` and wraps it with the table's tokens."""
  os.makedirs(work_dir, exist_ok=True)
  prefix = os.path.join(work_dir, os.path.splitext(vocab_lib.SP_MODEL_NAME)[0])
  sp_path = sp_training.train_sentencepiece(
    texts, prefix, vocab_size=vocab_size, seed=seed
  )
  return Index(table, vocab_lib.Vocabulary.from_table(sp_path, table))


def training_texts(
  corpus: Mapping[str, Document], queries: Mapping[str, str]
) -> list[str]:
  """What the vocabulary learns from: bodies and train queries (never titles)."""
  return [doc.text for doc in corpus.values()] + list(queries.values())


def _version_name(version: int) -> str:
  return f"v{version:06d}"


def live_versions(index_dir: str) -> list[str]:
  """Complete version directories, oldest first."""
  if not os.path.isdir(index_dir):
    return []
  return sorted(
    name
    for name in os.listdir(index_dir)
    if name.startswith("v")
    and os.path.exists(os.path.join(index_dir, name, INDEX_FILE))
  )


def save_index(index: Index, index_dir: str, *, keep: int = 3) -> str:
  """Writes `index` as a new version and makes it current. Returns its dir."""
  os.makedirs(index_dir, exist_ok=True)
  existing = live_versions(index_dir)
  number = int(existing[-1][1:]) + 1 if existing else 0
  name = _version_name(number)
  staging = atomic_io.staging_dir(index_dir, ".staging-")
  index.table.save(os.path.join(staging, "docids"))
  vocab_dir = os.path.join(staging, "vocab")
  os.makedirs(vocab_dir)
  vocab = index.vocab.copy_to(vocab_dir)
  atomic_io.write_text(
    os.path.join(staging, INDEX_FILE),
    json.dumps(
      {
        "format": FORMAT,
        "scheme": index.table.scheme,
        "table_version": index.table.version,
        "num_docs": index.table.num_docs,
        "vocab_fingerprint": vocab.fingerprint,
        "vocab_size": vocab.vocab_size,
      },
      indent=1,
    ),
  )
  os.replace(staging, os.path.join(index_dir, name))
  _switch_current(index_dir, name)
  for old in live_versions(index_dir)[:-keep]:
    shutil.rmtree(os.path.join(index_dir, old), ignore_errors=True)
    if os.path.exists(updates_path(os.path.join(index_dir, old))):
      os.remove(updates_path(os.path.join(index_dir, old)))
  return os.path.join(index_dir, name)


def _switch_current(index_dir: str, name: str) -> None:
  """Makes version `name` the live one (the commit point of save_index)."""
  atomic_io.write_text(os.path.join(index_dir, CURRENT_FILE), name + "\n")


def current_version_dir(index_dir: str) -> str:
  path = os.path.join(index_dir, CURRENT_FILE)
  if not os.path.exists(path):
    raise IndexArtifactError(
      f"{index_dir}: no {CURRENT_FILE} file: not an index "
      "directory, or no version was ever completed"
    )
  with open(path) as f:
    return os.path.join(index_dir, f.read().strip())


def load_index(index_dir: str) -> Index:
  """Loads the current version with its logged updates, verifying checksums
  and consistency."""
  version_dir = current_version_dir(index_dir)
  return replay_updates(load_index_version(version_dir), version_dir)


def updates_path(version_dir: str) -> str:
  """The update log of a version directory (beside it)."""
  return os.path.normpath(version_dir) + UPDATES_SUFFIX


def compact_after(num_docs: int) -> int:
  """Updates a log may hold before the next one writes a full version:
  an eighth of the corpus (at least MIN_COMPACTION), so the O(n) version
  write is paid once per O(n) updates."""
  return max(MIN_COMPACTION, num_docs // 8)


def record_update(
  index_dir: str,
  before: Index,
  after: Index,
  *,
  added: Iterable[str] = (),
  removed: Iterable[str] = (),
) -> bool:
  """Persists `after`, which is `before` with documents added or removed.

  Appends one line to the current version's log (O(k)), unless the update
  changed the scheme's state arrays or the log is due for compaction; then
  `after` is saved as a full version. Returns True if it compacted.
  """
  if not os.path.exists(os.path.join(index_dir, CURRENT_FILE)):
    save_index(after, index_dir)  # nothing to log against yet
    return True
  version_dir = current_version_dir(index_dir)
  base_version = _recorded_table_version(version_dir)
  added, removed = list(added), list(removed)
  arrays_kept = all(
    after.table.arrays.get(k) is v
    for k, v in before.table.arrays.items()
    if k != docids_base.RETIRED_KEY
  ) and set(after.table.arrays) <= set(before.table.arrays) | {
    docids_base.RETIRED_KEY
  }
  if (
    not arrays_kept
    or after.table.version - base_version > compact_after(after.table.num_docs)
    or after.table.version != before.table.version + 1
  ):
    save_index(after, index_dir)
    return True
  record = {"version": after.table.version}
  if added:
    record["add"] = {d: list(after.table.docids_of[d]) for d in added}
    record["reserved"] = list(
      after.table.reserved_tokens[len(before.table.reserved_tokens) :]
    )
    reused = after.table.released_from(before.table)
    if reused:
      record["reused"] = reused
  if removed:
    record["remove"] = removed
  atomic_io.append_lines(updates_path(version_dir), [json.dumps(record)])
  return False


def repair_updates(index_dir: str) -> bool:
  """Cuts a torn last line off the current log (the writer, at start)."""
  if not os.path.exists(os.path.join(index_dir, CURRENT_FILE)):
    return False
  return atomic_io.repair_log(updates_path(current_version_dir(index_dir)))


def replay_updates(index: Index, version_dir: str) -> Index:
  """`index` (version_dir's) with its log's committed updates applied."""
  path = updates_path(version_dir)
  table = index.table
  for line_no, line in atomic_io.read_lines(path):
    try:
      record = json.loads(line)
      if record["version"] != table.version + 1:
        raise ValueError(
          f"version {record['version']} does not follow {table.version}"
        )
      if "remove" in record:
        table = table.remove(record["remove"])
      if "add" in record:
        table = table.extend(
          record["add"],
          record.get("reserved", ()),
          reused=record.get("reused", ()),
        )
      if table.version != record["version"]:
        raise ValueError("a record must add or remove documents")
    except (ValueError, KeyError, TypeError) as e:
      raise IndexArtifactError(f"{path}:{line_no}: bad update: {e}") from e
  return index if table is index.table else index.with_table(table)


def _recorded_table_version(version_dir: str) -> int:
  with open(os.path.join(version_dir, INDEX_FILE)) as f:
    return int(json.load(f)["table_version"])


def load_index_version(version_dir: str) -> Index:
  """Loads one version directory (e.g. a checkpoint's index artifact)."""
  info_path = os.path.join(version_dir, INDEX_FILE)
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise IndexArtifactError(
      f"{info_path}: unreadable index record: {e}"
    ) from e
  if info.get("format") != FORMAT:
    raise IndexArtifactError(
      f"{info_path}: format {info.get('format')!r}, expected {FORMAT!r}"
    )
  table = docids_base.DocidTable.load(os.path.join(version_dir, "docids"))
  try:
    vocab = wordpiece.load_vocabulary(os.path.join(version_dir, "vocab"))
  except FileNotFoundError as e:
    raise IndexArtifactError(str(e)) from e
  if vocab.fingerprint != info["vocab_fingerprint"]:
    raise IndexArtifactError(
      f"{info_path}: vocabulary fingerprint differs from "
      "the one recorded: the version directory is corrupt"
    )
  if table.version != info["table_version"]:
    raise IndexArtifactError(
      f"{info_path}: docid table version {table.version} "
      f"!= recorded {info['table_version']}"
    )
  return Index(table, vocab)
