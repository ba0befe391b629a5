"""Docid token rows of online adds: capacity that grows, rows set fast.

Capacity. The model has `vocab_size` embedding rows; the vocabulary's docid
tokens are ids base_size .. vocab_size - 1 (gr/index/vocab.py). Schemes that
create tokens online (atomic `<d_N>`, semantic leaf positions past c) need
more ids than the checkpoint has. `grown_rows` doubles the docid part of the
rows (rows - base_size) until the new ids fit, rounded up to 128s as
models.fit_vocab does; `grow_params` appends that many zero rows to the
token embedding (and columns to an untied logits kernel). Zero rows make
growth independent of its path: growing 128 -> 256 -> 512 gives the same
params as 128 -> 512, so a restart (which grows once, to fit the served
vocabulary) serves bit for bit what the live server did. The served model
then has a new vocab_size: one compile of every bucket per growth.
Rows are grown before they are full: `grown_model` keeps `SPARE_SHARE` of
the docid ids in use spare, at load as online, so a served index starts
with room for a burst of adds (the demo's checkpoint has 62 spare rows;
served, it has 3,902), and the load compiles the grown shapes in place of
the checkpoint's, at no extra cost.

Rows. With a pretrained encoder a new docid token's row is its documents'
mean-pooled encoder output, by gr/model/warm_start.py's `new_docid_rows`
rule. `RowRule` applies that rule with its two statistics (the old rows'
mean norm and the end tokens' shared component along EOS) computed once per
served model, not over every row on every add; `DocumentEncoder` pools
bodies through one jitted function compiled for a few batch buckets; and
`set_rows` writes the rows into the device embedding with one jitted
scatter per bucket, never through a host copy of the whole table: in place
(the buffer donated, O(rows written)) when the caller swaps the live state
under its dispatch lock, else into a new array (O(table)) that searches
still reading the old one need.
"""

import concurrent.futures
import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr import batching
from gr.model import bert
from gr.model import family
from gr.model import models
from gr.model import warm_start
from gr.search import retrieval

# Batch shapes of DocumentEncoder. On CPU a pass over 8 bodies costs less
# per body than one over 64 (the activations of 64 x 128 tokens leave the
# caches; figures: WORKSPACE.md, "Issue 22, session 11").
CPU_ENCODE_BUCKETS = (1, 2, 4, 8)
ENCODE_BUCKETS = (1, 4, 16, 64)  # elsewhere (accelerators)

# Spare docid rows kept beyond the ids in use, as a share of those ids:
# rows grow (`grown_model`) once fewer would be spare.
SPARE_SHARE = 0.25


def encode_buckets() -> tuple[int, ...]:
  """DocumentEncoder's batch shapes on this process's default backend."""
  if jax.default_backend() == "cpu":
    return CPU_ENCODE_BUCKETS
  return ENCODE_BUCKETS


ROW_BUCKETS = (1, 4, 16, 64, 256)  # id counts of set_rows


def _bucket(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n, else n rounded up to the largest bucket."""
  for b in buckets:
    if b >= n:
      return b
  return -(-n // buckets[-1]) * buckets[-1]


# ------------------------------------------------------------ capacity --


def grown_rows(start_rows: int, base_size: int, needed: int) -> int:
  """Embedding rows that hold ids below `needed`, grown from a checkpoint's
  `start_rows`: its docid part (start_rows - base_size) doubled until they
  fit, rounded up to 128s; `start_rows` when they already fit.

  A function of `needed` alone (for one checkpoint), so the live server
  (growing step by step) and a restart (growing once to fit the served
  vocabulary) arrive at the same rows.
  """
  if needed <= start_rows:
    return start_rows
  capacity = max(start_rows - base_size, 1)
  while base_size + capacity < needed:
    capacity *= 2
  multiple = models.VOCAB_MULTIPLE
  return -(-(base_size + capacity) // multiple) * multiple


def with_spare(needed: int, base_size: int) -> int:
  """Ids that rows are wanted for when ids below `needed` are in use:
  `SPARE_SHARE` of the docid ids in use (needed - base_size) more."""
  return needed + math.ceil(SPARE_SHARE * max(needed - base_size, 0))


def _zero_extended(matrix, new_size: int, axis: int):
  extra = list(matrix.shape)
  extra[axis] = new_size - matrix.shape[axis]
  return jnp.concatenate([matrix, jnp.zeros(extra, matrix.dtype)], axis=axis)


def grow_params(params: Any, rows: int) -> Any:
  """`params` with the token embedding [V, D] (and an untied logits kernel
  [D, V]) grown to `rows` with zeros; existing entries kept bit for bit."""
  embedder = dict(params["token_embedder"])
  if embedder["embedding"].shape[0] >= rows:
    return params
  embedder["embedding"] = _zero_extended(embedder["embedding"], rows, 0)
  params = {**params, "token_embedder": embedder}
  logits = params.get("decoder", {}).get("logits_dense")
  if logits is not None:
    params["decoder"] = {
      **params["decoder"],
      "logits_dense": {
        **logits,
        "kernel": _zero_extended(logits["kernel"], rows, 1),
      },
    }
  return params


def grown_model(
  model: models.EncoderDecoderModel,
  params: Any,
  *,
  start_rows: int,
  base_size: int,
  needed: int,
) -> tuple[models.EncoderDecoderModel, Any]:
  """(model, params) with rows for ids below `needed` and `SPARE_SHARE`
  of them spare (`grown_rows` from the checkpoint's `start_rows`); as given
  if they already fit. A function of `needed` alone for one checkpoint, so
  a restart grows to the rows the live server grew to."""
  wanted = with_spare(needed, base_size)
  rows = max(grown_rows(start_rows, base_size, wanted), model.config.vocab_size)
  if rows == model.config.vocab_size:
    return model, params
  return model.with_vocab_size(rows), grow_params(params, rows)


# ------------------------------------------------------------- the rows --


def warm_rows_of(model: models.EncoderDecoderModel) -> bool:
  """Whether new docid tokens get rows from their documents' embeddings
  (the model family says: a BERT-family encoder does; a T5 model keeps the
  zero rows of growth)."""
  return family.family_of(model).warm_starts_rows


@functools.lru_cache(maxsize=4)
def _pooled_fn(encoder: bert.BertConfig, frozen_layers: int):
  """Jitted (encoder params, tokens [B, Li]) -> unit mean-pooled states
  [B, width]: BertT5Transformer.encode's computation on the encoder alone,
  so a growth of the decoder's rows does not make it compile again."""
  module = bert.BertEncoder(encoder)

  def pooled(params, tokens):
    mask = tokens > 0
    states = module.apply(
      {"params": params}, tokens, mask, stop_layer=frozen_layers
    )
    hidden = module.apply(
      {"params": params},
      states.astype(jnp.float32),
      mask,
      start_layer=frozen_layers,
    )
    return bert.mean_pool_normalise(hidden, mask)

  return jax.jit(pooled)


class DocumentEncoder:
  """Bodies -> the model's unit mean-pooled encoder output, in passes of
  `buckets` shapes (compiled once each, by `warm_up` or first use).

  n bodies go in passes of the largest bucket; the rest, on CPU, in the
  largest buckets that fit it (no padding: a pass costs in proportion to
  its rows), elsewhere in one pass padded to the smallest bucket that
  holds it. Bodies are taken shortest first, and each pass is cut to the
  shortest of the search's input lengths (retrieval.input_lengths) that
  holds its longest body, so a short body costs its own length, not the
  full input length (the padding is masked: the same vectors). It reads
  only the encoder's params: a growth of the decoder's rows compiles
  nothing here.
  """

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    input_length: int,
    buckets: Optional[Sequence[int]] = None,
  ):
    config = model.config
    self._pooled = _pooled_fn(config.encoder, config.frozen_layers)
    self.input_length = input_length
    self.buckets = tuple(sorted(buckets or encode_buckets()))
    if self.buckets[0] != 1:
      raise ValueError(f"encoder buckets {self.buckets} must include 1")
    self.pad = jax.default_backend() != "cpu"

  def warm_up(self, params: Any) -> None:
    """Compiles every (bucket, input length) pass, one per core at once."""
    shapes = [
      (bucket, length)
      for bucket in self.buckets
      for length in retrieval.input_lengths(self.input_length)
    ]

    def compiled(shape):
      tokens = np.zeros(shape, np.int32)
      return jax.block_until_ready(self._pooled(params["encoder"], tokens))

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      list(pool.map(compiled, shapes))

  def chunks(self, n: int) -> list[int]:
    """Bodies per pass for n bodies, e.g. 13 -> [8, 4, 1] with buckets
    1, 2, 4, 8 (no padding), or [8, 5] with the 5 padded to 8."""
    largest = self.buckets[-1]
    sizes = [largest] * (n // largest)
    n %= largest
    if self.pad and n:
      return sizes + [n]
    for bucket in reversed(self.buckets):
      sizes += [bucket] * (n // bucket)
      n %= bucket
    return sizes

  def dispatch(self, params: Any, tokens: np.ndarray) -> tuple:
    """Dispatches the passes over tokens [n, Li] (not waited for): the
    host may work meanwhile; `collect` reads them."""
    tokens = np.asarray(tokens)
    filled = tokens[:, ::-1] != 0
    lengths = np.where(filled.any(1), tokens.shape[1] - filled.argmax(1), 1)
    order = np.argsort(lengths, kind="stable")  # shortest first
    pending, start = [], 0
    for size in self.chunks(len(tokens)):
      chunk = tokens[order[start : start + size]]  # [size, Li]
      chunk = chunk[:, : retrieval.input_bucket(chunk, self.input_length)]
      padded = batching.pad_rows(chunk, _bucket(size, self.buckets))
      pending.append((self._pooled(params["encoder"], padded), size))
      start += size
    return order, pending

  @staticmethod
  def collect(pending: tuple) -> np.ndarray:
    """`dispatch`'s passes -> [n, width] float32, in the bodies' order."""
    order, passes = pending
    pooled = [np.asarray(vectors)[:size] for vectors, size in passes]
    out = np.empty((len(order), pooled[0].shape[1]), np.float32)
    out[order] = np.concatenate(pooled)
    return out

  def vectors(self, params: Any, tokens: np.ndarray) -> np.ndarray:
    """tokens [n, Li] -> [n, width] float32."""
    return self.collect(self.dispatch(params, tokens))


@dataclasses.dataclass(frozen=True)
class RowRule:
  """warm_start.new_docid_rows' rule with its statistics fixed.

  scale: mean norm of the docid rows (less the end component) at load.
  shared: the end tokens' mean component along the EOS row [D] (or 0.0).
  A scheme with exact rows (RQ) uses neither: its rows are its vectors.
  """

  scale: float
  shared: Any

  @classmethod
  def of(cls, embedding: np.ndarray, table, vocab) -> "RowRule":
    """The statistics over `embedding` [V, D]'s docid rows."""
    rows = np.asarray(embedding, np.float32)
    return cls(*warm_start.row_statistics(rows, table, vocab))

  def rows(
    self,
    table,
    vocab,
    new_tokens: Sequence[str],
    doc_vectors: Mapping[str, np.ndarray],
  ) -> dict[str, np.ndarray]:
    """token -> row [D] of each new token some document of `doc_vectors`
    (doc_id -> [D]; all in `table`) uses (warm_start.new_token_rows)."""
    if not new_tokens or not doc_vectors:
      return {}
    return warm_start.new_token_rows(
      table,
      vocab,
      new_tokens,
      doc_vectors,
      scale=self.scale,
      shared=self.shared,
    )


def _set_at(embedding, ids, rows):
  """embedding [V, D] with rows `ids` [n] set to `rows` [n, D]."""
  return embedding.at[ids].set(rows.astype(embedding.dtype))


def _zero_columns(kernel, ids):
  """kernel [D, V] with columns `ids` [n] zeroed."""
  return kernel.at[:, ids].set(0)


_scatter = jax.jit(_set_at)  # a new array: the old one stays valid
# In place: the old array is donated (invalid after; jax copies instead
# while a numpy view of it is alive). Pending reads of it finish first.
_scatter_in_place = jax.jit(_set_at, donate_argnums=0)
_zero_columns_copied = jax.jit(_zero_columns)
_zero_columns_in_place = jax.jit(_zero_columns, donate_argnums=0)


def warm_up_set_rows(params: Any) -> None:
  """Compiles `set_rows`' scatters (copied and in place; an untied logits
  kernel's too) for the id buckets of up to 64 rows, on copies of the
  arrays (the results are dropped), so that an add compiles nothing."""
  embedding = params["token_embedder"]["embedding"]
  kernel = _logits_kernel(params)
  scratch = jnp.copy(embedding)
  scratch_kernel = None if kernel is None else jnp.copy(kernel)
  for size in ROW_BUCKETS[:-1]:
    ids = np.zeros(size, np.int32)
    rows = np.zeros((size, embedding.shape[1]), np.float32)
    jax.block_until_ready(_scatter(embedding, ids, rows))
    scratch = _scatter_in_place(scratch, ids, rows)
    if kernel is not None:
      jax.block_until_ready(_zero_columns_copied(kernel, ids))
      scratch_kernel = _zero_columns_in_place(scratch_kernel, ids)
  jax.block_until_ready((scratch, scratch_kernel))


def set_rows(
  params: Any,
  vocab,
  rows: Mapping[str, np.ndarray],
  *,
  in_place: bool = False,
) -> Any:
  """`params` with the embedding [V, D] rows of docid tokens `rows` set
  (token -> [D]) and an untied logits kernel's columns of them zeroed.

  in_place=False: new device arrays (O(V D)); `params` stays valid.
  in_place=True: the rows are written into `params`' embedding (and
  kernel) buffers, O(len(rows) D); `params`' arrays are invalid after, so
  the caller must make sure nothing dispatches on them again (searches
  already dispatched read the old values: the write waits for them).

  The ids are padded to ROW_BUCKETS by repeating the first (same row,
  same value), so a few compiled shapes serve every add.
  """
  if not rows:
    return params
  ids = np.array([vocab.docid_token_id(t) for t in rows], np.int32)
  values = np.stack(list(rows.values())).astype(np.float32)  # [n, D]
  size = _bucket(len(ids), ROW_BUCKETS)
  ids = np.concatenate([ids, np.full(size - len(ids), ids[0], np.int32)])
  values = np.concatenate(
    [values, np.repeat(values[:1], size - len(values), 0)]
  )  # --> [size, D]
  scatter = _scatter_in_place if in_place else _scatter
  embedder = dict(params["token_embedder"])
  embedder["embedding"] = scatter(embedder["embedding"], ids, values)
  params = {**params, "token_embedder": embedder}
  return zero_logit_columns(params, ids, in_place=in_place)


def _logits_kernel(params: Any):
  """An untied logits kernel [D, V], or None (tied logits)."""
  logits = params.get("decoder", {}).get("logits_dense")
  return None if logits is None else logits["kernel"]


def zero_logit_columns(
  params: Any, ids: np.ndarray, *, in_place: bool = False
) -> Any:
  """`params` with an untied logits kernel's [D, V] columns `ids` [n]
  zeroed (tokens whose rows were set online: new ones already are zero; a
  reused one must not keep the column learnt for a deleted document); as
  given with tied logits. in_place: as `set_rows`'."""
  kernel = _logits_kernel(params)
  if kernel is None or not len(ids):
    return params
  zero = _zero_columns_in_place if in_place else _zero_columns_copied
  logits = params["decoder"]["logits_dense"]
  return {
    **params,
    "decoder": {
      **params["decoder"],
      "logits_dense": {**logits, "kernel": zero(kernel, ids)},
    },
  }
