"""Versions of a continually updated index: storage, loading, commit.

A *version* is one orbax checkpoint step in `model_dir`: the params, and
beside them (gr/train/checkpoints.py) an index artifact holding

  docids/ vocab/ index.json   the index version (gr/index/artifact.py layout)
  memory/                     a BEIR folder: every indexed document and the
                              train queries/qrels seen so far (replay
                              source); under the generative memory the
                              documents' ids only (doc_ids.json)
  continual.json              the version record: cumulative gradient
                              updates and one entry per update

The checkpoint is the commit point: `commit_version` stages the new index
and memory in a temporary directory and only then saves the new step
(orbax writes it under a temporary name and renames it into place), so a
crash at any point leaves the previous step as the latest complete,
loadable version. `index_dir` is a published copy of the latest version's
index (gr/index/artifact.py's CURRENT switch); it is written after the commit and
repaired from the checkpoint by the next update (`publish_index`) if a
crash came between the two.

gr/continual/update.py makes the versions (the updates themselves).
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from gr import atomic_io
from gr.train import checkpoints
from gr.queries import generative_memory as memory_lib
from gr.index import artifact as index_lib
from gr.data import beir

PyTree = Any
MEMORY_DIR = "memory"
RECORD_FILE = "continual.json"
RECORD_FORMAT = "gr.continual/1"
DOC_IDS_FILE = "doc_ids.json"  # memory without bodies: the ids it holds


# ---------------------------------------------------------------- memory --


def train_memory(dataset: beir.BeirDataset) -> beir.BeirDataset:
  """The corpus with only its train queries and qrels (what replay may use)."""
  return dataset.restricted_to(dataset.corpus, splits=["train"])


def has_bodies(memory: beir.BeirDataset) -> bool:
  """Whether memory holds the documents' bodies (experience replay's
  memory) rather than their ids only (the generative memory's)."""
  return all(doc.text for doc in memory.corpus.values())


def without_bodies(memory: beir.BeirDataset) -> beir.BeirDataset:
  """Memory with each document reduced to its id (title and text gone)."""
  return dataclasses.replace(
    memory, corpus={d: beir.Document(d, "", "") for d in memory.corpus}
  )


def write_memory(
  folder: str, memory: beir.BeirDataset, vectors: Mapping[str, np.ndarray]
) -> None:
  """memory/: a BEIR folder when it holds bodies; else DOC_IDS_FILE with
  the train queries and qrels. Document vectors (if any) beside it."""
  if has_bodies(memory):
    beir.write_beir(folder, memory.corpus, memory.queries, memory.qrels)
  else:
    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
    with atomic_io.atomic_open(os.path.join(folder, DOC_IDS_FILE)) as f:
      json.dump(list(memory.corpus), f)
    beir.write_queries(os.path.join(folder, "queries.jsonl"), memory.queries)
    for split, qrels in memory.qrels.items():
      beir.write_qrels(os.path.join(folder, "qrels", f"{split}.tsv"), qrels)
  if vectors:
    memory_lib.save_vectors(
      os.path.join(folder, memory_lib.VECTORS_FILE), vectors
    )


def load_memory(folder: str) -> tuple[beir.BeirDataset, dict[str, np.ndarray]]:
  """(memory, {doc_id: vector}) as `write_memory` wrote them."""
  vectors = memory_lib.load_vectors(
    os.path.join(folder, memory_lib.VECTORS_FILE)
  )
  if os.path.exists(os.path.join(folder, "corpus.jsonl")):
    return beir.BeirDataset.load(folder), vectors
  with open(os.path.join(folder, DOC_IDS_FILE)) as f:
    corpus = {d: beir.Document(d, "", "") for d in json.load(f)}
  queries = beir.read_queries(os.path.join(folder, "queries.jsonl"))
  qrels_dir = os.path.join(folder, "qrels")
  qrels = {
    name[: -len(".tsv")]: beir.read_qrels(
      os.path.join(qrels_dir, name), query_ids=queries, corpus_ids=corpus
    )
    for name in sorted(os.listdir(qrels_dir))
    if name.endswith(".tsv")
  }
  return beir.BeirDataset(corpus, queries, qrels), vectors


def updated_memory(
  memory: beir.BeirDataset,
  new_documents: Mapping[str, beir.Document],
  deleted: Iterable[str],
) -> beir.BeirDataset:
  """Memory with documents added and removed (and qrels to removed ones)."""
  deleted = set(deleted)
  merged = dataclasses.replace(
    memory, corpus={**memory.corpus, **new_documents}
  )
  kept = [d for d in merged.corpus if d not in deleted]
  return merged.restricted_to(kept, splits=["train"])


# -------------------------------------------------------------- versions --


@dataclasses.dataclass(frozen=True)
class Version:
  """One committed version: checkpoint step, params, index, memory, record,
  and (pretrained encoder) each indexed document's vector."""

  step: int
  params: PyTree
  index: index_lib.Index
  memory: beir.BeirDataset
  record: Mapping[str, Any]
  vectors: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def gradient_updates(self) -> int:
    return int(self.record["gradient_updates"])


def write_version_files(
  index: index_lib.Index,
  memory: beir.BeirDataset,
  record: Mapping[str, Any],
  staging_dir: str,
  vectors: Mapping[str, np.ndarray] = {},
) -> str:  # pylint: disable=dangerous-default-value
  """Writes index + memory (+ vectors) + record under `staging_dir`;
  returns the dir to save as the checkpoint's artifact."""
  version_dir = index_lib.save_index(index, staging_dir)
  write_memory(os.path.join(version_dir, MEMORY_DIR), memory, vectors)
  with atomic_io.atomic_open(os.path.join(version_dir, RECORD_FILE)) as f:
    json.dump(dict(record), f, indent=1)
  return version_dir


def load_version(model_dir: str, step: Optional[int] = None) -> Version:
  """The latest (or given) committed version in `model_dir`, verified.

  Raises:
    FileNotFoundError: no finished checkpoint in `model_dir`.
    checkpoints.ArtifactError: the step's artifact fails verification or was
      not written by this module (no memory/ or continual.json).
  """
  artifact = checkpoints.load_artifact(model_dir, step)
  step = int(artifact.parent.parent.name)
  record_path = os.path.join(artifact, RECORD_FILE)
  if not os.path.exists(record_path) or not os.path.isdir(
    os.path.join(artifact, MEMORY_DIR)
  ):
    raise checkpoints.ArtifactError(
      f"{artifact}: no {RECORD_FILE} or {MEMORY_DIR}/: step {step} of "
      f"{model_dir} was not written by gr.continual.update (use index_corpus)"
    )
  with open(record_path) as f:
    record = json.load(f)
  if record.get("format") != RECORD_FORMAT:
    raise checkpoints.ArtifactError(
      f"{record_path}: format {record.get('format')!r}"
    )
  memory, vectors = load_memory(os.path.join(artifact, MEMORY_DIR))
  return Version(
    step=step,
    params=checkpoints.restore_params(model_dir, step),
    index=index_lib.load_index_version(os.fspath(artifact)),
    memory=memory,
    record=record,
    vectors=vectors,
  )


def commit(
  model_dir: str, step: int, params: PyTree, artifact_dir: str, *, keep: int = 3
) -> None:
  """Saves params + artifact as `step` (atomic: orbax renames when done)."""
  manager = checkpoints.make_manager(model_dir, keep=keep, async_save=False)
  checkpoints.save(manager, step, {"params": params}, artifact_dir, force=True)
  manager.wait_until_finished()
  manager.close()


def publish_index(index: index_lib.Index, index_dir: str) -> None:
  """Makes `index` the current version of `index_dir` unless it already is."""
  if os.path.exists(os.path.join(index_dir, index_lib.CURRENT_FILE)):
    published = index_lib.load_index(index_dir)
    if (
      published.table == index.table
      and published.vocab.fingerprint == index.vocab.fingerprint
    ):
      return
  index_lib.save_index(index, index_dir)


def new_record(
  previous: Optional[Mapping[str, Any]],
  *,
  strategy: str,
  updates: int,
  seconds: float,
  added: int,
  deleted: int,
  num_docs: int,
) -> dict[str, Any]:
  """The version record after one more step (initial: previous=None)."""
  history = list(previous["history"]) if previous else []
  history.append(
    {
      "strategy": strategy,
      "gradient_updates": updates,
      "seconds": round(seconds, 3),
      "added": added,
      "deleted": deleted,
      "num_docs": num_docs,
    }
  )
  total = (previous["gradient_updates"] if previous else 0) + updates
  return {
    "format": RECORD_FORMAT,
    "gradient_updates": total,
    "history": history,
  }


def _staging_dir(model_dir: str) -> str:
  parent = os.path.dirname(os.path.abspath(model_dir))
  return atomic_io.staging_dir(parent, ".gr-staging-")


def commit_version(
  model_dir: str,
  index_dir: str,
  step: int,
  params,
  index,
  memory,
  record,
  keep: int,
  vectors=None,
) -> None:
  """Stages the artifact, commits the checkpoint, then publishes the index."""
  staging = _staging_dir(model_dir)
  try:
    artifact = write_version_files(
      index, memory, record, staging, vectors or {}
    )
    commit(model_dir, step, params, artifact, keep=keep)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  publish_index(index, index_dir)
