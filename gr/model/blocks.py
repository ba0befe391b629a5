"""The T5 network's smallest blocks (Flax linen), t5x numerics.

Bias-free projections (`DenseGeneral`), RMSNorm, relative position biases,
dropout, the (gated) MLP and attention masks. gr/model/layers.py builds
attention and the encoder and decoder layers from them, gr/model/network.py
the encoder-decoder. A block that takes a config takes the network's
`T5Config`. Logical axis names are gr/partitioning.py's constants.

"""

import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gr import partitioning
from gr.model import dropout as dropout_lib

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
  'relu': nn.relu,
  'gelu': functools.partial(nn.gelu, approximate=True),  # HF gelu_new
  'gelu_exact': functools.partial(nn.gelu, approximate=False),  # HF gelu
  'silu': nn.silu,
  'linear': lambda x: x,
}


# Additive stand-in for -inf on masked attention logits (fp32 logits).
MASKED_LOGIT = -1e10


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
    return dense_general(
      inputs, kernel, self.num_in_dims, self.dtype, self.output_dtype
    )


def dense_general(
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


class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, computed in fp32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
      'scale',
      nn.with_logical_partitioning(
        nn.initializers.ones, (partitioning.EMBED_AXIS,)
      ),
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
        (partitioning.HEADS_AXIS, partitioning.RELPOS_BUCKETS_AXIS),
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


def dropout(
  config,
  x: jax.Array,
  enable_dropout: bool,
) -> jax.Array:
  return dropout_lib.Dropout(
    rate=config.dropout_rate, implementation=config.dropout_implementation
  )(x, deterministic=not enable_dropout)


class MlpBlock(nn.Module):
  """Feed-forward: prod_i act_i(x W_i) W_o (gated when 2 activations)."""

  config: Any  # a gr.model.network.T5Config

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
          (partitioning.EMBED_AXIS, partitioning.MLP_AXIS),
          dtype=cfg.activation_dtype,
          name=name,
        )(x)
      )
      hidden = h if hidden is None else hidden * h
    hidden = dropout(cfg, hidden, enable_dropout)
    hidden = nn.with_logical_constraint(
      hidden,
      (
        partitioning.BATCH_AXIS,
        partitioning.LENGTH_AXIS,
        partitioning.MLP_AXIS,
      ),
    )
    return DenseGeneral(
      (x.shape[-1],),
      (partitioning.MLP_AXIS, partitioning.EMBED_AXIS),
      dtype=cfg.activation_dtype,
      name='wo',
    )(hidden)


def constrain_embed(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(
    x,
    (
      partitioning.BATCH_AXIS,
      partitioning.LENGTH_AXIS,
      partitioning.EMBED_AXIS,
    ),
  )


def key_mask(tokens: jax.Array) -> jax.Array:
  """tokens [batch, length] -> bool key mask [batch, 1, 1, length]."""
  return (tokens > 0)[:, None, None, :]


def causal_mask(decoder_target_tokens, length):
  """Causal mask [1 or batch, 1, length, length], keys with target 0 off."""
  causal = np.tril(np.ones((length, length), dtype=bool))[None, None]
  if decoder_target_tokens is None:
    return jnp.asarray(causal)
  return causal & key_mask(decoder_target_tokens)
