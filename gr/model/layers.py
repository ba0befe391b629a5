"""T5 multi-head attention (Flax linen): no 1/sqrt(d) scaling, no biases.

Self-attention (bidirectional in the encoder, causal with a KV cache in the
decoder) and cross-attention, whose keys and values may come projected once
per query (gr/model/network.py's `CrossAttentionKV`). Used by the encoder and
decoder layers of gr/model/blocks.py.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gr import partitioning
from gr.model import blocks


class MultiHeadAttention(nn.Module):
  """T5 multi-head attention (no 1/sqrt(d) scaling, no biases).

  In `decode=True` mode (decoder self-attention only) keys and values are
  kept in the 'cache' collection: cached_key / cached_value
  [batch, max_length, heads, kv] and a 0-d int32 cache_index.
  """

  config: Any  # a gr.model.network.T5Config

  def _project(self, name: str, x: jax.Array, scale: float) -> jax.Array:
    """x [batch, length, embed] -> [batch, length, heads, kv]."""
    cfg = self.config
    y = blocks.DenseGeneral(
      (cfg.num_heads, cfg.head_dim),
      (partitioning.EMBED_AXIS, partitioning.HEADS_AXIS, partitioning.KV_AXIS),
      dtype=cfg.activation_dtype,
      init_scale=scale,
      init_distribution='normal',
      name=name,
    )(x)
    return nn.with_logical_constraint(
      y,
      (
        partitioning.BATCH_AXIS,
        partitioning.LENGTH_AXIS,
        partitioning.HEADS_AXIS,
        partitioning.KV_AXIS,
      ),
    )

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
      logits = jnp.where(mask, logits, blocks.MASKED_LOGIT)
    weights = blocks.dropout(
      cfg, jax.nn.softmax(logits, axis=-1), enable_dropout
    )
    out = jnp.einsum(
      'bhqk,bkhd->bqhd', weights.astype(cfg.activation_dtype), value
    )
    return blocks.DenseGeneral(
      (inputs_q.shape[-1],),
      (partitioning.HEADS_AXIS, partitioning.KV_AXIS, partitioning.EMBED_AXIS),
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


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block with residuals."""

  config: Any  # a gr.model.network.T5Config

  @nn.compact
  def __call__(self, x, mask, position_bias, enable_dropout=False):
    """x [batch, length, embed] -> same shape."""
    cfg = self.config
    norm = functools.partial(
      blocks.RMSNorm, cfg.layer_norm_epsilon, cfg.activation_dtype
    )
    y = norm(name='pre_attention_layer_norm')(x)
    y = MultiHeadAttention(cfg, name='attention')(
      y, y, mask, position_bias, enable_dropout=enable_dropout
    )
    x = x + blocks.dropout(cfg, y, enable_dropout)
    y = norm(name='pre_mlp_layer_norm')(x)
    y = blocks.MlpBlock(cfg, name='mlp')(y, enable_dropout)
    return blocks.constrain_embed(x + blocks.dropout(cfg, y, enable_dropout))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP blocks."""

  config: Any  # a gr.model.network.T5Config

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
      blocks.RMSNorm, cfg.layer_norm_epsilon, cfg.activation_dtype
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
    y = y + blocks.dropout(cfg, z, enable_dropout)
    z = norm(name='pre_cross_attention_layer_norm')(y)
    z = MultiHeadAttention(cfg, name='encoder_decoder_attention')(
      z, encoded, cross_mask, enable_dropout=enable_dropout
    )
    y = y + blocks.dropout(cfg, z, enable_dropout)
    z = norm(name='pre_mlp_layer_norm')(y)
    z = blocks.MlpBlock(cfg, name='mlp')(z, enable_dropout)
    return blocks.constrain_embed(y + blocks.dropout(cfg, z, enable_dropout))


class Encoder(nn.Module):
  """Embeds tokens and runs the encoder stack."""

  config: Any  # a gr.model.network.T5Config
  shared_embedding: nn.Module  # gr.model.network.Embed

  @nn.compact
  def __call__(self, encoder_input_tokens, enable_dropout=False):
    """encoder_input_tokens [batch, length] -> [batch, length, embed]."""
    cfg = self.config
    x = blocks.dropout(
      cfg, self.shared_embedding(encoder_input_tokens), enable_dropout
    )
    x = blocks.constrain_embed(x)
    length = encoder_input_tokens.shape[1]
    bias = blocks.RelativePositionBias(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      bidirectional=True,
      name='relpos_bias',
    )(length, length)
    mask = blocks.key_mask(encoder_input_tokens)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f'layers_{i}')(x, mask, bias, enable_dropout)
    x = blocks.RMSNorm(
      cfg.layer_norm_epsilon, cfg.activation_dtype, name='encoder_norm'
    )(x)
    return blocks.dropout(cfg, x, enable_dropout)
