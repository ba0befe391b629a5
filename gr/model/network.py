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

Logical axis names (for gr/partitioning.py's rules):
  parameters:  'vocab', 'embed', 'mlp', 'heads', 'kv', 'relpos_buckets'
  activations: 'batch', 'length', 'embed', 'mlp', 'heads', 'kv', 'vocab'
Parameter tree (kernel shapes):
  token_embedder/embedding                       [vocab, embed]
  encoder/relpos_bias/rel_embedding              [heads, relpos_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale  [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel  [embed, heads, kv]
  encoder/layers_{i}/attention/out/kernel        [heads, kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale    [embed]
  encoder/layers_{i}/mlp/{wi | wi_0, wi_1}/kernel  [embed, mlp]
  encoder/layers_{i}/mlp/wo/kernel               [mlp, embed]
  encoder/encoder_norm/scale                     [embed]
  decoder/relpos_bias/rel_embedding              [heads, relpos_buckets]
  decoder/layers_{i}/{pre_self_attention_layer_norm, pre_cross_attention_
    layer_norm, pre_mlp_layer_norm}/scale, self_attention/...,
    encoder_decoder_attention/..., mlp/...       (as in the encoder)
  decoder/decoder_norm/scale                     [embed]
  decoder/logits_dense/kernel                    [embed, vocab] (untied only)
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from gr.model import dropout as dropout_lib

PARAM_AXIS_NAMES = ('vocab', 'embed', 'mlp', 'heads', 'kv', 'relpos_buckets')
ACTIVATION_AXIS_NAMES = (
  'batch',
  'length',
  'embed',
  'mlp',
  'heads',
  'kv',
  'vocab',
)

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
  'relu': nn.relu,
  'gelu': functools.partial(nn.gelu, approximate=True),  # HF gelu_new
  'gelu_exact': functools.partial(nn.gelu, approximate=False),  # HF gelu
  'silu': nn.silu,
  'linear': lambda x: x,
}
DTYPES: Mapping[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Additive stand-in for -inf on masked attention logits (fp32 logits).
_MASKED_LOGIT = -1e10


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
    unknown = [a for a in self.mlp_activations if a not in ACTIVATIONS]
    if unknown or not self.mlp_activations:
      raise ValueError(
        f'T5Config.mlp_activations={self.mlp_activations!r}: '
        f'each must be one of {sorted(ACTIVATIONS)}'
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
    return cls(
      **{
        **dict(
          vocab_size=vocab_size,
          emb_dim=64,
          num_heads=4,
          num_encoder_layers=2,
          num_decoder_layers=2,
          head_dim=16,
          mlp_dim=128,
        ),
        **overrides,
      }
    )

  @classmethod
  def small(cls, vocab_size: int = 32128, **overrides) -> 'T5Config':
    """T5.1.1-small as released (google/t5-v1_1-small, t5x small.gin)."""
    return cls(
      **{
        **dict(
          vocab_size=vocab_size,
          emb_dim=512,
          num_heads=6,
          num_encoder_layers=8,
          num_decoder_layers=8,
          head_dim=64,
          mlp_dim=1024,
        ),
        **overrides,
      }
    )

  @classmethod
  def base(cls, vocab_size: int = 32128, **overrides) -> 'T5Config':
    """T5.1.1-base: d768, 12+12 layers, 12 heads of 64, mlp 2048."""
    return cls(
      **{
        **dict(
          vocab_size=vocab_size,
          emb_dim=768,
          num_heads=12,
          num_encoder_layers=12,
          num_decoder_layers=12,
          head_dim=64,
          mlp_dim=2048,
        ),
        **overrides,
      }
    )


def relative_position_buckets(
  relative_position: np.ndarray,
  *,
  bidirectional: bool,
  num_buckets: int,
  max_distance: int,
) -> np.ndarray:
  """Maps relative positions (memory - query) to T5 bucket ids.

  Computed in float32 exactly as Mesh-TF and HF do (no epsilon), so bucket
  boundaries agree with weights trained there.

  Args:
    relative_position: int array of any shape, key position - query position.
    bidirectional: False for causal attention (positive offsets share bucket 0).
    num_buckets: total number of buckets.
    max_distance: offsets at or beyond this share the last bucket.

  Returns:
    int32 array of the same shape with values in [0, num_buckets).
  """
  n = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    buckets += (n > 0) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(-n, 0)
  max_exact = num_buckets // 2
  ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
  scaled = (
    np.log(ratio)
    / np.float32(math.log(max_distance / max_exact))
    * np.float32(num_buckets - max_exact)
  )
  large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
  return (buckets + np.where(n < max_exact, n, large)).astype(np.int32)


def cache_length(cache: Mapping[str, Any]) -> int:
  """Returns max_decode_length of a decoder cache (from its cached keys)."""
  flat = traverse_util.flatten_dict(dict(cache))
  lengths = {v.shape[1] for k, v in flat.items() if k[-1] == 'cached_key'}
  if len(lengths) != 1:
    raise ValueError(f'cache has no single cached_key length: {lengths}')
  return lengths.pop()


def _param_init(
  scale: float, mode: str, distribution: str, num_in_dims: int, ndim: int
) -> Callable[..., jax.Array]:
  """Variance-scaling initialiser whose fan-in covers the first dims."""
  return nn.initializers.variance_scaling(
    scale,
    mode,
    distribution,
    in_axis=tuple(range(num_in_dims)),
    out_axis=tuple(range(num_in_dims, ndim)),
  )


class DenseGeneral(nn.Module):
  """Bias-free projection contracting the last `num_in_dims` input dims.

  inputs [..., *in_dims] x kernel [*in_dims, *features] -> [..., *features].
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_in_dims: int = 1
  dtype: Any = jnp.float32
  output_dtype: Any = None  # accumulate and return in this dtype if given
  init_scale: float = 1.0
  init_distribution: str = 'truncated_normal'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    in_shape = inputs.shape[inputs.ndim - self.num_in_dims :]
    shape = tuple(in_shape) + tuple(self.features)
    init = _param_init(
      self.init_scale,
      'fan_in',
      self.init_distribution,
      self.num_in_dims,
      len(shape),
    )
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(init, self.kernel_axes),
      shape,
      jnp.float32,
    )
    return _dense_general(
      inputs, kernel, self.num_in_dims, self.dtype, self.output_dtype
    )


def _dense_general(
  inputs: jax.Array,
  kernel: jax.Array,
  num_in_dims: int,
  dtype: Any,
  output_dtype: Any = None,
) -> jax.Array:
  """DenseGeneral's product (also used on params outside the module)."""
  contract = (
    tuple(range(inputs.ndim - num_in_dims, inputs.ndim)),
    tuple(range(num_in_dims)),
  )
  return jax.lax.dot_general(
    inputs.astype(dtype),
    kernel.astype(dtype),
    (contract, ((), ())),
    preferred_element_type=output_dtype,
  )


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives tied logits."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
      'embedding',
      nn.with_logical_partitioning(
        nn.initializers.normal(stddev=1.0), ('vocab', 'embed')
      ),
      (self.num_embeddings, self.features),
      jnp.float32,
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens [batch, length] int -> [batch, length, embed] in dtype."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, query: jax.Array) -> jax.Array:
    """query [..., embed] -> fp32 logits [..., vocab]."""
    return _attend(query, self.embedding, self.dtype)


def _attend(query: jax.Array, table: jax.Array, dtype: Any) -> jax.Array:
  """Embed.attend's product: query [..., embed] x table [vocab, embed]."""
  return jnp.einsum(
    '...d,vd->...v',
    query.astype(dtype),
    table.astype(dtype),
    preferred_element_type=jnp.float32,
  )


class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, computed in fp32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
      'scale',
      nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      (x.shape[-1],),
      jnp.float32,
    )
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(variance + self.epsilon) * scale).astype(
      self.dtype
    )


class RelativePositionBias(nn.Module):
  """Learned per-head bias for each relative-position bucket."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool

  @nn.compact
  def __call__(self, query_length: int, key_length: int) -> jax.Array:
    """Returns the fp32 bias [1, heads, query_length, key_length]."""
    table = self.param(
      'rel_embedding',
      nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
        ('heads', 'relpos_buckets'),
      ),
      (self.num_heads, self.num_buckets),
      jnp.float32,
    )
    offsets = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = relative_position_buckets(
      offsets,
      bidirectional=self.bidirectional,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )
    return jnp.take(table, buckets, axis=1)[None]  # [1, heads, q, k]


def _dropout(
  config: T5Config,
  x: jax.Array,
  enable_dropout: bool,
) -> jax.Array:
  return dropout_lib.Dropout(
    rate=config.dropout_rate, implementation=config.dropout_implementation
  )(x, deterministic=not enable_dropout)


class MultiHeadAttention(nn.Module):
  """T5 multi-head attention (no 1/sqrt(d) scaling, no biases).

  In `decode=True` mode (decoder self-attention only) keys and values are
  kept in the 'cache' collection: cached_key / cached_value
  [batch, max_length, heads, kv] and a 0-d int32 cache_index.
  """

  config: T5Config

  def _project(self, name: str, x: jax.Array, scale: float) -> jax.Array:
    """x [batch, length, embed] -> [batch, length, heads, kv]."""
    cfg = self.config
    y = DenseGeneral(
      (cfg.num_heads, cfg.head_dim),
      ('embed', 'heads', 'kv'),
      dtype=cfg.activation_dtype,
      init_scale=scale,
      init_distribution='normal',
      name=name,
    )(x)
    return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

  @nn.compact
  def __call__(
    self,
    inputs_q: jax.Array,
    inputs_kv: jax.Array,
    mask: jax.Array | None = None,
    position_bias: jax.Array | None = None,
    *,
    decode: bool = False,
    enable_dropout: bool = False,
  ) -> jax.Array:
    """Attends from inputs_q [B, Lq, D] to inputs_kv [B, Lk, D].

    Args:
      inputs_q: queries [batch, q_length, embed].
      inputs_kv: keys/values source [batch or 1, kv_length, embed] (1: one
        source shared by every query row), or a (key, value) pair already
        projected, each [batch or 1, kv_length, heads, kv] (cross-attention
        from a `CrossAttentionKV`).
      mask: bool [batch or 1, 1, q_length, kv_length]; False = masked.
        Ignored for cached decode steps (the cache index sets it).
      position_bias: fp32 [1, heads, q_length, kv_length]; in decode mode the
        full [1, heads, max_length, max_length] table, sliced per step.
      decode: use and update the key/value cache.
      enable_dropout: apply attention-weight dropout.

    Returns:
      [batch, q_length, embed] in the activation dtype.
    """
    cfg = self.config
    query = self._project('query', inputs_q, 1.0 / cfg.head_dim)
    if isinstance(inputs_kv, tuple):  # projected once per query
      key, value = inputs_kv
    else:
      key = self._project('key', inputs_kv, 1.0)
      value = self._project('value', inputs_kv, 1.0)
    if decode:
      key, value, mask, position_bias = self._use_cache(
        key, value, mask, position_bias
      )
    elif key.shape[0] == 1 < query.shape[0]:
      # One source for many queries (exact scoring of every docid against
      # one input): project it once, then share it across the batch.
      key = jnp.broadcast_to(key, (query.shape[0],) + key.shape[1:])
      value = jnp.broadcast_to(value, (query.shape[0],) + value.shape[1:])
    logits = jnp.einsum(
      'bqhd,bkhd->bhqk', query, key, preferred_element_type=jnp.float32
    )
    if position_bias is not None:
      logits = logits + position_bias
    if mask is not None:
      logits = jnp.where(mask, logits, _MASKED_LOGIT)
    weights = _dropout(cfg, jax.nn.softmax(logits, axis=-1), enable_dropout)
    out = jnp.einsum(
      'bhqk,bkhd->bqhd', weights.astype(cfg.activation_dtype), value
    )
    return DenseGeneral(
      (inputs_q.shape[-1],),
      ('heads', 'kv', 'embed'),
      num_in_dims=2,
      dtype=cfg.activation_dtype,
      init_distribution='normal',
      name='out',
    )(out)

  def _use_cache(self, key, value, mask, position_bias):
    """Writes one step's key/value [B, 1, H, kv] into the cache.

    On the creating call (cache absent) the inputs pass through unchanged
    and the cache is allocated with their [B, max_length, H, kv] shape.
    """
    is_initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable(
      'cache', 'cached_key', jnp.zeros, key.shape, key.dtype
    )
    cached_value = self.variable(
      'cache', 'cached_value', jnp.zeros, value.shape, value.dtype
    )
    cache_index = self.variable(
      'cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32)
    )
    if not is_initialized:
      return key, value, mask, position_bias
    batch, max_length = cached_key.value.shape[:2]
    if key.shape[1] != 1 or key.shape[0] != batch:
      raise ValueError(
        f'decode step expects decoder input [{batch}, 1], got '
        f'[{key.shape[0]}, {key.shape[1]}]'
      )
    index = cache_index.value
    start = (0, index, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(
      cached_key.value, key.astype(cached_key.value.dtype), start
    )
    cached_value.value = jax.lax.dynamic_update_slice(
      cached_value.value, value.astype(cached_value.value.dtype), start
    )
    cache_index.value = index + 1
    mask = (jnp.arange(max_length) <= index)[None, None, None, :]  # [1,1,1,L]
    if position_bias is not None:
      position_bias = jax.lax.dynamic_slice_in_dim(
        position_bias, index, 1, axis=2
      )  # --> [1, heads, 1, max_length]
    return cached_key.value, cached_value.value, mask, position_bias


class MlpBlock(nn.Module):
  """Feed-forward: prod_i act_i(x W_i) W_o (gated when 2 activations)."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, enable_dropout: bool = False) -> jax.Array:
    """x [batch, length, embed] -> [batch, length, embed]."""
    cfg = self.config
    acts = cfg.mlp_activations
    hidden = None
    for i, act in enumerate(acts):
      name = 'wi' if len(acts) == 1 else f'wi_{i}'
      h = ACTIVATIONS[act](
        DenseGeneral(
          (cfg.mlp_dim,),
          ('embed', 'mlp'),
          dtype=cfg.activation_dtype,
          name=name,
        )(x)
      )
      hidden = h if hidden is None else hidden * h
    hidden = _dropout(cfg, hidden, enable_dropout)
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    return DenseGeneral(
      (x.shape[-1],), ('mlp', 'embed'), dtype=cfg.activation_dtype, name='wo'
    )(hidden)


def _constrain_embed(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block with residuals."""

  config: T5Config

  @nn.compact
  def __call__(self, x, mask, position_bias, enable_dropout=False):
    """x [batch, length, embed] -> same shape."""
    cfg = self.config
    norm = functools.partial(
      RMSNorm, cfg.layer_norm_epsilon, cfg.activation_dtype
    )
    y = norm(name='pre_attention_layer_norm')(x)
    y = MultiHeadAttention(cfg, name='attention')(
      y, y, mask, position_bias, enable_dropout=enable_dropout
    )
    x = x + _dropout(cfg, y, enable_dropout)
    y = norm(name='pre_mlp_layer_norm')(x)
    y = MlpBlock(cfg, name='mlp')(y, enable_dropout)
    return _constrain_embed(x + _dropout(cfg, y, enable_dropout))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP blocks."""

  config: T5Config

  @nn.compact
  def __call__(
    self,
    y,
    encoded,
    self_mask,
    cross_mask,
    position_bias,
    *,
    decode=False,
    enable_dropout=False,
  ):
    """y [batch, target_length, embed].

    encoded: [batch, input_length, width], or this layer's projected
    cross-attention (key, value), each [batch, input_length, heads, kv].
    """
    cfg = self.config
    norm = functools.partial(
      RMSNorm, cfg.layer_norm_epsilon, cfg.activation_dtype
    )
    z = norm(name='pre_self_attention_layer_norm')(y)
    z = MultiHeadAttention(cfg, name='self_attention')(
      z,
      z,
      self_mask,
      position_bias,
      decode=decode,
      enable_dropout=enable_dropout,
    )
    y = y + _dropout(cfg, z, enable_dropout)
    z = norm(name='pre_cross_attention_layer_norm')(y)
    z = MultiHeadAttention(cfg, name='encoder_decoder_attention')(
      z, encoded, cross_mask, enable_dropout=enable_dropout
    )
    y = y + _dropout(cfg, z, enable_dropout)
    z = norm(name='pre_mlp_layer_norm')(y)
    z = MlpBlock(cfg, name='mlp')(z, enable_dropout)
    return _constrain_embed(y + _dropout(cfg, z, enable_dropout))


def _key_mask(tokens: jax.Array) -> jax.Array:
  """tokens [batch, length] -> bool key mask [batch, 1, 1, length]."""
  return (tokens > 0)[:, None, None, :]


class Encoder(nn.Module):
  """Embeds tokens and runs the encoder stack."""

  config: T5Config
  shared_embedding: Embed

  @nn.compact
  def __call__(self, encoder_input_tokens, enable_dropout=False):
    """encoder_input_tokens [batch, length] -> [batch, length, embed]."""
    cfg = self.config
    x = _dropout(
      cfg, self.shared_embedding(encoder_input_tokens), enable_dropout
    )
    x = _constrain_embed(x)
    length = encoder_input_tokens.shape[1]
    bias = RelativePositionBias(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      bidirectional=True,
      name='relpos_bias',
    )(length, length)
    mask = _key_mask(encoder_input_tokens)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f'layers_{i}')(x, mask, bias, enable_dropout)
    x = RMSNorm(
      cfg.layer_norm_epsilon, cfg.activation_dtype, name='encoder_norm'
    )(x)
    return _dropout(cfg, x, enable_dropout)


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
    y = _dropout(
      cfg, self.shared_embedding(decoder_input_tokens), enable_dropout
    )
    y = _constrain_embed(y)
    length = decoder_input_tokens.shape[1]
    if decode:
      length = max_decode_length or length
    bias = RelativePositionBias(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      bidirectional=False,
      name='relpos_bias',
    )(length, length)
    self_mask = None if decode else _causal_mask(decoder_target_tokens, length)
    cross_mask = _key_mask(encoder_input_tokens)
    for i in range(cfg.num_decoder_layers):
      source = encoded
      if isinstance(encoded, CrossAttentionKV):
        source = (encoded.keys[i], encoded.values[i])
      y = DecoderLayer(cfg, name=f'layers_{i}')(
        y,
        source,
        self_mask,
        cross_mask,
        bias,
        decode=decode,
        enable_dropout=enable_dropout,
      )
    y = RMSNorm(
      cfg.layer_norm_epsilon, cfg.activation_dtype, name='decoder_norm'
    )(y)
    y = _dropout(cfg, y, enable_dropout)
    if return_hidden:
      return _constrain_embed(y)
    return nn.with_logical_constraint(
      self._logits(y), ('batch', 'length', 'vocab')
    )

  def _logits(self, y: jax.Array) -> jax.Array:
    """y [batch, length, embed] -> fp32 logits [batch, length, vocab]."""
    cfg = self.config
    if cfg.logits_via_embedding:
      return self.shared_embedding.attend(y * cfg.emb_dim**-0.5)
    return DenseGeneral(
      (cfg.vocab_size,),
      ('embed', 'vocab'),
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
    y = _dense_general(
      encoded, attention[name]['kernel'], 1, config.activation_dtype
    )
    return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

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
      return _attend(hidden, table, dtype)
    rows = jnp.take(table, tokens, axis=0)  # --> [N, M, E]
    return jnp.einsum(
      'ne,nme->nm',
      hidden.astype(dtype),
      rows.astype(dtype),
      preferred_element_type=jnp.float32,
    )
  kernel = params['decoder']['logits_dense']['kernel']  # [E, V]
  if tokens is None:
    return _dense_general(hidden, kernel, 1, dtype, jnp.float32)
  columns = jnp.take(kernel, tokens, axis=1)  # --> [E, N, M]
  return jnp.einsum(
    'ne,enm->nm',
    hidden.astype(dtype),
    columns.astype(dtype),
    preferred_element_type=jnp.float32,
  )


def _causal_mask(decoder_target_tokens, length):
  """Causal mask [1 or batch, 1, length, length], keys with target 0 off."""
  causal = np.tril(np.ones((length, length), dtype=bool))[None, None]
  if decoder_target_tokens is None:
    return jnp.asarray(causal)
  return causal & _key_mask(decoder_target_tokens)


class Transformer(nn.Module):
  """T5 encoder-decoder with a shared token embedding."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(
      cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype
    )
    self.encoder = Encoder(cfg, self.token_embedder)
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
