"""Continual indexing: add and delete documents in a trained index, with replay.

Each update makes a new *version* of the index (gr/continual/versions.py: one
checkpoint step with its index, memory and record). `update_index` builds
the next index and memory, trains in memory (gr/continual/training.py),
and only then commits the new step, so a crash at any point leaves the
previous version as the latest complete, loadable one. Version 0 is
`build_initial_version` (gr/train/indexing.py's index_and_train).

Checkpoint steps count gradient updates: an update of k steps saves step
previous + k (+1 for an update without training, e.g. `trie_only`, which
must still be a new step). `continual.json` holds the exact count.

How an update trains is its `Strategy` (gr/continual/strategies.py); what
it trains on, new documents' examples and replay (gr/continual/replay.py).
Pseudo-queries for new documents come from a `PseudoQueryGenerator`
(gr/continual/generators.py). Generative replay with a `memory_generator`
(query_generators.VectorQueryGenerator) is DSI++'s generative memory
(gr/queries/generative_memory.py): old documents' queries are sampled from
their stored vectors, and the committed memory/ keeps their ids, not their
bodies. memory/ always holds each document's vector (pretrained encoder)
in doc_vectors.npz.

The model's family (gr/model/family.py) decides the rest. With a
pretrained encoder the index uses the encoder's WordPiece vocabulary,
version 0 starts from the warm start (train_steps may be 0: step 0 is
dense retrieval through the decoder), its frozen encoder layers do not
train, and in every update, trie_only included, each docid token the new
documents create gets its embedding row from their embeddings under the
current encoder: new documents are retrievable before (or without)
training. `retrain` starts again from the family's start. A T5 model's
new rows are random (`models.extend_vocab_rows`).
"""

import dataclasses
import functools
import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import numpy as np

from gr import docids as docids_lib
from gr.continual import replay as replay_lib
from gr.continual import training
from gr.continual import versions
from gr.continual.generators import PseudoQueryGenerator
from gr.continual.generators import TextPseudoQueries
from gr.continual.strategies import Strategy
from gr.continual.strategies import TrainSettings
from gr.continual.strategies import get_strategy
from gr.data import beir
from gr.index import artifact as index_lib
from gr.model import embed
from gr.model import family as family_lib
from gr.model import models
from gr.train import indexing

PyTree = Any


@functools.lru_cache(maxsize=4)
def encoder_embedder(encoder_dir: str, max_length: int) -> embed.Embedder:
  """A pretrained encoder as the sentence embedder its semantic docids were
  clustered with (indexing.assign_docids: bodies at the input length)."""
  return embed.Embedder.load(encoder_dir, max_length=max_length)


def apply_changes(
  version: versions.Version,
  new_documents: Mapping[str, beir.Document],
  deleted: Sequence[str],
  embedder=None,
) -> tuple[index_lib.Index, beir.BeirDataset]:
  """The next index (deletions, then assign_new) and memory."""
  table = version.index.table
  if deleted:
    table = table.remove(deleted)
  if new_documents:
    scheme = docids_lib.scheme_for_table(table)
    if embedder and indexing.needs_embedder(scheme):
      scheme = docids_lib.scheme_for_table(table, embedder=embedder)
    table = scheme.assign_new(table, dict(new_documents))
  index = version.index.with_table(table)
  return index, versions.updated_memory(version.memory, new_documents, deleted)


@dataclasses.dataclass(frozen=True)
class UpdateResult:
  """What an update did: the committed version and its cost."""

  step: int
  gradient_updates: int
  seconds: float
  num_docs: int
  strategy: str


def new_document_embedder(model, current: versions.Version, settings, embedder):
  """The embedder new documents are placed with: a pretrained encoder's own
  when the docids are embedding-based (routed in the space its tree was
  clustered in), else `embedder`."""
  encoder_dir = family_lib.family_of(model).encoder_dir(model)
  scheme = docids_lib.scheme_for_table(current.index.table)
  if encoder_dir and indexing.needs_embedder(scheme):
    return encoder_embedder(encoder_dir, settings.input_length)
  return embedder


def grown_params(
  model,
  current: versions.Version,
  index: index_lib.Index,
  memory: beir.BeirDataset,
  new_documents: Mapping[str, beir.Document],
  settings: TrainSettings,
) -> tuple[Any, PyTree, dict[str, np.ndarray]]:
  """(model fitted to the grown vocabulary, the version's params with rows
  for the new docid tokens, {doc_id: vector [E]} of memory's documents).

  New rows are random (`models.extend_vocab_rows`), then, with
  `settings.warm_start`, set by the family from the new documents'
  vectors under the current encoder (a pretrained encoder's rule).
  """
  family = family_lib.family_of(model)
  model = models.fit_vocab(model, index.vocab.vocab_size)
  params = models.extend_vocab_rows(
    current.params, model.config.vocab_size, settings.seed + current.step
  )
  vectors = dict(current.vectors)
  vectors.update(
    family.document_vectors(
      model, params, index.vocab, new_documents, settings.input_length
    )
  )
  vectors = {d: v for d, v in vectors.items() if d in memory.corpus}
  if settings.warm_start:
    params = family.new_docid_rows(
      model,
      params,
      index,
      index.vocab.docid_tokens[len(current.index.vocab.docid_tokens) :],
      {d: vectors[d] for d in new_documents if d in vectors},
    )
  return model, params, vectors


def initial_start(
  model, index: index_lib.Index, corpus, settings: TrainSettings
) -> family_lib.WarmStart:
  """The family's start over `index` as version 0 makes it (the process's
  frozen-layer cache)."""
  return family_lib.family_of(model).warm_start(
    model,
    index,
    corpus,
    seed=settings.seed,
    input_length=settings.input_length,
    target_length=index.max_docid_length(),
    warm=settings.warm_start,
    temperature=settings.warm_start_temperature,
  )


def train_update(
  model,
  params: PyTree,
  strategy: Strategy,
  *,
  steps: int,
  settings: TrainSettings,
  index: index_lib.Index,
  memory: beir.BeirDataset,
  new_documents: Mapping[str, beir.Document],
  source: replay_lib.ReplaySource,
  name: str,
) -> PyTree:
  """`steps` updates of `strategy` from `params` (retrain: from the
  family's start) on the new documents and what it replays."""
  mixture, replay_mixture = replay_lib.update_mixtures(
    name, strategy, index, memory, new_documents, source
  )
  init_params = params
  if strategy.retrain:  # from scratch (a pretrained encoder: warm start)
    init_params = initial_start(model, index, memory.corpus, settings).params
  return training.train_params(
    model,
    mixture=mixture,
    steps=steps,
    settings=settings,
    sam_rho=strategy.sam_rho,
    init_params=init_params,
    target_length=index.max_docid_length(),
    replay_mixture=replay_mixture,
    replay_per_batch=strategy.replay_per_batch if replay_mixture else 0,
  )


def apply_update(
  *,
  model_dir: str,
  index_dir: str,
  model,
  new_documents: Mapping[str, beir.Document],
  deleted_doc_ids: Sequence[str],
  strategy: Strategy,
  train_steps: int,
  settings: TrainSettings,
  generator: PseudoQueryGenerator,
  embedder=None,
  memory_generator=None,
  name: str = "continual",
  keep: int = 3,
) -> UpdateResult:
  """One update of the latest version in `model_dir` (see update_index)."""
  start = time.time()
  current = versions.load_version(model_dir)
  versions.publish_index(
    current.index, index_dir
  )  # repairs a crash after a commit
  if new_documents:
    embedder = new_document_embedder(model, current, settings, embedder)
  index, memory = apply_changes(
    current, new_documents, deleted_doc_ids, embedder
  )
  model, params, vectors = grown_params(
    model, current, index, memory, new_documents, settings
  )
  # Nothing new to learn from a deletion (retrain still retrains).
  learns = bool(new_documents) or strategy.retrain
  updates = train_steps if strategy.trains and learns else 0
  if updates:
    source = replay_lib.ReplaySource(
      generator,
      memory_generator,
      vectors,
      draw=current.step,
      max_docs=strategy.replay_per_batch * updates,
    )
    params = train_update(
      model,
      params,
      strategy,
      steps=updates,
      settings=settings,
      index=index,
      memory=memory,
      new_documents=new_documents,
      source=source,
      name=name,
    )
  if strategy.replay == "generative" and memory_generator is not None:
    memory = versions.without_bodies(memory)  # the generator is the memory
  record = versions.new_record(
    current.record,
    strategy=strategy.name,
    updates=updates,
    seconds=time.time() - start,
    added=len(new_documents),
    deleted=len(deleted_doc_ids),
    num_docs=index.table.num_docs,
  )
  step = current.step + max(updates, 1)
  versions.commit_version(
    model_dir, index_dir, step, params, index, memory, record, keep, vectors
  )
  logging.info(
    "update %s: +%d -%d docs, %d updates, step %d, %.1fs",
    strategy.name,
    len(new_documents),
    len(deleted_doc_ids),
    updates,
    step,
    time.time() - start,
  )
  return UpdateResult(
    step, updates, time.time() - start, index.table.num_docs, strategy.name
  )


def build_initial_version(
  *,
  model_dir: str,
  index_dir: str,
  model,
  dataset: beir.BeirDataset,
  scheme: str,
  scheme_params: Mapping[str, Any],
  vocab_size: int,
  train_steps: int,
  settings: TrainSettings,
  generator: PseudoQueryGenerator,
  name: str = "continual",
  task_rates: Mapping[str, float] = dict(replay_lib.INITIAL_TASK_RATES),
  keep: int = 3,
) -> UpdateResult:
  """Version 0: index `dataset` (docids, vocabulary) and train on it.

  A pretrained-encoder model starts warm (module docstring); with
  train_steps = 0 its warm start is version 0 as it is.
  """
  start = time.time()
  memory = versions.train_memory(dataset)
  trains = train_steps > 0

  def register_tasks(index: index_lib.Index) -> str:
    return replay_lib.initial_mixture(
      name, memory, index, generator, task_rates
    )

  def train(run: indexing.IndexedRun) -> PyTree:
    return training.train_params(
      run.model,
      mixture=run.mixture,
      steps=train_steps,
      settings=settings,
      sam_rho=settings.optimizer.sam_rho,
      init_params=run.params,
      target_length=run.target_length,
    )

  run = indexing.index_and_train(
    dataset,
    index_dir,
    model,
    indexing.IndexSpec(scheme, scheme_params, vocab_size, settings.seed),
    input_length=settings.input_length,
    register_tasks=register_tasks if trains else None,
    warm=settings.warm_start,
    temperature=settings.warm_start_temperature,
    embedding_cache_dir=os.path.join(
      os.path.dirname(os.path.abspath(model_dir)), "encoder_cache"
    ),
    train=train if trains else None,
  )
  if run.params is None:
    raise ValueError(
      "train_steps = 0 needs a pretrained encoder (a T5 "
      "model has no initial params to commit)"
    )
  return commit_initial(
    model_dir, index_dir, run, memory, train_steps, start=start, keep=keep
  )


def commit_initial(
  model_dir: str,
  index_dir: str,
  run: indexing.IndexedRun,
  memory: beir.BeirDataset,
  train_steps: int,
  *,
  start: float,
  keep: int,
) -> UpdateResult:
  """Commits version 0 (step `train_steps`) of an indexed, trained run."""
  record = versions.new_record(
    None,
    strategy="initial",
    updates=train_steps,
    seconds=time.time() - start,
    added=len(memory.corpus),
    deleted=0,
    num_docs=run.index.table.num_docs,
  )
  versions.commit_version(
    model_dir,
    index_dir,
    train_steps,
    run.params,
    run.index,
    memory,
    record,
    keep,
    run.start.vectors,
  )
  return UpdateResult(
    train_steps,
    train_steps,
    time.time() - start,
    run.index.table.num_docs,
    "initial",
  )


# ------------------------------------------------------------ entry points --
# (gin binds them through gr/experiments/configurables.py)


def index_corpus(
  *,
  data_dir: str,
  model_dir: str,
  index_dir: str,
  model,
  scheme: str = "naive",
  scheme_params: Optional[Mapping[str, Any]] = None,
  vocab_size: int = 8000,
  train_steps: int = 1000,
  settings: TrainSettings = TrainSettings(),
  generator: Optional[PseudoQueryGenerator] = None,
) -> UpdateResult:
  """Creates version 0 of a continual index from a BEIR folder."""
  return build_initial_version(
    model_dir=model_dir,
    index_dir=index_dir,
    model=model,
    dataset=beir.BeirDataset.load(data_dir),
    scheme=scheme,
    scheme_params=scheme_params or {},
    vocab_size=vocab_size,
    train_steps=train_steps,
    settings=settings,
    generator=generator or TextPseudoQueries(seed=settings.seed),
  )


def update_index(
  *,
  model_dir: str,
  index_dir: str,
  model,
  new_documents: Mapping[str, beir.Document] | str = (),
  deleted_doc_ids: Sequence[str] = (),
  strategy: str | Strategy = "new_only",
  train_steps: int = 100,
  replay_ratio: Optional[float] = None,
  sam_rho: Optional[float] = None,
  replay_per_batch: Optional[int] = None,
  settings: TrainSettings = TrainSettings(),
  generator: Optional[PseudoQueryGenerator] = None,
  memory_generator=None,
  embedder=None,
  keep: int = 3,
) -> UpdateResult:
  """Adds and deletes documents in the latest version of a continual index.

  Args:
    model_dir: checkpoints of the continual index (see module docstring).
    index_dir: where the latest index is published (gr/index/artifact.py layout).
    model: the EncoderDecoderModel (its vocab_size is fitted here).
    new_documents: {doc_id: Document}, or a corpus.jsonl path.
    deleted_doc_ids: documents to remove from the table and trie.
    strategy: a STRATEGIES name or a Strategy.
    train_steps: gradient updates of this update (unless trie_only).
    replay_ratio, sam_rho, replay_per_batch: override the strategy's values.
    settings: batch size, lengths, optimizer, seed.
    generator: pseudo-queries (default TextPseudoQueries).
    memory_generator: the generative memory (query_generators.VectorQueryGenerator)
      for generative replay: old documents replay from their stored
      vectors, and the new version keeps no bodies.
    embedder: passed to semantic/multi schemes for new documents (a
      pretrained-encoder model routes with its own encoder instead).
    keep: checkpoints kept in model_dir.

  Returns:
    The committed step and what it cost.
  """
  if isinstance(new_documents, str):
    new_documents = beir.read_corpus(new_documents)
  return apply_update(
    model_dir=model_dir,
    index_dir=index_dir,
    model=model,
    new_documents=dict(new_documents),
    deleted_doc_ids=list(deleted_doc_ids),
    strategy=get_strategy(
      strategy,
      replay_ratio=replay_ratio,
      sam_rho=sam_rho,
      replay_per_batch=replay_per_batch,
    ),
    train_steps=train_steps,
    settings=settings,
    generator=generator or TextPseudoQueries(seed=settings.seed),
    embedder=embedder,
    memory_generator=memory_generator,
    keep=keep,
  )
