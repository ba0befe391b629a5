"""The jitted sampling of pseudo-queries: encode, then sample per document.

Sampling is seeded per document from (seed, doc_id, sample index)
(`document_seeds`), so a document's queries do not depend on which other
documents share its batch (DSI++ generative replay can regenerate them for
any subset). Only text tokens may be sampled (`AllowedTokens`).

Shapes: D = documents per batch, n = queries per document, Li = input
length, Ls = source length, E = width, Lq = max query length (EOS
included), V = vocabulary.
"""

import functools
import hashlib
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from gr import partitioning
from gr.decode import model_decoder
from gr.decode import sampling
from gr.index import vocab as vocab_lib
from gr.model import models


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
    (partitioning.param_specs(model, mesh),)
    + (partitioning.BATCH,) * 3
    + (partitioning.REPLICATED,),
    partitioning.BATCH,
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
    (partitioning.param_specs(model, mesh),)
    + (partitioning.BATCH,) * 2
    + (partitioning.REPLICATED,),
    partitioning.BATCH,
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
