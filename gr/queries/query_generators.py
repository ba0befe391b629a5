"""DSI-QG pseudo-queries: the queries a doc2query model samples.

The doc2query model is the same encoder-decoder network, trained on the
doc2query task (document body -> text of a train query relevant to it).
`Doc2QueryGenerator` then samples n queries per document from the body
alone (`Document.text`, never the title, which is the query in known-item
benchmarks), drops duplicates, and returns them as `PseudoQueries`
(doc_id -> list of queries), the container gr/queries/pseudo_queries.py reads and
writes.

Sampling is seeded per document (gr/queries/query_sampling.py), so a
document's queries do not depend on which other documents share its batch
(DSI++ generative replay can regenerate them for any subset). Generation is
jitted once per (documents per batch, input length) shape: the last batch is
padded.

Shapes: D = documents per batch, n = queries per document, Li = input
length, Lq = max query length (EOS included), V = vocabulary.
"""

import dataclasses
import logging
import time
from typing import Iterable, Mapping, Optional, Sequence, Union

import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from gr import batching
from gr import partitioning
from gr.data import beir
from gr.index import vocab as vocab_lib
from gr.model import models
from gr.queries import generative_memory as memory_lib
from gr.queries import query_sampling
from gr.train import checkpoints

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
      params, partitioning.param_specs(self.model, mesh), mesh
    )
    self.batch_size = batching.data_multiple(config.batch_size, mesh)
    self._allowed = partitioning.place(
      jnp.asarray(
        query_sampling.text_tokens(vocab, self.model.config.vocab_size)
      ),
      partitioning.REPLICATED,
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

  def _decoded(
    self, doc_ids: Sequence[str], ids: np.ndarray
  ) -> dict[str, list[str]]:
    """ids [len(doc_ids), n, Lq] -> {doc_id: distinct queries}; a document
    left with none gets no entry."""
    found = (
      (d, query_sampling.decode_queries(self.vocab, rows))
      for d, rows in zip(doc_ids, ids)
    )
    return {d: queries for d, queries in found if queries}


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
    self._generate = query_sampling.make_generate_fn(
      self.model, **self._settings
    )

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
      query_sampling.document_seeds(self.config.seed, doc_ids),
      self.batch_size,
    )

  def generate(self, documents: Documents) -> dict[str, list[str]]:
    """doc_id -> distinct queries sampled from `doc.text` (bodies only).

    Documents with an empty body get no entry.
    """
    docs = [doc for doc in _as_documents(documents) if doc.text.strip()]
    if not docs:
      return {}
    doc_ids = [doc.doc_id for doc in docs]
    ids, _ = self.generate_tokens([doc.text for doc in docs], doc_ids)
    return self._decoded(doc_ids, ids)


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
    self._sample = query_sampling.make_sample_fn(self.model, **self._settings)

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
      generate,
      matrix,
      query_sampling.document_seeds(seed, doc_ids),
      self.batch_size,
    )
    return self._decoded(doc_ids, ids)


def generate_queries(
  model: models.EncoderDecoderModel,
  params,
  vocab: vocab_lib.Vocabulary,
  documents: Documents,
  config: GenerationConfig = GenerationConfig(),
) -> dict[str, list[str]]:
  """doc_id -> up to config.num_queries distinct queries sampled from each
  document's body (the DSI-QG driver's generation,
  gr/experiments/generate_queries.py)."""
  return Doc2QueryGenerator(model, params, vocab, config).generate(documents)
