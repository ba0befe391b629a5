"""DSI-QG pseudo-queries: a doc2query model and the queries it samples.

The doc2query model is the same encoder-decoder network, trained on the
doc2query task (document body -> text of a train query relevant to it).
`Doc2QueryGenerator` then samples n queries per document from the body
alone (`Document.text`, never the title, which is the query in known-item
benchmarks), drops duplicates, and returns them as `PseudoQueries`
(doc_id -> list of queries), the container gr/queries/pseudo_queries.py reads and
writes.

Sampling is seeded per document from (seed, doc_id, sample index), so a
document's queries do not depend on which other documents share its batch
(DSI++ generative replay can regenerate them for any subset). Generation is
jitted once per (documents per batch, input length) shape: the last batch is
padded.

Shapes: D = documents per batch, n = queries per document, Li = input
length, Lq = max query length (EOS included), V = vocabulary.
"""

import dataclasses
import functools
import hashlib
import logging
import os
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from gr import batching
from gr.model import bert_network
from gr.train import checkpoints
from gr.queries import generative_memory as memory_lib
from gr.index import artifact as index_lib
from gr.decode import model_decoder
from gr.model import models
from gr import partitioning
from gr.model import pretrained
from gr.search import retrieval
from gr.decode import sampling
from gr.train import tasks
from gr.train import loop as train_lib
from gr.index import vocab as vocab_lib
from gr.model import warm_start
from gr.index import wordpiece
from gr.data import beir

Documents = Union[Mapping[str, beir.Document], Iterable[beir.Document]]


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How pseudo-queries are sampled.

  Attributes:
    num_queries: n samples per document (fewer remain after dedup).
    input_length: Li, document tokens read (EOS included; longer is cut).
    max_query_len: Lq, most tokens of a query, EOS included.
    batch_size: D documents per jitted call (D * n decoder rows).
    temperature, top_k, top_p: see gr.decode.sampling.sample.
    seed: with the doc_id, seeds each document's samples.
  """

  num_queries: int = 5
  input_length: int = 256
  max_query_len: int = 32
  batch_size: int = 32
  temperature: float = 1.0
  top_k: int = 10
  top_p: float = 1.0
  seed: int = 0


# ---------------------------------------------------------------- train --


def register_doc2query_task(
  name: str,
  dataset: beir.BeirDataset,
  vocab: vocab_lib.Vocabulary,
  *,
  version: str = "v1",
) -> str:
  """Registers `gr.{name}.doc2query.{version}`: body -> train query text.

  Pairs come from the train qrels (and dev qrels as the validation split).
  Inputs are document bodies only. Registering the same data again is a
  no-op; different data under the same name raises (bump `version`).
  """
  by_split = {
    split: tasks.doc2query_examples(
      dataset.corpus,
      dataset.queries,
      dataset.qrels.get(tasks.QRELS_SPLIT[split], {}),
    )
    for split in (tasks.TRAIN, tasks.VALIDATION)
  }
  if not by_split[tasks.TRAIN]:
    raise ValueError(
      f"doc2query task {name!r}: the dataset has no train "
      "qrels with score > 0, so there is nothing to learn"
    )
  by_split = {split: ex for split, ex in by_split.items() if ex}
  return tasks.register_task(
    f"gr.{name}.doc2query.{version}", by_split, vocab, docid_targets=False
  )


def train_doc2query(
  *,
  model: models.EncoderDecoderModel,
  dataset: beir.BeirDataset,
  vocab: vocab_lib.Vocabulary,
  model_dir: str,
  name: str,
  train_steps: int,
  batch_size: int = 64,
  input_length: int = 256,
  max_query_len: int = 32,
  optimizer: train_lib.OptimizerConfig = (train_lib.OptimizerConfig()),
  seed: int = 0,
  eval_every: int = 0,
  checkpoint_every: int = 1000,
  log_every: int = 100,
  version: str = "v1",
  cache_dir: Optional[str] = None,
  vector_every: int = 0,
  train_fn: Callable[..., train_lib.TrainState] = train_lib.train,
):
  """Trains (or resumes, or just loads) a doc2query model in `model_dir`.

  A `model_dir` that already holds step `train_steps` is restored, not
  retrained. A pretrained-encoder model (gr/model/bert_network.py) starts from
  `pretrained_training` (cache in `cache_dir`, default model_dir/../
  encoder_cache; `vector_every` > 0 also teaches the generative memory).
  `train_fn` is the training loop: gr.train.loop.train, or the gin-bound one
  (gr/experiments/configurables.train) where `train.*` bindings apply.

  Returns:
    (model with vocab_size fitted to `vocab`, params).
  """
  task = register_doc2query_task(name, dataset, vocab, version=version)
  init_params, transform = None, None
  if isinstance(model.config, bert_network.BertT5Config):
    init_params, transform = pretrained_training(
      models.fit_vocab(model, vocab.vocab_size),
      task,
      cache_dir
      or os.path.join(
        os.path.dirname(os.path.abspath(model_dir)), "encoder_cache"
      ),
      input_length=input_length,
      max_query_len=max_query_len,
      seed=seed,
      vector_every=vector_every,
    )
  elif vector_every:
    raise ValueError("vector_every needs a pretrained-encoder model")
  state = train_fn(
    model=model,
    mixture_or_task_name=task,
    train_steps=train_steps,
    batch_size=batch_size,
    model_dir=model_dir,
    input_length=input_length,
    target_length=max_query_len,
    optimizer=optimizer,
    seed=seed,
    eval_every=eval_every,
    checkpoint_every=checkpoint_every,
    log_every=log_every,
    init_params=init_params,
    batch_transform=transform,
  )
  return models.fit_vocab(model, vocab.vocab_size), state.params


def pretrained_training(
  model: models.EncoderDecoderModel,
  task: str,
  cache_dir: str,
  *,
  input_length: int,
  max_query_len: int,
  seed: int,
  vector_every: int = 0,
):
  """(initial params, batch transform) of a pretrained-encoder doc2query
  model: the encoder's weights and a fresh decoder whose word embeddings
  are the encoder's (gr/model/warm_start.py, warm start off); the frozen encoder
  layers run once over the task's bodies (gr/model/encoder_cache.py). With
  `vector_every` = k > 0, every k-th row of each batch sees only its
  document's vector (gr/queries/generative_memory.py), so the same model also
  writes queries for documents whose bodies are gone.
  """
  encoder_params = warm_start.load_encoder(model.config.encoder_dir)[1]
  params = warm_start.pretrained_params(
    model,
    encoder_params,
    jax.random.PRNGKey(seed),
    input_length=input_length,
    target_length=max_query_len,
    warm_start=False,
  )
  # Tied logits over word embeddings of norm ~1 are near-uniform at a norm
  # scale of 1; start them at the warm start's temperature instead.
  decoder = dict(params["decoder"])
  norm = decoder["decoder_norm"]
  decoder["decoder_norm"] = {
    **norm,
    "scale": jnp.full_like(norm["scale"], 1.0 / warm_start.DEFAULT_TEMPERATURE),
  }
  params = {**params, "decoder": decoder}
  if not model.has_frozen_encoder_layers:
    if vector_every:
      raise ValueError("vector_every needs frozen encoder layers")
    return params, None
  cache = pretrained.build_encoder_cache(
    model,
    params,
    task,
    cache_dir,
    input_length=input_length,
    target_length=max_query_len,
  )
  if not vector_every:
    return params, cache.add_states
  if model.config.trainable_encoder_layers:
    raise ValueError(
      "vector_every needs the whole encoder frozen "
      "(TRAINABLE_ENCODER_LAYERS = 0): a document vector is "
      "the pooled output of the last layer"
    )
  return params, lambda batch: memory_lib.with_vector_sources(
    cache.add_states(batch), vector_every
  )


def load_or_train_vocab(
  dataset: beir.BeirDataset,
  vocab_dir: str,
  *,
  vocab_size: int = 8000,
  seed: int = 0,
) -> vocab_lib.Vocabulary:
  """sentencepiece on bodies + train queries (never titles), in vocab_dir."""
  path = os.path.join(vocab_dir, vocab_lib.SP_MODEL_NAME)
  if not os.path.exists(path):
    train_queries = {
      q: dataset.queries[q] for q in dataset.qrels.get("train", {})
    }
    texts = index_lib.training_texts(dataset.corpus, train_queries)
    vocab_lib.train_sentencepiece(
      texts, os.path.splitext(path)[0], vocab_size=vocab_size, seed=seed
    )
  return vocab_lib.Vocabulary(path)


def model_vocabulary(
  model: models.EncoderDecoderModel,
  dataset: beir.BeirDataset,
  vocab_dir: str,
  *,
  vocab_size: int = 8000,
  seed: int = 0,
):
  """The text vocabulary of a doc2query model: a pretrained encoder's own
  WordPiece tokenizer, else sentencepiece trained on `dataset`."""
  if isinstance(model.config, bert_network.BertT5Config):
    return wordpiece.WordPieceVocabulary(
      pretrained.tokenizer_path(model.config.encoder_dir)
    )
  return load_or_train_vocab(
    dataset, vocab_dir, vocab_size=vocab_size, seed=seed
  )


# ------------------------------------------------------------- generate --


@flax.struct.dataclass
class AllowedTokens:
  """LogitsProcessor that keeps only the tokens where `allowed` [V] is True.

  Stateless (state None). Used to keep PAD, UNK, docid tokens and the
  untrained padding rows of the embedding out of sampled queries.
  """

  allowed: jax.Array  # [V] bool

  def init(self, batch_size: int, beam_size: int) -> None:
    del batch_size, beam_size

  def process(self, state, log_probs: jax.Array, step: jax.Array):
    del step
    return jnp.where(self.allowed, log_probs, sampling.NEG_INF), state

  def update(self, state, chosen_tokens: jax.Array):
    del chosen_tokens
    return state


def text_tokens(vocab, model_vocab_size: int) -> np.ndarray:
  """[V] bool: EOS and the vocabulary's text pieces (no PAD, UNK, special
  or docid tokens, nor the embedding's padding rows)."""
  allowed = np.zeros(model_vocab_size, bool)
  allowed[vocab.text_token_ids()] = True
  allowed[vocab.eos_id] = True
  return allowed


def document_seeds(seed: int, doc_ids: Sequence[str]) -> np.ndarray:
  """[D, 2] uint32 from sha256(seed, doc_id): stable across processes."""
  out = np.zeros((len(doc_ids), 2), np.uint32)
  for row, doc_id in enumerate(doc_ids):
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode("utf-8")).digest()
    out[row] = np.frombuffer(digest[:8], np.uint32)
  return out


def _sample_keys(doc_seeds: jax.Array, num_queries: int) -> jax.Array:
  """doc_seeds [D, 2] -> typed keys [D * n], one per (document, sample)."""

  def doc_keys(seed_pair):
    key = jax.random.fold_in(jax.random.key(seed_pair[0]), seed_pair[1])
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(
      jnp.arange(num_queries)
    )  # [n]

  return jax.vmap(doc_keys)(doc_seeds).reshape(-1)  # [D, n] --> [D * n]


def _sampler(
  model: models.EncoderDecoderModel,
  *,
  num_queries: int,
  max_query_len: int,
  temperature: float,
  top_k: int,
  top_p: float,
):
  """(params, encoded [D, Ls, E], source [D, Ls], seeds [D, 2], allowed
  [V]) -> (queries [D, n, Lq], log_probs [D, n]), not jitted."""
  n = num_queries

  def sample(params, encoded, source, doc_seeds, allowed):
    rows = encoded.shape[0] * n
    decoder = model_decoder.model_decoder(
      model,
      params,
      source,
      rows_per_input=n,
      cache_rows=rows,
      max_decode_len=max_query_len,
      encoded=encoded,
    )
    sequences, log_probs = sampling.sample(
      decoder.tokens_to_logits,
      decoder.cache,
      rows,
      max_decode_len=max_query_len,
      rng=_sample_keys(doc_seeds, n),
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      eos_id=vocab_lib.EOS_ID,
      logits_processor=AllowedTokens(allowed),
    )
    return (
      sequences.reshape(-1, n, max_query_len),  # --> [D, n, Lq]
      log_probs.reshape(-1, n),
    )  # --> [D, n]

  return sample


@functools.lru_cache(maxsize=8)
def make_sample_fn(
  model: models.EncoderDecoderModel,
  *,
  mesh: Optional[Mesh] = None,
  **settings,
):
  """Jitted (params, encoded [D, Ls, E], source [D, Ls], seeds [D, 2],
  allowed [V]) -> (queries [D, n, Lq] EOS then PAD, log_probs [D, n]).

  `encoded` is what the decoder cross-attends to (an encoder's output, or
  any [D, Ls, E] states, e.g. one document vector per row: see
  gr/queries/generative_memory.py) and `source` its padding mask (ids > 0); each
  decoder layer's cross-attention keys and values are projected from it
  once per document (gr/decode/model_decoder.py). settings: num_queries,
  max_query_len, temperature, top_k, top_p (`GenerationConfig`). On a
  `mesh`, the documents (D a multiple of its 'data' axis) and results are
  split over 'data', the params as in training. Cached per (model object,
  mesh, settings), so generators made again for the same model reuse the
  compiled function.
  """
  return partitioning.jit_on_mesh(
    _sampler(model, **settings),
    mesh,
    (retrieval.param_specs(model, mesh),)
    + (retrieval.BATCH,) * 3
    + (retrieval.REPLICATED,),
    retrieval.BATCH,
  )


@functools.lru_cache(maxsize=8)
def make_generate_fn(
  model: models.EncoderDecoderModel,
  *,
  mesh: Optional[Mesh] = None,
  **settings,
):
  """Jitted (params, tokens [D, Li], seeds [D, 2], allowed [V]) ->
  (queries [D, n, Lq], log_probs [D, n]): encode, then sample as
  `make_sample_fn` (mesh and settings as there)."""
  sample = _sampler(model, **settings)

  def generate(params, encoder_tokens, doc_seeds, allowed):
    return sample(
      params,
      model.encode(params, encoder_tokens),
      encoder_tokens,
      doc_seeds,
      allowed,
    )

  return partitioning.jit_on_mesh(
    generate,
    mesh,
    (retrieval.param_specs(model, mesh),)
    + (retrieval.BATCH,) * 2
    + (retrieval.REPLICATED,),
    retrieval.BATCH,
  )


def decode_queries(vocab, sequences: np.ndarray) -> list[str]:
  """[n, Lq] sampled ids -> distinct non-empty query strings, in order."""
  queries = []
  for row in sequences:
    row = list(row)
    row = row[: row.index(vocab.eos_id)] if vocab.eos_id in row else row
    text = " ".join(vocab.decode([t for t in row if t > 0]).split())
    if text and text not in queries:
      queries.append(text)
  return queries


def _in_batches(
  generate, rows: np.ndarray, seeds: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
  """generate(rows [size, ...], seeds [size, 2]) over every row in
  fixed-size batches (the last padded) -> (ids [n_rows, n, Lq], log_probs
  [n_rows, n])."""
  out_ids, out_scores, started = [], [], time.time()
  for start in range(0, len(rows), size):
    if start and start % (size * 20) == 0:
      logging.info(
        "doc2query: %d/%d documents in %.0fs",
        start,
        len(rows),
        time.time() - started,
      )
    count = min(size, len(rows) - start)
    ids, scores = generate(
      batching.pad_rows(rows[start : start + size], size),
      batching.pad_rows(seeds[start : start + size], size),
    )
    out_ids.append(np.asarray(ids)[:count])
    out_scores.append(np.asarray(scores)[:count])
  return np.concatenate(out_ids), np.concatenate(out_scores)


def _as_documents(documents: Documents) -> list[beir.Document]:
  return list(
    documents.values() if isinstance(documents, Mapping) else documents
  )


class _QuerySampler:
  """What both generators share: the model fitted to the vocabulary, the
  allowed text tokens and the sampling settings of `config`.

  With a `mesh`, each batch of documents is split over its 'data' axis
  (batch_size rounded up to a multiple of it) and the params are sharded
  as in training; the samples are those of one device.
  """

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    params,
    vocab,
    config: GenerationConfig,
    mesh: Optional[Mesh] = None,
  ):
    if config.num_queries < 1 or config.batch_size < 1:
      raise ValueError(
        f"GenerationConfig: num_queries ({config.num_queries})"
        f" and batch_size ({config.batch_size}) must be >= 1"
      )
    self.model = models.fit_vocab(model, vocab.vocab_size)
    self.vocab, self.config, self.mesh = vocab, config, mesh
    self.params = partitioning.place(
      params, retrieval.param_specs(self.model, mesh), mesh
    )
    self.batch_size = batching.data_multiple(config.batch_size, mesh)
    self._allowed = partitioning.place(
      jnp.asarray(text_tokens(vocab, self.model.config.vocab_size)),
      retrieval.REPLICATED,
      mesh,
    )
    self._settings = dict(
      mesh=mesh,
      num_queries=config.num_queries,
      max_query_len=config.max_query_len,
      temperature=config.temperature,
      top_k=config.top_k,
      top_p=config.top_p,
    )


class Doc2QueryGenerator(_QuerySampler):
  """Samples pseudo-queries for documents with a trained doc2query model."""

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    params,
    vocab: vocab_lib.Vocabulary,
    config: GenerationConfig,
    mesh: Optional[Mesh] = None,
  ):
    super().__init__(model, params, vocab, config, mesh)
    self._generate = make_generate_fn(self.model, **self._settings)

  @classmethod
  def from_checkpoint(
    cls,
    model: models.EncoderDecoderModel,
    vocab: vocab_lib.Vocabulary,
    model_dir: str,
    config: GenerationConfig,
    step: Optional[int] = None,
  ) -> "Doc2QueryGenerator":
    """A generator with the params of `model_dir` (latest step if None)."""
    return cls(
      model, checkpoints.restore_params(model_dir, step), vocab, config
    )

  def generate_tokens(
    self,
    texts: Sequence[str],
    doc_ids: Sequence[str],
  ) -> tuple[np.ndarray, np.ndarray]:
    """Bodies -> (ids [len, n, Lq], log_probs [len, n]), fixed-size batches."""
    tokens = vocab_lib.encode_texts(self.vocab, texts, self.config.input_length)
    return _in_batches(
      lambda rows, seeds: self._generate(
        self.params, rows, seeds, self._allowed
      ),
      tokens,
      document_seeds(self.config.seed, doc_ids),
      self.batch_size,
    )

  def generate(self, documents: Documents) -> dict[str, list[str]]:
    """doc_id -> distinct queries sampled from `doc.text` (bodies only).

    Documents with an empty body get no entry.
    """
    docs = [doc for doc in _as_documents(documents) if doc.text.strip()]
    if not docs:
      return {}
    ids, _ = self.generate_tokens(
      [doc.text for doc in docs], [doc.doc_id for doc in docs]
    )
    found = {
      doc.doc_id: decode_queries(self.vocab, doc_ids)
      for doc, doc_ids in zip(docs, ids)
    }
    return {doc_id: queries for doc_id, queries in found.items() if queries}


class VectorQueryGenerator(_QuerySampler):
  """Samples queries from document vectors alone: the generative memory
  (gr/queries/generative_memory.py). The model must have been trained with
  `vector_every` > 0; `config.input_length` is unused."""

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    params,
    vocab,
    config: GenerationConfig,
    mesh: Optional[Mesh] = None,
  ):
    super().__init__(model, params, vocab, config, mesh)
    self._sample = make_sample_fn(self.model, **self._settings)

  def generate_vectors(
    self, vectors: Mapping[str, np.ndarray], *, draw: int = 0
  ) -> dict[str, list[str]]:
    """{doc_id: vector [E]} -> {doc_id: distinct queries}; each `draw`
    (e.g. the update number) samples afresh, reproducibly."""
    if not vectors:
      return {}
    doc_ids = list(vectors)
    matrix = np.stack([vectors[d] for d in doc_ids]).astype(np.float32)

    def generate(rows, seeds):
      encoded, source = memory_lib.vector_source(rows)
      return self._sample(
        self.params,
        jnp.asarray(encoded),
        jnp.asarray(source),
        seeds,
        self._allowed,
      )

    seed = self.config.seed + 7919 * draw
    ids, _ = _in_batches(
      generate, matrix, document_seeds(seed, doc_ids), self.batch_size
    )
    found = {
      d: decode_queries(self.vocab, rows) for d, rows in zip(doc_ids, ids)
    }
    return {d: queries for d, queries in found.items() if queries}


def generate_queries(
  model: models.EncoderDecoderModel,
  params,
  vocab: vocab_lib.Vocabulary,
  documents: Documents,
  *,
  n: int = 5,
  input_length: int = 256,
  max_query_len: int = 32,
  batch_size: int = 32,
  seed: int = 0,
  top_k: int = 10,
  top_p: float = 1.0,
  temperature: float = 1.0,
) -> dict[str, list[str]]:
  """doc_id -> up to n distinct queries sampled from each document's body."""
  config = GenerationConfig(
    num_queries=n,
    input_length=input_length,
    max_query_len=max_query_len,
    batch_size=batch_size,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    seed=seed,
  )
  return Doc2QueryGenerator(model, params, vocab, config).generate(documents)


# ----------------------------------------------------------- diagnostics --


def _words(text: str) -> set[str]:
  return {w.strip(".,:;!?\"'()").lower() for w in text.split()} - {""}


def word_overlap(
  queries: Mapping[str, Sequence[str]],
  references: Mapping[str, str],
  doc_ids: Optional[Iterable[str]] = None,
) -> float:
  """Fraction of generated-query words (lower-cased) found in the reference.

  E.g. references = titles: a doc2query model trained on body -> title
  pairs shows how title-like its queries are; train documents (whose
  titles it saw) against test documents (whose titles it never saw).
  """
  found = total = 0
  for doc_id in queries if doc_ids is None else doc_ids:
    reference = _words(references.get(doc_id, ""))
    for query in queries.get(doc_id, ()):
      words = _words(query)
      found += len(words & reference)
      total += len(words)
  return found / max(total, 1)
