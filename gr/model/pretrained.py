"""The pretrained-encoder path of an experiment.

With a BERT-family encoder under the T5 decoder (gr/model/bert_network.py), an
experiment (gr/experiments/run.py) needs, besides what a T5 run needs:

* the encoder's WordPiece vocabulary for the index (`wordpiece_index`);
* every encoder input of a mixture's train split (`mixture_encoder_inputs`),
  which the frozen layers' cache covers (gr/model/encoder_cache.py, built
  through the model's family, gr/model/family.py);
* document vectors: the encoder's mean-pooled, normalised states of each
  body at the run's input length (`pooled_vectors`), which warm-start the
  docid rows (gr/model/warm_start.py) and give the dense baseline with the same
  encoder (gr/search/dense.py `encoder_dense_baseline`);
* the initial params (`initial_params`).
"""

import functools
import os
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gr.index import vocab as vocab_lib
from gr import batching
from gr.model import bert
from gr.model import bert_network
from gr.model import encoder_cache as cache_lib
from gr.index import artifact as index_lib
from gr.model import warm_start
from gr.index import wordpiece


def tokenizer_path(encoder_dir: str) -> str:
  return os.path.join(encoder_dir, wordpiece.TOKENIZER_NAME)


def wordpiece_index(table, encoder_dir: str) -> index_lib.Index:
  """The index over the encoder's own word pieces plus the docid tokens."""
  vocab = wordpiece.WordPieceVocabulary(
    tokenizer_path(encoder_dir), tuple(table.reserved_tokens)
  )
  return index_lib.Index(table, vocab)


def _tasks(mixture_or_task) -> list:
  """The tasks of a seqio Mixture, or [task]."""
  return list(getattr(mixture_or_task, 'tasks', [mixture_or_task]))


def mixture_encoder_inputs(
  mixture_or_task: str, *, input_length: int, target_length: int
) -> list[np.ndarray]:
  """Every encoder input row [input_length] of a mixture's train split."""
  import seqio  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)

  rows = []
  for task in _tasks(seqio.get_mixture_or_task(mixture_or_task)):
    ds = seqio.get_dataset(
      task.name,
      task_feature_lengths={'inputs': input_length, 'targets': target_length},
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      dataset_split='train',
      shuffle=False,
      num_epochs=1,
    )
    rows += [ex['encoder_input_tokens'] for ex in ds.as_numpy_iterator()]
  return rows


@functools.lru_cache(maxsize=8)
def _pooled_fn(model):
  def pooled(params, tokens, frozen_states):
    encoded = model.module.apply(
      {'params': params},
      tokens,
      encoder_frozen_states=frozen_states,
      method=bert_network.BertT5Transformer.encode,
    )
    return bert.mean_pool_normalise(encoded, tokens > 0)

  return jax.jit(pooled)


def pooled_vectors(
  model,
  params,
  rows: np.ndarray,
  cache: Optional[cache_lib.EncoderCache] = None,
  *,
  batch_size: int = 64,
) -> np.ndarray:
  """Encoder inputs [n, Li] -> unit mean-pooled final states [n, width].

  With `cache`, the frozen layers' output is looked up, not recomputed.
  """
  pooled = _pooled_fn(model)
  frozen = jax.jit(model.frozen_encode)
  out = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start : start + batch_size]
    padded = batching.pad_rows(
      batching.pad_sequences(list(chunk), rows.shape[1]), batch_size
    )  # [batch_size, Li]
    if cache is not None:
      states = batching.pad_rows(
        np.stack([cache.lookup(r) for r in chunk]), batch_size
      )  # [batch_size, Li, width]
    else:
      states = frozen(params, jnp.asarray(padded))
    out.append(
      np.asarray(pooled(params, jnp.asarray(padded), jnp.asarray(states)))[
        : len(chunk)
      ]
    )
  return (
    np.concatenate(out) if out else np.zeros((0, model.config.encoder_width))
  )


def body_vectors(
  model,
  params,
  vocab,
  documents: Mapping,
  input_length: int,
  cache_for: Optional[Callable[[np.ndarray], cache_lib.EncoderCache]] = None,
) -> dict[str, np.ndarray]:
  """{doc_id: unit mean-pooled encoder output of its body [width]} (what
  warm starts new docid rows and what the generative memory stores).

  cache_for: rows [n, Li] -> an EncoderCache holding them, to look the
  frozen layers' output up instead of recomputing it.
  """
  if not documents:
    return {}
  rows = vocab_lib.encode_texts(
    vocab, [doc.text for doc in documents.values()], input_length
  )
  cache = cache_for(rows) if cache_for else None
  return dict(zip(documents, pooled_vectors(model, params, rows, cache)))


def document_rows(
  index: index_lib.Index, corpus: Mapping, input_length: int
) -> np.ndarray:
  """Each indexed document's body as an encoder input, table order."""
  return vocab_lib.encode_texts(
    index.vocab, [corpus[d].text for d in index.doc_ids], input_length
  )


def initial_params(
  model,
  encoder_dir: str,
  *,
  index: index_lib.Index,
  doc_vectors: Optional[np.ndarray],
  seed: int,
  input_length: int,
  target_length: int,
  warm: bool = True,
  temperature: float = 0.05,
  encoder_params=None,
):
  """Pretrained encoder + decoder, warm-started from `doc_vectors`.

  encoder_params: the encoder's weights if already loaded (else read from
  encoder_dir).
  """
  if encoder_params is None:
    _, encoder_params = warm_start.load_encoder(encoder_dir)
  vectors, end_ids = None, set()
  if warm:
    vectors = warm_start.docid_token_vectors(
      index.table, index.vocab, doc_vectors
    )
    end_ids = warm_start.end_ids_of(index.table, index.vocab)
  return warm_start.pretrained_params(
    model,
    encoder_params,
    jax.random.PRNGKey(seed),
    input_length=input_length,
    target_length=target_length,
    docid_vectors=vectors,
    end_ids=end_ids,
    eos_id=index.vocab.eos_id,
    warm_start=warm,
    temperature=temperature,
    query_gain=warm_start.query_gain_of(index.table),
  )
