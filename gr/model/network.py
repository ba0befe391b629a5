"""T5 encoder-decoder network (T5.1.1 and original T5) in Flax linen.

The network follows Mesh-TensorFlow / t5x T5 numerics so that HF-format
weights (gr/model/hf_import.py) reproduce HF transformers' logits:

* RMSNorm ("T5 LayerNorm"): no mean subtraction, no bias, computed in fp32.
* No biases anywhere; attention logits are NOT scaled by 1/sqrt(head_dim)
  (T5 folds that into the query initialiser).
* Relative position biases: one table per stack, computed once and shared by
  every layer; bidirectional buckets in the encoder, causal in the decoder,
  none in cross-attention.
* Feed-forward: gated ("gelu", "linear") as T5.1.1 (tanh-approximate GELU,
  HF's `gelu_new`) or a single ("relu",) as the original T5.
* Optional tied input/output embeddings; tied logits are scaled by
  emb_dim**-0.5 (as Mesh-TF, t5x and HF do).

Parameters are fp32; activations run in `T5Config.dtype` (fp32 or bf16);
attention softmax, norms and the final logits are computed in fp32.

Masks: token id 0 is padding. Encoder positions holding 0 are masked as keys
in encoder self-attention and in cross-attention. Decoder self-attention is
causal (plus, when `decoder_target_tokens` is given, positions whose target is
0 are masked as keys, t5x semantics).

Decoding with a cache (`decode=True`) is t5x style: a first call with the full
[batch, max_decode_length] decoder input and `mutable=['cache']` creates the
'cache' collection; each later call feeds one token [batch, 1] and returns the
updated cache. Every cache array has leading dim batch, except the 0-d int32
`cache_index` scalars (one per decoder self-attention layer), so beams can be
expanded or gathered with `jax.tree.map`.

Cross-attention keys and values depend only on the encoder output, so a
decoding loop projects them once per query: `cross_attention_kv` gives a
`CrossAttentionKV` (every decoder layer's [batch, input_length, heads, kv]
keys and values), which the decoder takes in place of the encoder output
and then skips those projections (the same numbers, no per-step work).
`output_logits` is the output layer on its own: from the decoder's final
hidden states (`decode(..., return_hidden=True)`) to logits over the whole
vocabulary, or over a few listed tokens per row (the sparse output layer of
trie-constrained search, gr/decode/beam_search.py).

Logical axis names are gr/partitioning.py's constants (its rules map them
to mesh axes). Parameter tree (kernel shapes; the layers' own in
gr/model/layers.py):
  token_embedder/embedding                       [vocab, embed]
  encoder/encoder_norm/scale                     [embed]
  decoder/decoder_norm/scale                     [embed]
  decoder/logits_dense/kernel                    [embed, vocab] (untied only)
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from gr import partitioning
from gr.model import dropout as dropout_lib
from gr.model import blocks
from gr.model import layers

PARAM_AXIS_NAMES = (
  partitioning.VOCAB_AXIS,
  partitioning.EMBED_AXIS,
  partitioning.MLP_AXIS,
  partitioning.HEADS_AXIS,
  partitioning.KV_AXIS,
  partitioning.RELPOS_BUCKETS_AXIS,
)
ACTIVATION_AXIS_NAMES = (
  partitioning.BATCH_AXIS,
  partitioning.LENGTH_AXIS,
  partitioning.EMBED_AXIS,
  partitioning.MLP_AXIS,
  partitioning.HEADS_AXIS,
  partitioning.KV_AXIS,
  partitioning.VOCAB_AXIS,
)


DTYPES: Mapping[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of the T5 network (names follow t5x's gin macros)."""

  vocab_size: int
  emb_dim: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  head_dim: int
  mlp_dim: int
  mlp_activations: tuple[str, ...] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  # 'hash': masks from a counter hash (gr/model/dropout.py), ~50x cheaper than
  # 'bernoulli' (jax.random.bernoulli, flax's nn.Dropout) on CPU.
  dropout_implementation: str = 'hash'
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: str = 'float32'
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    for field in (
      'vocab_size',
      'emb_dim',
      'num_heads',
      'num_encoder_layers',
      'num_decoder_layers',
      'head_dim',
      'mlp_dim',
      'relative_attention_num_buckets',
      'relative_attention_max_distance',
    ):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(
          f'T5Config.{field} must be a positive int, got {value!r}'
        )
    self._check_choices()

  def _check_choices(self):
    unknown = [a for a in self.mlp_activations if a not in blocks.ACTIVATIONS]
    if unknown or not self.mlp_activations:
      raise ValueError(
        f'T5Config.mlp_activations={self.mlp_activations!r}: '
        f'each must be one of {sorted(blocks.ACTIVATIONS)}'
      )
    if self.dtype not in DTYPES:
      raise ValueError(
        f'T5Config.dtype={self.dtype!r}: must be one of {sorted(DTYPES)}'
      )
    if self.dropout_implementation not in dropout_lib.IMPLEMENTATIONS:
      raise ValueError(
        f'T5Config.dropout_implementation={self.dropout_implementation!r}: '
        f'must be one of {dropout_lib.IMPLEMENTATIONS}'
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
        f'T5Config.dropout_rate={self.dropout_rate!r}: must be in [0, 1)'
      )

  @property
  def activation_dtype(self) -> Any:
    return DTYPES[self.dtype]

  @classmethod
  def tiny(cls, vocab_size: int, **overrides) -> 'T5Config':
    """A test-sized T5.1.1: d64, 2+2 layers, 4 heads of 16, mlp 128."""
    return cls._sized(vocab_size, (64, 4, 2, 2, 16, 128), overrides)

  @classmethod
  def small(cls, vocab_size: int = 32128, **overrides) -> 'T5Config':
    """T5.1.1-small as released (google/t5-v1_1-small, t5x small.gin)."""
    return cls._sized(vocab_size, (512, 6, 8, 8, 64, 1024), overrides)

  @classmethod
  def base(cls, vocab_size: int = 32128, **overrides) -> 'T5Config':
    """T5.1.1-base: d768, 12+12 layers, 12 heads of 64, mlp 2048."""
    return cls._sized(vocab_size, (768, 12, 12, 12, 64, 2048), overrides)

  @classmethod
  def _sized(cls, vocab_size, sizes, overrides) -> 'T5Config':
    """sizes: (emb_dim, num_heads, encoder layers, decoder layers, head_dim,
    mlp_dim); `overrides` win over them."""
    names = (
      'emb_dim',
      'num_heads',
      'num_encoder_layers',
      'num_decoder_layers',
      'head_dim',
      'mlp_dim',
    )
    sized = dict(vocab_size=vocab_size, **dict(zip(names, sizes)))
    return cls(**{**sized, **overrides})


def cache_length(cache: Mapping[str, Any]) -> int:
  """Returns max_decode_length of a decoder cache (from its cached keys)."""
  flat = traverse_util.flatten_dict(dict(cache))
  lengths = {v.shape[1] for k, v in flat.items() if k[-1] == 'cached_key'}
  if len(lengths) != 1:
    raise ValueError(f'cache has no single cached_key length: {lengths}')
  return lengths.pop()


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives tied logits."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
      'embedding',
      nn.with_logical_partitioning(
        nn.initializers.normal(stddev=1.0),
        (partitioning.VOCAB_AXIS, partitioning.EMBED_AXIS),
      ),
      (self.num_embeddings, self.features),
      jnp.float32,
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens [batch, length] int -> [batch, length, embed] in dtype."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, query: jax.Array) -> jax.Array:
    """query [..., embed] -> fp32 logits [..., vocab]."""
    return _fp32_einsum('...d,vd->...v', query, self.embedding, self.dtype)


def _fp32_einsum(
  spec: str, x: jax.Array, y: jax.Array, dtype: Any
) -> jax.Array:
  """einsum(spec, x, y) on `dtype` operands, accumulated into fp32 (the
  output layer's products: Embed.attend and `output_logits`)."""
  return jnp.einsum(
    spec, x.astype(dtype), y.astype(dtype), preferred_element_type=jnp.float32
  )


class Decoder(nn.Module):
  """Runs the decoder stack and the output projection."""

  config: T5Config
  shared_embedding: Embed

  @nn.compact
  def __call__(
    self,
    encoded,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens=None,
    *,
    decode=False,
    max_decode_length=None,
    enable_dropout=False,
    return_hidden=False,
  ):
    """Returns fp32 logits [batch, target_length, vocab].

    encoded: the encoder output [batch, input_length, width], or its
    `CrossAttentionKV` (projected once). With return_hidden, returns the
    final hidden states [batch, target_length, embed] instead of logits
    (`output_logits` finishes them).
    """
    cfg = self.config
    y = blocks.dropout(
      cfg, self.shared_embedding(decoder_input_tokens), enable_dropout
    )
    y = blocks.constrain_embed(y)
    length = decoder_input_tokens.shape[1]
    if decode:
      length = max_decode_length or length
    bias = blocks.RelativePositionBias(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      bidirectional=False,
      name='relpos_bias',
    )(length, length)
    self_mask = (
      None if decode else blocks.causal_mask(decoder_target_tokens, length)
    )
    cross_mask = blocks.key_mask(encoder_input_tokens)
    for i in range(cfg.num_decoder_layers):
      source = encoded
      if isinstance(encoded, CrossAttentionKV):
        source = (encoded.keys[i], encoded.values[i])
      y = layers.DecoderLayer(cfg, name=f'layers_{i}')(
        y,
        source,
        self_mask,
        cross_mask,
        bias,
        decode=decode,
        enable_dropout=enable_dropout,
      )
    y = blocks.RMSNorm(
      cfg.layer_norm_epsilon, cfg.activation_dtype, name='decoder_norm'
    )(y)
    y = blocks.dropout(cfg, y, enable_dropout)
    if return_hidden:
      return blocks.constrain_embed(y)
    return nn.with_logical_constraint(
      self._logits(y),
      (
        partitioning.BATCH_AXIS,
        partitioning.LENGTH_AXIS,
        partitioning.VOCAB_AXIS,
      ),
    )

  def _logits(self, y: jax.Array) -> jax.Array:
    """y [batch, length, embed] -> fp32 logits [batch, length, vocab]."""
    cfg = self.config
    if cfg.logits_via_embedding:
      return self.shared_embedding.attend(y * cfg.emb_dim**-0.5)
    return blocks.DenseGeneral(
      (cfg.vocab_size,),
      (partitioning.EMBED_AXIS, partitioning.VOCAB_AXIS),
      dtype=cfg.activation_dtype,
      output_dtype=jnp.float32,
      name='logits_dense',
    )(y)


@flax.struct.dataclass
class CrossAttentionKV:
  """Every decoder layer's cross-attention keys and values, projected once.

  keys[i], values[i]: [batch or 1, input_length, heads, kv] of decoder
  layer i, in the activation dtype. The decoder takes it in place of the
  encoder output (same results, no per-step projections); its batch must
  match the decoder's (or be 1: one source shared by every row).
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]


def cross_attention_kv(
  config: T5Config, decoder_params: Mapping[str, Any], encoded: jax.Array
) -> CrossAttentionKV:
  """Projects encoded [B, Li, width] through each layer's key/value kernel.

  decoder_params: params['decoder'] (the T5 or BERT-encoder network); the
  products are MultiHeadAttention's own.
  """

  def project(attention, name):
    y = blocks.dense_general(
      encoded, attention[name]['kernel'], 1, config.activation_dtype
    )
    return nn.with_logical_constraint(
      y,
      (
        partitioning.BATCH_AXIS,
        partitioning.LENGTH_AXIS,
        partitioning.HEADS_AXIS,
        partitioning.KV_AXIS,
      ),
    )

  layers = [
    decoder_params[f'layers_{i}']['encoder_decoder_attention']
    for i in range(config.num_decoder_layers)
  ]
  return CrossAttentionKV(
    keys=tuple(project(a, 'key') for a in layers),
    values=tuple(project(a, 'value') for a in layers),
  )


def output_logits(
  config: T5Config,
  params: Mapping[str, Any],
  hidden: jax.Array,
  tokens: jax.Array | None = None,
) -> jax.Array:
  """The decoder's output layer, on its final hidden states.

  Args:
    config: the decoder's config.
    params: the whole network's params (token_embedder, decoder).
    hidden: [N, emb_dim] from `decode(..., return_hidden=True)`.
    tokens: optional [N, M] int token ids (each in [0, vocab)): score only
      these, gathering their M output rows ([N, M] instead of [N, V]).

  Returns:
    fp32 logits [N, vocab] (the decoder's own), or [N, M] for `tokens`.
  """
  dtype = config.activation_dtype
  if config.logits_via_embedding:
    table = params['token_embedder']['embedding']  # [V, E]
    hidden = hidden * config.emb_dim**-0.5
    if tokens is None:
      return _fp32_einsum('...d,vd->...v', hidden, table, dtype)
    rows = jnp.take(table, tokens, axis=0)  # --> [N, M, E]
    return _fp32_einsum('ne,nme->nm', hidden, rows, dtype)
  kernel = params['decoder']['logits_dense']['kernel']  # [E, V]
  if tokens is None:
    return blocks.dense_general(hidden, kernel, 1, dtype, jnp.float32)
  columns = jnp.take(kernel, tokens, axis=1)  # --> [E, N, M]
  return _fp32_einsum('ne,enm->nm', hidden, columns, dtype)


class Transformer(nn.Module):
  """T5 encoder-decoder with a shared token embedding."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(
      cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype
    )
    self.encoder = layers.Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(
    self, encoder_input_tokens: jax.Array, enable_dropout: bool = False
  ) -> jax.Array:
    """encoder_input_tokens [B, Li] int -> encoded [B, Li, emb_dim]."""
    return self.encoder(encoder_input_tokens, enable_dropout)

  def decode(
    self,
    encoded: jax.Array,
    encoder_input_tokens: jax.Array,
    decoder_input_tokens: jax.Array,
    decode: bool = False,
    max_decode_length: int | None = None,
    enable_dropout: bool = False,
    decoder_target_tokens: jax.Array | None = None,
    return_hidden: bool = False,
  ) -> jax.Array:
    """Decoder logits (also gr/model/bert_network.py's `decode`).

    Args:
      encoded: [B, Li, width] from `encode` (width = emb_dim, or a
        pretrained encoder's own), or its `CrossAttentionKV`.
      encoder_input_tokens: [B, Li] (for the cross-attention padding mask).
      decoder_input_tokens: [B, Lt]; with decode=True, [B, max_decode_length]
        on the cache-creating call, then [B, 1] per step.
      decode: use the 'cache' collection (apply with mutable=['cache']).
      max_decode_length: cache length; needed with decode=True for steps.
      enable_dropout: apply dropout ('dropout' rng).
      decoder_target_tokens: optional [B, Lt]; zeros are masked as keys.
      return_hidden: return the final hidden states [B, Lt, emb_dim]
        instead (for `output_logits`).

    Returns:
      fp32 logits [B, Lt, vocab] ([B, 1, vocab] per decode step).
    """
    return self.decoder(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      decode=decode,
      max_decode_length=max_decode_length,
      enable_dropout=enable_dropout,
      return_hidden=return_hidden,
    )

  def __call__(
    self,
    encoder_input_tokens: jax.Array,
    decoder_input_tokens: jax.Array,
    decoder_target_tokens: jax.Array | None = None,
    enable_dropout: bool = False,
  ) -> jax.Array:
    """Teacher-forced forward: [B, Li], [B, Lt] -> fp32 logits [B, Lt, V]."""
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      enable_dropout=enable_dropout,
      decoder_target_tokens=decoder_target_tokens,
    )
