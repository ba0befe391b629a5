"""The examples and mixtures an update trains on: new documents and replay.

New documents get indexing and pseudo-query examples; the old ones what the
strategy replays (gr/continual/strategies.py): stored indexing and
retrieval examples (experience replay) or fresh pseudo-queries (generative
replay, from bodies or, with the generative memory, from stored vectors).
Each part is a seqio task named by a digest of its examples (registering
the same examples twice is safe), mixed at the strategy's rates.
"""

import dataclasses
import hashlib
import json
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from gr.continual import versions
from gr.continual.generators import PseudoQueryGenerator
from gr.continual.strategies import Strategy
from gr.data import beir
from gr.index import artifact as index_lib
from gr.queries import generative_memory as memory_lib
from gr.train import tasks

NEW, REPLAY = "new", "replay"
INITIAL_TASK_RATES = (
  ("indexing", 1.0),
  ("retrieval", 1.0),
  ("pseudo_query", 1.0),
)


def _digest(payload: Any) -> str:
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def new_document_examples(
  index: index_lib.Index,
  documents: Mapping[str, beir.Document],
  pseudo: Mapping[str, Sequence[str]],
) -> list[tasks.Example]:
  """Indexing and pseudo-query examples for `documents` (all in the table)."""
  table = _table_of(index.table, documents)
  return tasks.indexing_examples(
    documents, table, index.vocab
  ) + tasks.pseudo_query_examples(pseudo, table, index.vocab)


def _table_of(table, doc_ids: Iterable[str]):
  """`table` restricted to `doc_ids` (same scheme, version and tokens)."""
  keep = set(doc_ids)
  return dataclasses.replace(
    table, docids_of={d: ids for d, ids in table.docids_of.items() if d in keep}
  )


@dataclasses.dataclass(frozen=True)
class ReplaySource:
  """What replay may draw on for the old documents of an update.

  memory_generator: the generative memory (query_generators.VectorQueryGenerator):
    with it, generative replay writes queries from the stored `vectors`
    and the version keeps no bodies; without it, from old bodies.
  vectors: {doc_id: vector} of the indexed documents.
  draw: seeds this update's fresh samples (the version's step).
  max_docs: replay at most this many old documents (seeded sample; 0: all).
  """

  generator: PseudoQueryGenerator
  memory_generator: Any = None
  vectors: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  draw: int = 0
  max_docs: int = 0


def _sampled(doc_ids: Sequence[str], count: int, seed: int) -> list[str]:
  if not count or count >= len(doc_ids):
    return list(doc_ids)
  rng = np.random.default_rng(seed)
  return [
    doc_ids[i] for i in sorted(rng.choice(len(doc_ids), count, replace=False))
  ]


def replay_examples(
  strategy: Strategy,
  index: index_lib.Index,
  memory: beir.BeirDataset,
  old_ids: Sequence[str],
  source: "ReplaySource | PseudoQueryGenerator",
) -> list[tasks.Example]:
  """Examples for the old documents that `strategy` replays (maybe none)."""
  if not isinstance(source, ReplaySource):
    source = ReplaySource(source)
  old_ids = _sampled(list(old_ids), source.max_docs, source.draw)
  table = _table_of(index.table, old_ids)
  if strategy.replay == "experience":
    old = {d: memory.corpus[d] for d in old_ids}
    if not all(doc.text for doc in old.values()):
      raise ValueError(
        "experience replay needs the old bodies, but this "
        "version's memory holds ids only (generative memory)"
      )
    return tasks.indexing_examples(
      old, table, index.vocab
    ) + tasks.retrieval_examples(
      memory.queries, memory.qrels.get("train", {}), table, index.vocab
    )
  if strategy.replay == "generative":
    if source.memory_generator is not None:
      pseudo = source.memory_generator.generate_vectors(
        memory_lib.vectors_of(source.vectors, old_ids), draw=source.draw
      )
    else:
      pseudo = source.generator.generate({d: memory.corpus[d] for d in old_ids})
    return tasks.pseudo_query_examples(pseudo, table, index.vocab)
  return []


def register_update_mixture(
  name: str,
  index: index_lib.Index,
  parts: Mapping[str, Sequence[tasks.Example]],
  rates: Mapping[str, float],
) -> str:
  """Registers one train task per non-empty part and their mixture."""
  table = index.table
  task_rates = {}
  for part, examples in parts.items():
    if not examples:
      continue
    digest = _digest([dataclasses.astuple(e) for e in examples])
    task = tasks.register_task(
      f"gr.{name}.{table.scheme}.v{table.version}.{part}_{digest}.v1",
      {tasks.TRAIN: list(examples)},
      index.vocab,
      docid_targets=True,
    )
    task_rates[task] = rates[part]
  if not task_rates:
    raise ValueError(f"update {name}: no training examples")
  mixture = f"gr.{name}.update_{_digest(sorted(task_rates.items()))}"
  return tasks.register_gr_mixture(mixture, task_rates)


def initial_mixture(
  name: str,
  memory: beir.BeirDataset,
  index: index_lib.Index,
  generator: PseudoQueryGenerator,
  task_rates: Mapping[str, float],
) -> str:
  """Indexing + train retrieval + pseudo-query mixture over all of memory."""
  pseudo = generator.generate(memory.corpus)
  tag = f"{name}_{_digest([sorted(memory.corpus), pseudo])}"
  return tasks.register_mixture(tag, memory, index, pseudo, task_rates)


def update_mixtures(
  name: str,
  strategy: Strategy,
  index: index_lib.Index,
  memory: beir.BeirDataset,
  new_documents: Mapping[str, beir.Document],
  source: ReplaySource,
) -> tuple[str, Optional[str]]:
  """(mixture, replay mixture or None) an update trains on: retrain the
  initial-style one; with a replay budget the replay part apart."""
  if strategy.retrain:
    if not versions.has_bodies(memory):
      raise ValueError(
        "retrain needs every body, but this version's memory "
        "holds ids only (written under the generative memory)"
      )
    return initial_mixture(
      name, memory, index, source.generator, dict(INITIAL_TASK_RATES)
    ), None
  old_ids = [d for d in memory.corpus if d not in new_documents]
  new = new_document_examples(
    index, new_documents, source.generator.generate(new_documents)
  )
  replay = replay_examples(strategy, index, memory, old_ids, source)
  if strategy.replay_per_batch and replay:
    return (
      register_update_mixture(name, index, {NEW: new}, {NEW: 1.0}),
      register_update_mixture(name, index, {REPLAY: replay}, {REPLAY: 1.0}),
    )
  return register_update_mixture(
    name,
    index,
    {NEW: new, REPLAY: replay},
    {NEW: 1.0, REPLAY: strategy.replay_ratio},
  ), None
