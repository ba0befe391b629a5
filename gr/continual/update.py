"""Continual indexing: add and delete documents in a trained index, with replay.

Each update makes a new *version* of the index (gr/continual/versions.py: one
checkpoint step with its index, memory and record). `update_index` builds
the next index and memory, trains in memory, and only then commits the new
step, so a crash at any point leaves the previous version as the latest
complete, loadable one. Training runs gr/train/loop.py's step loop (`run_loop`,
in memory: no checkpoints of its own) on the configured ('data', 'model')
mesh (`TrainSettings.mesh_data`, `mesh_model`).

Checkpoint steps count gradient updates: an update of k steps saves step
previous + k (+1 for an update without training, e.g. `trie_only`, which
must still be a new step). `continual.json` holds the exact count.

Strategies (`STRATEGIES`; any with `sam_rho` > 0 uses sharpness-aware
minimisation):

  trie_only          no training: new docids enter the trie only
  new_only           fine-tune on the new documents (indexing + pseudo-queries)
  experience_replay  + stored old indexing and retrieval examples at
                     `replay_ratio` (mixture rate; the new documents' is 1),
                     or exactly `replay_per_batch` per batch (the budget)
  generative_replay  + fresh pseudo-queries for OLD documents
  generative_replay_sam  the same with SAM
  sam                new_only with SAM
  retrain            from scratch on everything indexed so far (reference)

Pseudo-queries for new documents come from a `PseudoQueryGenerator`: body
sentences and spans (`TextPseudoQueries`, gr/queries/pseudo_queries.py) or what a
doc2query model sampled (`StoredPseudoQueries`, gr/queries/doc2query.py). Generative
replay with a `memory_generator` (doc2query.VectorQueryGenerator) is DSI++'s
generative memory (gr/queries/generative_memory.py): old documents' queries are
sampled from their stored vectors, and the committed memory/ keeps their
ids, not their bodies. memory/ always holds each document's vector
(pretrained encoder) in doc_vectors.npz.

With a pretrained encoder (a BertT5Config model, gr/model/bert_network.py) the
index uses the encoder's WordPiece vocabulary, version 0 starts from the
warm-started params of gr/model/warm_start.py (train_steps may be 0: step 0 is
dense retrieval through the decoder), its frozen encoder layers do not
train, and in every update, trie_only included, each docid token the new
documents create gets its embedding row from their embeddings under the
current encoder (warm_start.new_docid_rows): new documents are retrievable
before (or without) training. `retrain` starts again from the warm start.
A T5 model's new rows are random (`models.extend_vocab_rows`).
"""

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

from absl import logging
import jax.numpy as jnp
import numpy as np

from gr import docids as docids_lib
from gr.model import embed
from gr.model import encoder_cache
from gr.queries import generative_memory as memory_lib
from gr.index import artifact as index_lib
from gr.train import indexing
from gr.model import models
from gr import partitioning
from gr.model import pretrained
from gr.queries import pseudo_queries as pseudo_lib
from gr.train import tasks
from gr.train import loop as train_lib
from gr.continual import versions
from gr.model import warm_start
from gr.data import beir

PyTree = Any
NEW, REPLAY = "new", "replay"
INITIAL_TASK_RATES = (
  ("indexing", 1.0),
  ("retrieval", 1.0),
  ("pseudo_query", 1.0),
)


# ------------------------------------------------------------ strategies --


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How an update trains.

  Attributes:
    name: label for logs and results.
    trains: False for trie_only (docids enter the trie, params unchanged).
    replay: "none", "experience" (stored old indexing + retrieval examples)
      or "generative" (pseudo-queries for old documents).
    replay_ratio: mixture rate of the replay task; the new documents' is 1.
    retrain: train from scratch on everything (ignores `replay`).
    sam_rho: sharpness-aware minimisation radius (0: plain optimizer). As
      in DSI++, the dynamic-corpus runner also indexes D0 with it.
    replay_per_batch: the replay budget: k > 0 puts exactly k old examples
      in every batch of an update (its batch_size - k are new), instead of
      mixing at `replay_ratio`.
  """

  name: str
  trains: bool = True
  replay: str = "none"
  replay_ratio: float = 1.0
  retrain: bool = False
  sam_rho: float = 0.0
  replay_per_batch: int = 0

  def __post_init__(self):
    if self.replay not in ("none", "experience", "generative"):
      raise ValueError(
        f"Strategy {self.name!r}: replay={self.replay!r}, "
        "expected 'none', 'experience' or 'generative'"
      )
    if self.replay_ratio <= 0 or self.sam_rho < 0 or self.replay_per_batch < 0:
      raise ValueError(
        f"Strategy {self.name!r}: need replay_ratio > 0, "
        "sam_rho >= 0 and replay_per_batch >= 0, got "
        f"{self.replay_ratio}, {self.sam_rho}, "
        f"{self.replay_per_batch}"
      )


STRATEGIES = {
  s.name: s
  for s in (
    Strategy("trie_only", trains=False),
    Strategy("new_only"),
    Strategy("experience_replay", replay="experience"),
    Strategy("generative_replay", replay="generative"),
    Strategy("generative_replay_sam", replay="generative", sam_rho=0.05),
    Strategy("sam", sam_rho=0.05),
    Strategy("retrain", retrain=True),
  )
}


def get_strategy(strategy: "str | Strategy", **overrides) -> Strategy:
  """A preset by name (or a Strategy), with fields replaced by `overrides`."""
  if isinstance(strategy, str):
    if strategy not in STRATEGIES:
      raise ValueError(
        f"unknown strategy {strategy!r}; known: {sorted(STRATEGIES)}"
      )
    strategy = STRATEGIES[strategy]
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return dataclasses.replace(strategy, **overrides)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Training hyper-parameters shared by the initial indexing and updates.

  warm_start, warm_start_temperature: how a pretrained-encoder model's
  initial params are made (gr/model/warm_start.py; ignored for T5); with
  warm_start off, new docid rows are not set from document embeddings
  either (the ablation).
  mesh_data, mesh_model: the ('data', 'model') mesh every update trains
  on, as train()'s (-1: all remaining devices).
  """

  batch_size: int = 32
  input_length: int = 64
  optimizer: train_lib.OptimizerConfig = train_lib.OptimizerConfig()
  seed: int = 0
  log_every: int = 100
  mesh_data: int = -1
  mesh_model: int = 1
  warm_start: bool = True
  warm_start_temperature: float = 0.05


# -------------------------------------------------------- pseudo-queries --


class PseudoQueryGenerator(Protocol):
  """Pseudo-queries for documents: {doc_id: [query, ...]}."""

  def generate(
    self, documents: Mapping[str, beir.Document]
  ) -> dict[str, list[str]]: ...


@dataclasses.dataclass(frozen=True)
class TextPseudoQueries:
  """Sentences and random spans of each body (gr/queries/pseudo_queries.py)."""

  num_sentences: int = 1
  num_spans: int = 2
  seed: int = 0

  def generate(
    self, documents: Mapping[str, beir.Document]
  ) -> dict[str, list[str]]:
    return pseudo_lib.build_pseudo_queries(
      documents.values(),
      num_spans=self.num_spans,
      num_sentences=self.num_sentences,
      seed=self.seed,
    )


@dataclasses.dataclass(frozen=True)
class StoredPseudoQueries:
  """Pseudo-queries read from a file (scripts/generate_queries.py): what a
  doc2query model sampled from each body, seeded per document, so looking
  them up equals generating them again. Documents absent get none."""

  path: str

  def generate(
    self, documents: Mapping[str, beir.Document]
  ) -> dict[str, list[str]]:
    stored = _read_pseudo_queries(self.path)
    return {d: list(stored[d]) for d in documents if d in stored}


@functools.lru_cache(maxsize=4)
def _read_pseudo_queries(path: str) -> dict[str, list[str]]:
  return pseudo_lib.read_pseudo_queries(path)


def document_vectors(
  model,
  params: PyTree,
  vocab,
  documents: Mapping[str, beir.Document],
  *,
  input_length: int,
) -> dict[str, np.ndarray]:
  """{doc_id: unit mean-pooled encoder output of its body} under `params`
  (frozen layers looked up in the shared state cache)."""
  return pretrained.body_vectors(
    model,
    params,
    vocab,
    documents,
    input_length,
    cache_for=lambda rows: shared_states(model, params, rows),
  )


def warm_start_new_rows(
  model,
  params: PyTree,
  index: index_lib.Index,
  new_tokens: Sequence[str],
  vectors: Mapping[str, np.ndarray],
) -> PyTree:
  """Pretrained-encoder models: `params` with the rows of `new_tokens` set
  from their documents' `vectors` (warm_start.new_docid_rows). T5:
  `params`."""
  if not pretrained.is_pretrained(model) or not new_tokens or not vectors:
    return params
  old = params["token_embedder"]["embedding"]
  embedding = warm_start.new_docid_rows(
    np.asarray(old), index.table, index.vocab, new_tokens, dict(vectors)
  )
  return {
    **params,
    "token_embedder": {
      **params["token_embedder"],
      "embedding": jnp.asarray(embedding, old.dtype),
    },
  }


# Frozen-encoder states of every input seen in this process, per frozen
# parameters: updates (and the cells of a dynamic-corpus run) encode each
# body and query once.
_STATE_CACHES: dict[str, encoder_cache.EncoderCache] = {}


def shared_states(
  model, params: PyTree, rows: Sequence[np.ndarray]
) -> Optional[encoder_cache.EncoderCache]:
  """The process's frozen-layer cache grown to cover `rows` (None when the
  model has no frozen encoder layers)."""
  if not (pretrained.is_pretrained(model) and model.has_frozen_encoder_layers):
    return None
  frozen = model.config.frozen_layers
  key = encoder_cache.fingerprint(
    encoder_cache.frozen_params(params, frozen), frozen, []
  )
  cache = _STATE_CACHES.get(
    key,
    encoder_cache.EncoderCache(
      [], np.zeros((0, model.config.encoder_width), np.float16)
    ),
  )
  cache = cache.with_inputs(model, params, rows)
  _STATE_CACHES[key] = cache
  return cache


@functools.lru_cache(maxsize=4)
def encoder_embedder(encoder_dir: str, max_length: int) -> embed.Embedder:
  """A pretrained encoder as the sentence embedder its semantic docids were
  clustered with (indexing.assign_docids: bodies at the input length)."""
  return embed.Embedder.load(encoder_dir, max_length=max_length)


def pretrained_initial_params(
  model,
  index: index_lib.Index,
  corpus: Mapping[str, beir.Document],
  settings: TrainSettings,
) -> tuple[Optional[PyTree], dict[str, np.ndarray]]:
  """(warm-started params, {doc_id: vector}) over every document of
  `index`; (None, {}) for T5.

  As run_experiment makes them: document vectors from the pretrained
  encoder, then gr/model/warm_start.py's decoder and docid rows.
  """
  if not pretrained.is_pretrained(model):
    return None, {}
  kwargs = dict(
    seed=settings.seed,
    input_length=settings.input_length,
    target_length=index.max_docid_length(),
  )
  encoder_dir = model.config.encoder_dir
  base = pretrained.initial_params(
    model, encoder_dir, index=index, doc_vectors=None, warm=False, **kwargs
  )
  vectors = document_vectors(
    model,
    base,
    index.vocab,
    {d: corpus[d] for d in index.doc_ids},
    input_length=settings.input_length,
  )
  params = pretrained.initial_params(
    model,
    encoder_dir,
    index=index,
    doc_vectors=np.stack([vectors[d] for d in index.doc_ids]),
    warm=settings.warm_start,
    encoder_params=base["encoder"],
    temperature=settings.warm_start_temperature,
    **kwargs,
  )
  return params, vectors


# ------------------------------------------------------------ examples --


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

  memory_generator: the generative memory (doc2query.VectorQueryGenerator):
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


# -------------------------------------------------------------- training --


@functools.lru_cache(maxsize=16)
def _sharded(
  config,
  optimizer: train_lib.OptimizerConfig,
  steps: int,
  input_length: int,
  target_length: int,
  mesh_shape: tuple[int, int],
) -> train_lib.Sharded:
  """Jitted init/step for one shape, optimizer and ('data', 'model') mesh
  shape, shared by updates (so successive updates of the same shapes do not
  recompile)."""
  model = models.EncoderDecoderModel(config)
  mesh_data, mesh_model = mesh_shape
  return train_lib.shard_model(
    model,
    train_lib.model_optimizer(model, optimizer, steps),
    partitioning.make_mesh(data=mesh_data, model=mesh_model),
    input_length=input_length,
    target_length=target_length,
    sam_rho=optimizer.sam_rho,
  )


def _cached_transform(
  model,
  params: PyTree,
  mixtures: Sequence[str],
  *,
  input_length: int,
  target_length: int,
):
  """Batch transform adding frozen-encoder states (None without frozen
  layers): the shared cache grown by every input of `mixtures`."""
  if not (pretrained.is_pretrained(model) and model.has_frozen_encoder_layers):
    return None
  rows = [
    row
    for mixture in mixtures
    for row in pretrained.mixture_encoder_inputs(
      mixture, input_length=input_length, target_length=target_length
    )
  ]
  return shared_states(model, params, rows).add_states


def _batches(
  mixture: str, batch_size: int, settings: TrainSettings, target_length: int
):
  return train_lib.task_batches(
    mixture,
    split=tasks.TRAIN,
    input_length=settings.input_length,
    target_length=target_length,
    batch_size=batch_size,
    seed=settings.seed,
  )


def train_params(
  model,
  mixture: str,
  *,
  steps: int,
  settings: TrainSettings,
  sam_rho: float,
  init_params: Optional[PyTree],
  target_length: int,
  replay_mixture: Optional[str] = None,
  replay_per_batch: int = 0,
) -> PyTree:
  """`steps` updates on `mixture` in memory; returns the final params.

  With `replay_mixture` and `replay_per_batch` = k, every batch holds
  batch_size - k examples of `mixture` and k of `replay_mixture`.
  A short run with no checkpoints, resume or TensorBoard (the update is
  committed as a whole by the caller); the optimizer starts fresh. A
  frozen pretrained encoder's states come from the shared cache.
  """
  optimizer = dataclasses.replace(settings.optimizer, sam_rho=sam_rho)
  # A constant schedule does not depend on the length of the run.
  horizon = 1 if optimizer.schedule == "constant" else steps
  sharded = _sharded(
    model.config,
    optimizer,
    horizon,
    settings.input_length,
    target_length,
    (settings.mesh_data, settings.mesh_model),
  )
  state = train_lib.fresh_state(
    sharded, seed=settings.seed, init_params=init_params
  )
  mixtures = [mixture] + ([replay_mixture] if replay_per_batch else [])
  transform = _cached_transform(
    model,
    state.params,
    mixtures,
    input_length=settings.input_length,
    target_length=target_length,
  )
  if replay_per_batch:
    if not 0 < replay_per_batch < settings.batch_size:
      raise ValueError(
        f"replay_per_batch {replay_per_batch} must be in "
        f"(0, batch_size = {settings.batch_size})"
      )
    batches = train_lib.concatenated_batches(
      _batches(
        mixture, settings.batch_size - replay_per_batch, settings, target_length
      ),
      _batches(replay_mixture, replay_per_batch, settings, target_length),
    )
  else:
    batches = _batches(mixture, settings.batch_size, settings, target_length)
  if transform is not None:
    batches = map(transform, batches)
  state = train_lib.run_loop(
    sharded,
    state,
    batches,
    partitioning.replicated_key(settings.seed, sharded.mesh),
    start=0,
    train_steps=steps,
    log_every=settings.log_every,
  )
  return state.params


# --------------------------------------------------------------- updates --


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


def _update_mixtures(
  name, strategy, index, memory, new_documents, source: ReplaySource
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
  if (
    new_documents
    and pretrained.is_pretrained(model)
    and indexing.needs_embedder(
      docids_lib.scheme_for_table(current.index.table)
    )
  ):
    # Routed in the space its tree was clustered in: the model's encoder.
    embedder = encoder_embedder(model.config.encoder_dir, settings.input_length)
  index, memory = apply_changes(
    current, new_documents, deleted_doc_ids, embedder
  )
  model = models.fit_vocab(model, index.vocab.vocab_size)
  params = models.extend_vocab_rows(
    current.params, model.config.vocab_size, settings.seed + current.step
  )
  vectors = dict(current.vectors)
  if pretrained.is_pretrained(model):
    vectors.update(
      document_vectors(
        model,
        params,
        index.vocab,
        new_documents,
        input_length=settings.input_length,
      )
    )
  vectors = {d: v for d, v in vectors.items() if d in memory.corpus}
  if settings.warm_start:
    params = warm_start_new_rows(
      model,
      params,
      index,
      index.vocab.docid_tokens[len(current.index.vocab.docid_tokens) :],
      {d: vectors[d] for d in new_documents if d in vectors},
    )
  # Nothing new to learn from a deletion (retrain still retrains).
  learns = bool(new_documents) or strategy.retrain
  updates = train_steps if strategy.trains and learns else 0
  generative_memory = (
    strategy.replay == "generative" and memory_generator is not None
  )
  if updates:
    source = ReplaySource(
      generator,
      memory_generator,
      vectors,
      draw=current.step,
      max_docs=strategy.replay_per_batch * updates,
    )
    mixture, replay_mixture = _update_mixtures(
      name, strategy, index, memory, new_documents, source
    )
    init_params = params
    if strategy.retrain:  # from scratch (a pretrained encoder: warm start)
      init_params, _ = pretrained_initial_params(
        model, index, memory.corpus, settings
      )
    params = train_params(
      model,
      mixture=mixture,
      steps=updates,
      settings=settings,
      sam_rho=strategy.sam_rho,
      init_params=init_params,
      target_length=index.max_docid_length(),
      replay_mixture=replay_mixture,
      replay_per_batch=strategy.replay_per_batch if replay_mixture else 0,
    )
  if generative_memory:
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
  task_rates: Mapping[str, float] = dict(INITIAL_TASK_RATES),
  keep: int = 3,
) -> UpdateResult:
  """Version 0: index `dataset` (docids, vocabulary) and train on it.

  A pretrained-encoder model starts warm (module docstring); with
  train_steps = 0 its warm start is version 0 as it is.
  """
  start = time.time()
  encoder_dir = (
    model.config.encoder_dir if pretrained.is_pretrained(model) else None
  )
  index = indexing.load_or_build_index(
    dataset,
    index_dir,
    scheme=scheme,
    scheme_params=scheme_params,
    vocab_size=vocab_size,
    seed=settings.seed,
    encoder_dir=encoder_dir,
    embedding_length=settings.input_length,
    cache_dir=os.path.join(
      os.path.dirname(os.path.abspath(model_dir)), "encoder_cache"
    ),
  )
  memory = versions.train_memory(dataset)
  model = models.fit_vocab(model, index.vocab.vocab_size)
  params, vectors = pretrained_initial_params(
    model, index, memory.corpus, settings
  )
  if params is None and train_steps < 1:
    raise ValueError(
      "train_steps = 0 needs a pretrained encoder (a T5 "
      "model has no initial params to commit)"
    )
  if train_steps > 0:
    mixture = initial_mixture(name, memory, index, generator, task_rates)
    params = train_params(
      model,
      mixture=mixture,
      steps=train_steps,
      settings=settings,
      sam_rho=settings.optimizer.sam_rho,
      init_params=params,
      target_length=index.max_docid_length(),
    )
  record = versions.new_record(
    None,
    strategy="initial",
    updates=train_steps,
    seconds=time.time() - start,
    added=len(dataset.corpus),
    deleted=0,
    num_docs=index.table.num_docs,
  )
  versions.commit_version(
    model_dir,
    index_dir,
    train_steps,
    params,
    index,
    memory,
    record,
    keep,
    vectors,
  )
  return UpdateResult(
    train_steps,
    train_steps,
    time.time() - start,
    index.table.num_docs,
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
    memory_generator: the generative memory (doc2query.VectorQueryGenerator)
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
