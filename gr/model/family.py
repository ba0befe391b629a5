"""Model families: one plug-in per kind of model, looked up by `family_of`.

Everything a run does differently for each kind of model goes through its
family, so no caller asks a model what it is:

  SCRATCH_T5     a T5 trained from scratch (network.T5Config): sentencepiece
                 trained on the corpus, no initial params (train()
                 initialises), everything trains, new docid rows random.
  BERT_T5        a pretrained BERT-family encoder under a T5 decoder
                 (bert_network.BertT5Config): the encoder's WordPiece
                 vocabulary, semantic docids clustered with its embeddings,
                 the warm start from document embeddings (warm_start.py),
                 frozen bottom layers whose output is cached
                 (encoder_cache.py), new docid rows from the new documents'
                 embeddings.
  PRETRAINED_T5  HF T5 weights (pretrained_t5.PretrainedT5Model): the
                 checkpoint's sentencepiece + sentinels, its weights with
                 the vocabulary rows extended.

The `ModelFamily` protocol (each method takes the model, since a model's
vocab_size changes when it is fitted to an index):

  encoder_dir(model)             the sentence encoder semantic docids use
  build_index / check_index      the docid index's vocabulary
  text_vocabulary                a text-to-text model's vocabulary (doc2query)
  warm_start                     initial params + document vectors + cache
  text_params                    initial params of a text-to-text model
  trainable_mask                 what is frozen
  encoder_states                 the frozen-layer cache (None: none)
  document_vectors               {doc_id: [E]} body vectors (empty: none)
  new_docid_rows                 rows of docid tokens added later
  saved_config                   the config record written with a run

`warm_starts_rows` says whether new docid rows start from document vectors.
The network a config describes, its widths and its model_config.json
record are config-level (gr/model/configs.py).
"""

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr.index import artifact as index_lib
from gr.index import sentencepiece_training as sp_training
from gr.index import vocab as vocab_lib
from gr.index import wordpiece
from gr.model import configs
from gr.model import embed
from gr.model import encoder_cache as cache_lib
from gr.model import pretrained
from gr.model import pretrained_t5
from gr.model import warm_start as warm_lib

Params = Any
Rows = Sequence[np.ndarray]  # encoder input token rows, each [Li]


@dataclasses.dataclass
class WarmStart:
  """A model's start over an index.

  Attributes:
    params: initial params (None: train() initialises them at random).
    vectors: {doc_id: unit body vector [E]} of the indexed documents
      (empty without a pretrained encoder).
    base_params: the params before the docid rows were warm-started (the
      encoder's weights: what the dense baseline embeds queries with).
    states: the frozen-layer cache built on the way (None: none).
    seconds: how long it took.
  """

  params: Params = None
  vectors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  base_params: Params = None
  states: Optional[cache_lib.EncoderCache] = None
  seconds: float = 0.0

  def vector_matrix(self, doc_ids: Sequence[str]) -> np.ndarray:
    """[len(doc_ids), E] vectors in `doc_ids` order."""
    return np.stack([self.vectors[d] for d in doc_ids])


class ModelFamily(Protocol):
  """What differs between kinds of model (module docstring)."""

  name: str
  warm_starts_rows: bool

  def encoder_dir(self, model) -> Optional[str]:
    """The HF folder of the sentence encoder whose embeddings place
    semantic docids (None: the default MiniLM)."""

  def build_index(
    self, model, table, dataset, work_dir: str, *, vocab_size: int, seed: int
  ) -> index_lib.Index:
    """The index over `table` in this family's vocabulary."""

  def check_index(self, model, index: index_lib.Index) -> None:
    """Raises ValueError if a saved index is not in this model's ids."""

  def text_vocabulary(
    self, model, dataset, vocab_dir: str, *, vocab_size: int, seed: int
  ):
    """The vocabulary of a text-to-text model (doc2query) of this family."""

  def warm_start(
    self,
    model,
    index: index_lib.Index,
    corpus: Mapping,
    *,
    seed: int,
    input_length: int,
    target_length: int,
    warm: bool = True,
    temperature: float = warm_lib.DEFAULT_TEMPERATURE,
    cache_dir: Optional[str] = None,
    cache_rows: Callable[[], Rows] = lambda: (),
  ) -> WarmStart:
    """Initial params and document vectors of `model` over `index`.

    corpus: {doc_id: Document} holding every indexed document.
    cache_dir: where the frozen-layer cache file lives (None: the process's
    shared cache); cache_rows: more inputs [Li] it should hold (the
    training tasks'), called only by a family that caches.
    """

  def text_params(
    self, model, *, seed: int, input_length: int, target_length: int
  ) -> Params:
    """Initial params of a text-to-text model (None: random)."""

  def trainable_mask(self, model, params: Params) -> Params:
    """Bool tree like params: False where parameters are frozen."""

  def encoder_states(
    self,
    model,
    params: Params,
    rows: Rows,
    cache_dir: Optional[str] = None,
  ) -> Optional[cache_lib.EncoderCache]:
    """The frozen encoder layers' output over `rows` (None: no cache)."""

  def document_vectors(
    self, model, params: Params, vocab, documents: Mapping, input_length: int
  ) -> dict[str, np.ndarray]:
    """{doc_id: unit body vector [E]} under `params` ({}: no encoder)."""

  def new_docid_rows(
    self,
    model,
    params: Params,
    index: index_lib.Index,
    new_tokens: Sequence[str],
    vectors: Mapping[str, np.ndarray],
  ) -> Params:
    """`params` with the rows of docid tokens added for new documents."""

  def saved_config(self, model) -> dict[str, Any]:
    """The model's config record for model_config.json."""


class ScratchT5:
  """A T5 trained from scratch: nothing pretrained, nothing frozen."""

  name = 'scratch_t5'
  warm_starts_rows = False

  def encoder_dir(self, model) -> Optional[str]:
    del model
    return None

  def build_index(self, model, table, dataset, work_dir, *, vocab_size, seed):
    del model
    texts = index_lib.training_texts(dataset.corpus, train_queries(dataset))
    return index_lib.build_index(
      table, texts, work_dir, vocab_size=vocab_size, seed=seed
    )

  def check_index(self, model, index) -> None:
    del model, index

  def text_vocabulary(self, model, dataset, vocab_dir, *, vocab_size, seed):
    del model
    return corpus_sentencepiece(
      dataset, vocab_dir, vocab_size=vocab_size, seed=seed
    )

  def warm_start(self, model, index, corpus, **kwargs) -> WarmStart:
    del model, index, corpus, kwargs
    return WarmStart()

  def text_params(self, model, **kwargs) -> Params:
    del model, kwargs
    return None

  def trainable_mask(self, model, params):
    return model.trainable_mask(params)

  def encoder_states(self, model, params, rows, cache_dir=None):
    del model, params, rows, cache_dir
    return None

  def document_vectors(self, model, params, vocab, documents, input_length):
    del model, params, vocab, documents, input_length
    return {}

  def new_docid_rows(self, model, params, index, new_tokens, vectors):
    del model, index, new_tokens, vectors
    return params

  def saved_config(self, model) -> dict[str, Any]:
    return configs.config_record(model.config)


class PretrainedT5(ScratchT5):
  """HF T5 weights (`model.t5_dir`): the checkpoint's vocabulary and
  weights, vocabulary rows extended (pretrained_t5.py)."""

  name = 'pretrained_t5'

  def build_index(self, model, table, dataset, work_dir, *, vocab_size, seed):
    del dataset, work_dir, vocab_size, seed
    return pretrained_t5.t5_index(table, model.t5_dir)

  def check_index(self, model, index) -> None:
    pretrained_t5.check_t5_index(index, model.t5_dir)

  def text_vocabulary(self, model, dataset, vocab_dir, *, vocab_size, seed):
    del dataset, vocab_dir, vocab_size, seed
    return pretrained_t5.t5_vocabulary(model.t5_dir)

  def warm_start(self, model, index, corpus, *, seed, **kwargs) -> WarmStart:
    del index, corpus, kwargs
    start = time.time()
    params = pretrained_t5.t5_initial_params(model, model.t5_dir, seed=seed)
    return WarmStart(params, base_params=params, seconds=time.time() - start)

  def text_params(self, model, *, seed, **kwargs) -> Params:
    del kwargs
    return pretrained_t5.t5_initial_params(model, model.t5_dir, seed=seed)


# Frozen-encoder states of every input seen in this process, per frozen
# parameters: continual updates (and the cells of a dynamic-corpus run)
# encode each body and query once.
_STATE_CACHES: dict[str, cache_lib.EncoderCache] = {}


class BertT5:
  """A pretrained BERT-family encoder under a T5 decoder."""

  name = 'bert_t5'
  warm_starts_rows = True

  def encoder_dir(self, model) -> Optional[str]:
    return model.config.encoder_dir

  def build_index(self, model, table, dataset, work_dir, *, vocab_size, seed):
    del dataset, work_dir, vocab_size, seed
    return pretrained.wordpiece_index(table, model.config.encoder_dir)

  def check_index(self, model, index) -> None:
    del model, index

  def text_vocabulary(self, model, dataset, vocab_dir, *, vocab_size, seed):
    del dataset, vocab_dir, vocab_size, seed
    return wordpiece.WordPieceVocabulary(
      pretrained.tokenizer_path(model.config.encoder_dir)
    )

  def warm_start(
    self,
    model,
    index,
    corpus,
    *,
    seed,
    input_length,
    target_length,
    warm=True,
    temperature=warm_lib.DEFAULT_TEMPERATURE,
    cache_dir=None,
    cache_rows=lambda: (),
  ) -> WarmStart:
    """Two passes: the encoder embeds every body (through the frozen-layer
    cache), then the decoder and docid rows start from those vectors."""
    start = time.time()
    lengths = dict(
      seed=seed, input_length=input_length, target_length=target_length
    )
    encoder_dir = model.config.encoder_dir
    base = pretrained.initial_params(
      model, encoder_dir, index=index, doc_vectors=None, warm=False, **lengths
    )
    training_rows = list(cache_rows())
    if training_rows or cache_dir is None:
      doc_rows = pretrained.document_rows(index, corpus, input_length)
      states = self.encoder_states(
        model, base, training_rows + list(doc_rows), cache_dir
      )
      vectors = pretrained.pooled_vectors(model, base, doc_rows, states)
    else:
      # Nothing to train on: no frozen-layer cache; the bodies' vectors are
      # the dense baseline's, cached under cache_dir by encoder.
      states = None
      vectors = self._body_vectors(
        model, index, corpus, input_length, cache_dir
      )
    params = pretrained.initial_params(
      model,
      encoder_dir,
      index=index,
      doc_vectors=vectors,
      warm=warm,
      temperature=temperature,
      encoder_params=base['encoder'],
      **lengths,
    )
    logging.info(
      'warm start (cache, document vectors, params): %.1fs',
      time.time() - start,
    )
    return WarmStart(
      params,
      dict(zip(index.doc_ids, vectors)),
      base,
      states,
      time.time() - start,
    )

  @staticmethod
  def _body_vectors(model, index, corpus, input_length, cache_dir):
    """[num_docs, E] unit body vectors in table order, through
    `embed.document_embeddings` (the same encoder, inputs cut to
    input_length) and its cache in cache_dir."""
    embedder = embed.Embedder.load(
      model.config.encoder_dir, max_length=input_length
    )
    vectors = embed.document_embeddings(corpus, embedder, cache_dir)
    row = {doc_id: i for i, doc_id in enumerate(corpus)}
    return vectors[[row[doc_id] for doc_id in index.doc_ids]]

  def text_params(self, model, *, seed, input_length, target_length):
    """The encoder's weights and a fresh decoder whose word embeddings are
    the encoder's (warm start off), its logits at the warm start's
    temperature: tied logits over word embeddings of norm ~1 are
    near-uniform at a norm scale of 1."""
    encoder_params = warm_lib.load_encoder(model.config.encoder_dir)[1]
    params = warm_lib.pretrained_params(
      model,
      encoder_params,
      jax.random.PRNGKey(seed),
      input_length=input_length,
      target_length=target_length,
      warm_start=False,
    )
    decoder = dict(params['decoder'])
    norm = decoder['decoder_norm']
    decoder['decoder_norm'] = {
      **norm,
      'scale': jnp.full_like(norm['scale'], 1.0 / warm_lib.DEFAULT_TEMPERATURE),
    }
    return {**params, 'decoder': decoder}

  def trainable_mask(self, model, params):
    return model.trainable_mask(params)

  def encoder_states(self, model, params, rows, cache_dir=None):
    """With `cache_dir`: the cache file for exactly these inputs (built
    whether or not layers are frozen: runs share it). Without: the
    process's shared cache grown by `rows`, or None when no encoder layer
    is frozen."""
    if cache_dir is not None:
      start = time.time()
      cache = cache_lib.EncoderCache.build(model, params, list(rows), cache_dir)
      logging.info(
        'encoder cache: %d distinct inputs ready in %.1fs',
        len(cache),
        time.time() - start,
      )
      return cache
    if not model.has_frozen_encoder_layers:
      return None
    frozen = model.config.frozen_layers
    key = cache_lib.fingerprint(
      cache_lib.frozen_params(params, frozen), frozen, []
    )
    cache = _STATE_CACHES.get(
      key,
      cache_lib.EncoderCache(
        [], np.zeros((0, model.config.encoder_width), np.float16)
      ),
    )
    cache = cache.with_inputs(model, params, rows)
    _STATE_CACHES[key] = cache
    return cache

  def document_vectors(self, model, params, vocab, documents, input_length):
    return pretrained.body_vectors(
      model,
      params,
      vocab,
      documents,
      input_length,
      cache_for=lambda rows: self.encoder_states(model, params, rows),
    )

  def new_docid_rows(self, model, params, index, new_tokens, vectors):
    """warm_start.new_docid_rows on the tied embedding."""
    if not new_tokens or not vectors:
      return params
    old = params['token_embedder']['embedding']
    embedding = warm_lib.new_docid_rows(
      np.asarray(old), index.table, index.vocab, new_tokens, dict(vectors)
    )
    return {
      **params,
      'token_embedder': {
        **params['token_embedder'],
        'embedding': jnp.asarray(embedding, old.dtype),
      },
    }

  def saved_config(self, model) -> dict[str, Any]:
    return configs.config_record(model.config)


SCRATCH_T5 = ScratchT5()
PRETRAINED_T5 = PretrainedT5()
BERT_T5 = BertT5()
FAMILIES = {f.name: f for f in (SCRATCH_T5, PRETRAINED_T5, BERT_T5)}


def family_of(model) -> ModelFamily:
  """The family of a model (the one place a model's kind is read)."""
  if isinstance(model, pretrained_t5.PretrainedT5Model):
    return PRETRAINED_T5
  if configs.has_bert_encoder(model.config):
    return BERT_T5
  return SCRATCH_T5


def training_transform(
  model, states: Optional[cache_lib.EncoderCache]
) -> Optional[Callable[[dict], dict]]:
  """The batch transform adding cached frozen-layer states (None when the
  model has no frozen layers or there is no cache)."""
  if states is None or not model.has_frozen_encoder_layers:
    return None
  return states.add_states


# -------------------------------------------------- vocabulary from text --


def train_queries(dataset) -> dict[str, str]:
  """The queries of the train qrels (what a vocabulary may learn from)."""
  return {q: dataset.queries[q] for q in dataset.qrels.get('train', {})}


def corpus_sentencepiece(
  dataset, vocab_dir: str, *, vocab_size: int = 8000, seed: int = 0
) -> vocab_lib.Vocabulary:
  """sentencepiece on bodies + train queries (never titles), in vocab_dir."""
  path = os.path.join(vocab_dir, vocab_lib.SP_MODEL_NAME)
  if not os.path.exists(path):
    texts = index_lib.training_texts(dataset.corpus, train_queries(dataset))
    sp_training.train_sentencepiece(
      texts, os.path.splitext(path)[0], vocab_size=vocab_size, seed=seed
    )
  return vocab_lib.Vocabulary(path)
