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

A new version is written completely into its own directory first; CURRENT
is switched last (os.replace), so readers see either the old or the new
version, never a mix. Older versions beyond `keep` are deleted afterwards.

The trie maps each docid's token ids (ending in EOS) to the document's
position in `table.doc_ids`.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Mapping, Optional, Sequence

from gr import atomic_io
from gr import decoding
from gr import trie as trie_lib
from gr import vocab as vocab_lib
from gr.data.beir import Document
from gr.docids import base as docids_base

CURRENT_FILE = "CURRENT"
INDEX_FILE = "index.json"
FORMAT = "gr.index/1"
SP_MODEL_NAME = vocab_lib.SP_MODEL_NAME


class IndexArtifactError(ValueError):
  """An index directory is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Index:
  """A docid table with its vocabulary (docid tokens = reserved tokens)."""

  table: docids_base.DocidTable
  vocab: vocab_lib.Vocabulary

  def __post_init__(self):
    missing = [
      t
      for t in self.table.reserved_tokens
      if t not in set(self.vocab.docid_tokens)
    ]
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
    """Token ids (+EOS) of every docid, and the doc position of each."""
    position = {doc_id: i for i, doc_id in enumerate(self.table.doc_ids)}
    sequences, values = [], []
    for docid, doc_id in self.table.all_docids():
      sequences.append(self.vocab.encode_docid(docid) + [vocab_lib.EOS_ID])
      values.append(position[doc_id])
    return sequences, values

  def max_docid_length(self) -> int:
    """Longest docid in tokens, EOS included."""
    return max(len(s) for s in self.docid_sequences()[0])

  def build_trie(self, capacity: Optional[int] = None) -> trie_lib.DocidTrie:
    sequences, values = self.docid_sequences()
    return trie_lib.DocidTrie.from_padded(
      decoding.pad_sequences(sequences),
      values,
      eos_id=vocab_lib.EOS_ID,
      capacity=capacity,
    )

  def with_table(self, table: docids_base.DocidTable) -> "Index":
    """The index for an updated table; new reserved tokens are appended."""
    return Index(table, self.vocab.with_docid_tokens(table.reserved_tokens))


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
  prefix = os.path.join(work_dir, os.path.splitext(SP_MODEL_NAME)[0])
  sp_path = vocab_lib.train_sentencepiece(
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
  staging = tempfile.mkdtemp(dir=index_dir, prefix=".staging-")
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
  """Loads the current version, verifying checksums and consistency."""
  return load_index_version(current_version_dir(index_dir))


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
    vocab = vocab_lib.load_vocabulary(os.path.join(version_dir, "vocab"))
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
