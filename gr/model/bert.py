"""BERT-family encoders (BERT, MiniLM, bge, e5) in Flax, from a HF folder.

A Hugging Face folder holds config.json, model.safetensors and
tokenizer.json. `BertEncoder` reproduces HF's BertModel hidden states
(post-LayerNorm layers, exact GELU) and can run a slice of its layers:

  hidden = encoder(token_ids, mask, stop_layer=k)   # embeddings + layers < k
  hidden = encoder(hidden, mask, start_layer=k)     # layers >= k

so the outputs of frozen bottom layers can be computed once and cached
(gr/model/encoder_cache.py) while only the top layers train.

Every parameter carries logical axis names (gr/partitioning.py's rules):
  word_embeddings/embedding            [vocab, embed]  (rows padded, below)
  position_embeddings/embedding        [positions, embed]
  layer_{i}/attention/{query,key,value}/kernel  [embed, heads]   (heads*kv)
  layer_{i}/attention/output/kernel    [heads, embed]
  layer_{i}/intermediate/kernel        [embed, mlp]
  layer_{i}/output/kernel              [mlp, embed]
so a mesh shards the large BERT matrices along 'model' like the T5 ones.
"""

import dataclasses
import json
import math
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from gr import atomic_io
from gr import partitioning

# Word-embedding rows are padded to a multiple of this (as gr/model/models.py pads
# T5's vocabulary), so the 'vocab' axis shards evenly over 'model': BERT's
# 30522 rows do not divide by 4 or 8. The padding rows are zero, never read.
VOCAB_MULTIPLE = 128


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

  @property
  def embedding_rows(self) -> int:
    """vocab_size rounded up to VOCAB_MULTIPLE (word_embeddings rows)."""
    return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

  @classmethod
  def from_hf_json(cls, path: str) -> "BertConfig":
    """Reads a Hugging Face BERT config.json."""
    with open(path) as f:
      hf = json.load(f)
    if hf.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"{path}: hidden_act {hf['hidden_act']!r} unsupported")
    return cls(
      hf["vocab_size"],
      hf["hidden_size"],
      hf["num_hidden_layers"],
      hf["num_attention_heads"],
      hf["intermediate_size"],
      hf["max_position_embeddings"],
      hf["type_vocab_size"],
      hf["layer_norm_eps"],
    )

  @classmethod
  def from_folder(cls, path: str) -> "BertConfig":
    return cls.from_hf_json(os.path.join(path, "config.json"))


def _dense(features: int, axes: tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(
    features,
    name=name,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.normal(0.02), axes
    ),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
  )


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=config.layer_norm_eps,
    name=name,
    scale_init=nn.with_logical_partitioning(
      nn.initializers.ones, (partitioning.EMBED_AXIS,)
    ),
    bias_init=nn.with_logical_partitioning(
      nn.initializers.zeros, (partitioning.EMBED_AXIS,)
    ),
  )


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
      projected = _dense(
        cfg.hidden_size,
        (partitioning.EMBED_AXIS, partitioning.HEADS_AXIS),
        name,
      )(hidden)
      projected = projected.reshape(batch, length, cfg.num_heads, head_dim)
      return projected.transpose(0, 2, 1, 3)
      # --> [batch, heads, length, head_dim]

    # Heads lead, so each product is a plain batched matmul: XLA:CPU ran
    # the einsum 'bqhd,bkhd->bhqk' on the [batch, length, heads] layout
    # 1.5x slower per pass at 32 and 64 rows of 128 tokens (WORKSPACE,
    # "The encoder's attention as batched matmuls").
    keys = heads("key").swapaxes(-1, -2)  # [batch, heads, head_dim, length]
    scores = jnp.matmul(heads("query"), keys) / math.sqrt(head_dim)
    scores = jnp.where(
      mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min
    )
    probs = jax.nn.softmax(scores, axis=-1)  # [batch, heads, q, k]
    context = jnp.matmul(probs, heads("value"))  # [batch, heads, q, d]
    context = context.transpose(0, 2, 1, 3).reshape(
      batch, length, cfg.hidden_size
    )
    # --> [batch, length, hidden]
    return _dense(
      cfg.hidden_size,
      (partitioning.HEADS_AXIS, partitioning.EMBED_AXIS),
      "output",
    )(context)


class Layer(nn.Module):
  """Post-LayerNorm transformer layer (BERT)."""

  config: BertConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    attended = SelfAttention(cfg, name="attention")(hidden, mask)
    hidden = _layer_norm(cfg, "attention_norm")(hidden + attended)
    inner = _dense(
      cfg.intermediate_size,
      (partitioning.EMBED_AXIS, partitioning.MLP_AXIS),
      "intermediate",
    )(hidden)
    inner = jax.nn.gelu(inner, approximate=False)
    out = _dense(
      cfg.hidden_size,
      (partitioning.MLP_AXIS, partitioning.EMBED_AXIS),
      "output",
    )(inner)
    return _layer_norm(cfg, "output_norm")(hidden + out)


class BertEncoder(nn.Module):
  """Token ids [batch, length] -> hidden states [batch, length, hidden].

  Runs layers [start_layer, stop_layer). Inputs are token ids [batch,
  length] (embedded first) or, to resume, the hidden states [batch, length,
  hidden] that layer start_layer - 1 (or the embeddings) produced.
  """

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    inputs: jax.Array,
    mask: jax.Array,
    start_layer: int = 0,
    stop_layer: int | None = None,
  ) -> jax.Array:
    cfg = self.config
    stop_layer = cfg.num_layers if stop_layer is None else stop_layer
    hidden = inputs if inputs.ndim == 3 else self._embed(inputs)
    for i in range(start_layer, stop_layer):
      hidden = Layer(cfg, name=f"layer_{i}")(hidden, mask)
    return hidden

  def _embed(self, token_ids: jax.Array) -> jax.Array:
    cfg = self.config

    def embed(n, name, axes):
      return nn.Embed(
        n,
        cfg.hidden_size,
        name=name,
        embedding_init=nn.with_logical_partitioning(
          nn.initializers.normal(0.02), axes
        ),
      )

    positions = jnp.arange(token_ids.shape[1])[None, :]
    hidden = (
      embed(
        cfg.embedding_rows,
        "word_embeddings",
        (partitioning.VOCAB_AXIS, partitioning.EMBED_AXIS),
      )(token_ids)
      + embed(
        cfg.max_positions,
        "position_embeddings",
        (partitioning.POSITIONS_AXIS, partitioning.EMBED_AXIS),
      )(positions)
      + embed(
        cfg.type_vocab_size,
        "token_type_embeddings",
        (partitioning.TOKEN_TYPES_AXIS, partitioning.EMBED_AXIS),
      )(jnp.zeros_like(token_ids))
    )
    return _layer_norm(cfg, "embeddings_norm")(hidden)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [batch, length, d], mask [batch, length] -> mean [batch, d]."""
  weights = mask.astype(hidden.dtype)[:, :, None]
  return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)


def mean_pool_normalise(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [batch, length, d], mask [batch, length] -> unit vectors [batch, d]."""
  pooled = mean_pool(hidden, mask)
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
    for n in ("word", "position", "token_type")
  }
  words = params["word_embeddings"]["embedding"]
  if words.shape[0] != config.vocab_size:
    raise ValueError(
      f"{path}: {words.shape[0]} word embeddings, config "
      f"vocab_size {config.vocab_size}"
    )
  params["word_embeddings"]["embedding"] = jnp.pad(
    words, ((0, config.embedding_rows - config.vocab_size), (0, 0))
  )
  params["embeddings_norm"] = norm("embeddings.LayerNorm")
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}"
    attention = {
      n: dense(f"{p}.attention.self.{n}") for n in ("query", "key", "value")
    }
    attention["output"] = dense(f"{p}.attention.output.dense")
    params[f"layer_{i}"] = {
      "attention": attention,
      "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
      "intermediate": dense(f"{p}.intermediate.dense"),
      "output": dense(f"{p}.output.dense"),
      "output_norm": norm(f"{p}.output.LayerNorm"),
    }
  return params


def hf_tensors(params: dict[str, Any], config: BertConfig) -> dict[str, Any]:
  """BertEncoder params -> HF BertModel tensors (numpy float32), the inverse
  of `params_from_safetensors` (padding rows of the word embeddings cut)."""
  out = {}

  def put(name, value):
    out[name] = np.ascontiguousarray(np.asarray(value, np.float32))

  def dense(name, p):
    put(f"{name}.weight", np.asarray(p["kernel"]).T)
    put(f"{name}.bias", p["bias"])

  def norm(name, p):
    put(f"{name}.weight", p["scale"])
    put(f"{name}.bias", p["bias"])

  for n in ("word", "position", "token_type"):
    put(
      f"embeddings.{n}_embeddings.weight",
      params[f"{n}_embeddings"]["embedding"],
    )
  words = "embeddings.word_embeddings.weight"
  out[words] = out[words][: config.vocab_size]
  norm("embeddings.LayerNorm", params["embeddings_norm"])
  for i in range(config.num_layers):
    p, layer = f"encoder.layer.{i}", params[f"layer_{i}"]
    for n in ("query", "key", "value"):
      dense(f"{p}.attention.self.{n}", layer["attention"][n])
    dense(f"{p}.attention.output.dense", layer["attention"]["output"])
    norm(f"{p}.attention.output.LayerNorm", layer["attention_norm"])
    dense(f"{p}.intermediate.dense", layer["intermediate"])
    dense(f"{p}.output.dense", layer["output"])
    norm(f"{p}.output.LayerNorm", layer["output_norm"])
  return out


def save_folder(
  params: dict[str, Any], config: BertConfig, source_dir: str, out_dir: str
) -> None:
  """Writes `params` as a HF folder at out_dir: source_dir's other files
  (config, tokenizer, sentence-transformers settings) and a new
  model.safetensors, replacing out_dir whole (`atomic_io.replaced_dir`)."""
  with atomic_io.replaced_dir(out_dir) as staging:
    for name in os.listdir(source_dir):
      src = os.path.join(source_dir, name)
      if name != "model.safetensors" and os.path.isfile(src):
        shutil.copyfile(src, os.path.join(staging, name))
    safetensors.numpy.save_file(
      hf_tensors(params, config), os.path.join(staging, "model.safetensors")
    )


def load_params(path: str, config: BertConfig | None = None) -> dict[str, Any]:
  """A HF folder's model.safetensors as BertEncoder params."""
  config = config or BertConfig.from_folder(path)
  return params_from_safetensors(
    os.path.join(path, "model.safetensors"), config
  )
