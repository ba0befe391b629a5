"""Encoder-decoder model around gr/model/network.py: loss, scores, decode step.

t5x-style wrapper (no gin here): pure functions of (params, batch) that the
train loop, evaluation and beam search jit. Batches use t5x feature names:

  encoder_input_tokens   [batch, input_length]   int, 0 = padding
  decoder_input_tokens   [batch, target_length]  targets shifted right
  decoder_target_tokens  [batch, target_length]  int, 0 = padding
  decoder_loss_weights   [batch, target_length]  float (optional in scoring)

Beam search builds on `encode`, `init_cache` and `decode_step`: the encoded
inputs are repeated per beam ([N = batch * beam, ...]) and `decode_step`
serves as its tokens_to_logits. `cross_attention_kv` projects the repeated
encoder states into every decoder layer's cross-attention keys and values
once per query; `decode_step` takes them in place of the encoder states (the
same logits, without that per-step work). `decode_step_hidden` and
`output_logits` split a step at its output layer, so that a constrained
search can score only the tokens a trie allows (gr/decode/hooks.py SplitDecoder).
"""

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gr.model import bert_network
from gr.model import configs
from gr.model import network
from gr.model import score_modes

Params = Any
Batch = Mapping[str, jax.Array]
Cache = Any


def shift_targets_right(targets: jax.Array) -> jax.Array:
  """Decoder inputs from targets [batch, length]: BOS (= PAD = 0) first."""
  targets = jnp.asarray(targets)
  return jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))


def cross_entropy_with_z_loss(
  logits: jax.Array,
  targets: jax.Array,
  *,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy (t5x semantics) and z-loss.

  Args:
    logits: fp32 [batch, length, vocab].
    targets: int [batch, length].
    z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1.
    label_smoothing: mass spread uniformly over the other vocab - 1 tokens;
      the smoothed loss is offset by its entropy so that its minimum is 0.

  Returns:
    (cross_entropy, z_loss_term), each [batch, length]; cross_entropy
    excludes the z-loss term.
  """
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[
    ..., 0
  ]  # --> [batch, length]
  if not label_smoothing:  # No [batch, length, vocab] one-hot needed.
    return log_z - target_logits, z_loss * jnp.square(log_z)
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  # sum_v soft_v * -log p_v with soft = low everywhere, confidence at target.
  xent = (
    log_z - (confidence - low) * target_logits - low * jnp.sum(logits, axis=-1)
  )
  entropy = -(confidence * np.log(confidence) if confidence > 0 else 0.0)
  if low > 0:
    entropy -= (vocab - 1) * low * np.log(low)
  return xent - entropy, z_loss * jnp.square(log_z)


ModelConfig = configs.ModelConfig


class EncoderDecoderModel:
  """Encoder-decoder: init, loss, scoring and cached decoding.

  The config is a network.T5Config (T5 encoder) or a
  bert_network.BertT5Config (a pretrained BERT-family encoder, whose frozen
  layers' output a batch may carry as `encoder_frozen_states`).
  """

  def __init__(self, config: ModelConfig):
    self.config = config
    self.module = configs.make_module(config)

  def with_vocab_size(self, vocab_size: int) -> 'EncoderDecoderModel':
    """The same model with `vocab_size` decoder rows."""
    return type(self)(configs.with_vocab_size(self.config, vocab_size))

  @property
  def has_frozen_encoder_layers(self) -> bool:
    return configs.frozen_layers(self.config) > 0

  def trainable_mask(self, params: Params) -> Params:
    """Bool tree like params: False for frozen encoder parameters.

    With a BERT encoder, its embeddings and bottom `frozen_layers` layers
    are frozen; everything else trains. A T5 model trains everything.
    """
    frozen_layers = configs.frozen_layers(self.config)

    def trainable(path, _):
      names = [getattr(k, 'key', str(k)) for k in path]
      if not frozen_layers or names[0] != 'encoder':
        return True
      if names[1].startswith('layer_'):
        return int(names[1].split('_')[1]) >= frozen_layers
      return False  # embeddings

    return jax.tree_util.tree_map_with_path(trainable, params)

  def frozen_encode(
    self,
    params: Params,
    encoder_input_tokens: jax.Array,
  ) -> jax.Array:
    """[B, Li] ids -> frozen encoder layers' output [B, Li, width]."""
    return self.module.apply(
      {'params': params},
      encoder_input_tokens,
      method=bert_network.BertT5Transformer.frozen_encode,
    )

  def _init_variables(self, rng, input_length, target_length):
    """Boxed (nn.Partitioned) variables from a dummy batch."""
    encoder_tokens = jnp.ones((1, input_length), jnp.int32)
    decoder_tokens = jnp.ones((1, target_length), jnp.int32)
    return self.module.init(rng, encoder_tokens, decoder_tokens)

  def _abstract_variables(self):
    init = functools.partial(
      self._init_variables, input_length=1, target_length=1
    )
    return jax.eval_shape(init, jax.random.PRNGKey(0))

  def init_params(
    self, rng: jax.Array, *, input_length: int, target_length: int
  ) -> Params:
    """Fresh fp32 params (plain arrays, no partitioning boxes)."""
    return nn.unbox(
      self._init_variables(rng, input_length, target_length)['params']
    )

  def param_shapes(self) -> Params:
    """jax.ShapeDtypeStruct tree of the params (no computation)."""
    return nn.unbox(self._abstract_variables()['params'])

  def logical_axes(self) -> Params:
    """PartitionSpec tree of logical axis names, one per param dim.

    E.g. params['decoder']['layers_0']['mlp']['wo']['kernel'] ->
    PartitionSpec('mlp', 'embed'). Names are listed in gr/model/network.py.
    """
    return nn.get_partition_spec(self._abstract_variables()['params'])

  def logits(
    self, params: Params, batch: Batch, dropout_rng: jax.Array | None = None
  ) -> jax.Array:
    """Teacher-forced fp32 logits [batch, target_length, vocab]."""
    rngs = None if dropout_rng is None else {'dropout': dropout_rng}
    extra = {}
    if 'encoder_frozen_states' in batch:
      extra['encoder_frozen_states'] = batch['encoder_frozen_states']
    return self.module.apply(
      {'params': params},
      batch['encoder_input_tokens'],
      batch['decoder_input_tokens'],
      batch.get('decoder_target_tokens'),
      enable_dropout=dropout_rng is not None,
      rngs=rngs,
      **extra,
    )

  def loss_fn(
    self,
    params: Params,
    batch: Batch,
    dropout_rng: jax.Array | None,
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean per-token loss over weighted target tokens, and metrics.

    loss = sum_t w_t * (xent_t + z_loss * logZ_t^2) / sum_t w_t, where w are
    `decoder_loss_weights`. Dropout is on iff `dropout_rng` is given.

    An optional batch['decoder_first_bias'] [B, V] is added to the first
    position's logits for the cross-entropy: a plan's bonus
    (gr/decode/plan.py), so the model learns on top of the plan rather
    than alone. The z-loss keeps the model's own normaliser (the bonus,
    up to beta times a BM25 score, would otherwise dominate it).

    Returns:
      (loss, metrics) with metrics 'loss', 'cross_entropy' and 'z_loss'
      (per-token means), 'accuracy' (weighted argmax accuracy) and
      'num_tokens' (sum of weights).
    """
    logits = self.logits(params, batch, dropout_rng)
    targets = batch['decoder_target_tokens']
    weights = batch['decoder_loss_weights'].astype(jnp.float32)
    xent, z_term = cross_entropy_with_z_loss(
      logits, targets, z_loss=z_loss, label_smoothing=label_smoothing
    )
    if 'decoder_first_bias' in batch:  # z-loss stays on the model's logZ
      bias = batch['decoder_first_bias'].astype(logits.dtype)
      logits = logits.at[:, 0].add(bias)
      xent, _ = cross_entropy_with_z_loss(
        logits, targets, z_loss=0.0, label_smoothing=label_smoothing
      )
    num_tokens = jnp.sum(weights)
    denominator = jnp.maximum(num_tokens, 1e-8)
    mean = lambda x: jnp.sum(x * weights) / denominator
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    loss = mean(xent + z_term)
    metrics = {
      'loss': loss,
      'cross_entropy': mean(xent),
      'z_loss': mean(z_term),
      'accuracy': mean(correct),
      'num_tokens': num_tokens,
    }
    return loss, metrics

  def score_batch(self, params: Params, batch: Batch) -> jax.Array:
    """Sum of target-token log-probs [batch] (teacher forcing).

    Tokens count with `decoder_loss_weights` if the batch has them, else
    where `decoder_target_tokens` > 0.
    """
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    weights = (targets > 0) if weights is None else weights
    log_probs = jax.nn.log_softmax(self.logits(params, batch), axis=-1)
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[
      ..., 0
    ]  # --> [batch, length]
    return jnp.sum(token_scores * weights.astype(jnp.float32), axis=-1)

  def step_scores(
    self,
    params: Params,
    encoded: jax.Array,
    encoder_input_tokens: jax.Array,
    targets: jax.Array,
    score_mode: str = 'log_probs',
  ) -> jax.Array:
    """Each target token's log-prob [n, Lt] given encoder states (no
    re-encoding), 0 at padding; score_mode 'logits': its raw logit, EOS
    counting 0 (`score_modes.token_scores`). A docid's score is the sum.

    encoded [n or 1, Li, width] (or its `cross_attention_kv`) and
    encoder_input_tokens [n or 1, Li] (1: one query for every target row);
    targets [n, Lt], 0 = padding.
    """
    logits = self.module.apply(
      {'params': params},
      encoded,
      encoder_input_tokens,
      shift_targets_right(targets),
      decoder_target_tokens=targets,
      method=type(self.module).decode,
    )
    scores = score_modes.token_scores(logits, targets, score_mode)  # [n, Lt]
    return jnp.where(targets > 0, scores, 0.0)

  def encode(
    self,
    params: Params,
    encoder_input_tokens: jax.Array,
  ) -> jax.Array:
    """encoder_input_tokens [B, Li] -> encoded [B, Li, emb_dim]."""
    return self.module.apply(
      {'params': params}, encoder_input_tokens, method=type(self.module).encode
    )

  def init_cache(
    self, params: Params, batch_size: int, max_decode_length: int
  ) -> Cache:
    """Zero decoder cache for `batch_size` rows and `max_decode_length` steps.

    Leaves: cached_key/cached_value [batch_size, max_decode_length, heads,
    head_dim] per decoder layer, and 0-d int32 cache_index scalars.
    """
    cfg = self.config

    def create(params):
      encoded = jnp.zeros(
        (batch_size, 1, configs.encoder_width(cfg)), cfg.activation_dtype
      )
      encoder_tokens = jnp.ones((batch_size, 1), jnp.int32)
      decoder_tokens = jnp.zeros((batch_size, max_decode_length), jnp.int32)
      _, variables = self.module.apply(
        {'params': params},
        encoded,
        encoder_tokens,
        decoder_tokens,
        decode=True,
        max_decode_length=max_decode_length,
        method=type(self.module).decode,
        mutable=['cache'],
      )
      return variables['cache']

    shapes = jax.eval_shape(create, params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def cross_attention_kv(
    self,
    params: Params,
    encoded: jax.Array,
  ) -> network.CrossAttentionKV:
    """encoded [N, Li, width] -> each decoder layer's cross-attention K/V.

    Keys and values [N, Li, heads, head_dim] per layer, projected once per
    query: a decoding loop passes them (repeated per beam, like `encoded`)
    to `decode_step` in place of `encoded`.
    """
    return network.cross_attention_kv(
      configs.decoder_config(self.config), params['decoder'], encoded
    )

  def _step(
    self,
    params,
    cache,
    encoded,
    encoder_input_tokens,
    decoder_tokens,
    return_hidden,
  ):
    out, variables = self.module.apply(
      {'params': params, 'cache': cache},
      encoded,
      encoder_input_tokens,
      decoder_tokens,
      decode=True,
      max_decode_length=network.cache_length(cache),
      method=type(self.module).decode,
      mutable=['cache'],
      return_hidden=return_hidden,
    )
    return out[:, 0, :], variables['cache']  # [N, 1, V or E] --> [N, V or E]

  def decode_step(
    self,
    params: Params,
    cache: Cache,
    encoded: jax.Array | network.CrossAttentionKV,
    encoder_input_tokens: jax.Array,
    decoder_tokens: jax.Array,
  ) -> tuple[jax.Array, Cache]:
    """One cached decoder step.

    Args:
      params: model params.
      cache: from `init_cache` or the previous step ([N, ...] leaves).
      encoded: [N, Li, emb_dim] (repeated per beam by the caller), or its
        `cross_attention_kv` (projected once: the same logits, faster).
      encoder_input_tokens: [N, Li] (padding mask for cross-attention).
      decoder_tokens: [N, 1] the previous token (0 = BOS at step 0).

    Returns:
      (fp32 logits [N, vocab], new cache).
    """
    return self._step(
      params,
      cache,
      encoded,
      encoder_input_tokens,
      decoder_tokens,
      return_hidden=False,
    )

  def decode_step_hidden(
    self,
    params: Params,
    cache: Cache,
    encoded: jax.Array | network.CrossAttentionKV,
    encoder_input_tokens: jax.Array,
    decoder_tokens: jax.Array,
  ) -> tuple[jax.Array, Cache]:
    """`decode_step` without its output layer.

    Returns:
      (final decoder hidden states [N, emb_dim], new cache); `output_logits`
      turns them into the logits `decode_step` returns.
    """
    return self._step(
      params,
      cache,
      encoded,
      encoder_input_tokens,
      decoder_tokens,
      return_hidden=True,
    )

  def output_logits(
    self, params: Params, hidden: jax.Array, tokens: jax.Array | None = None
  ) -> jax.Array:
    """hidden [N, emb_dim] -> fp32 logits [N, vocab], or [N, M] for tokens.

    tokens: optional [N, M] ids in [0, vocab): only their output rows are
    gathered and scored (the sparse output layer).
    """
    return network.output_logits(
      configs.decoder_config(self.config), params, hidden, tokens
    )


VOCAB_MULTIPLE = 128  # vocab rows padded to this, so 'vocab' shards evenly


def fit_vocab(model, vocab_size: int):
  """The model with config.vocab_size = `vocab_size` rounded up to 128s.

  Gin model files set a placeholder vocab_size; the real one comes from the
  task's vocabulary at run time. Padding to a multiple of 128 (as t5x
  does) lets the 'vocab' axis shard evenly over 'model'.
  """
  padded = -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  if model.config.vocab_size == padded:
    return model
  return model.with_vocab_size(padded)


# Parameter surgery for vocabulary rows that a continual update appends.


def _appended(
  matrix: jax.Array, new_size: int, axis: int, rng: jax.Array
) -> jax.Array:
  """`matrix` grown to `new_size` along `axis`; new entries ~ N(0, std)."""
  old_size = matrix.shape[axis]
  if new_size == old_size:
    return matrix
  if new_size < old_size:
    raise ValueError(
      f'vocabulary rows can only be appended: {old_size} -> {new_size}'
    )
  shape = list(matrix.shape)
  shape[axis] = new_size - old_size
  std = jnp.std(matrix)
  extra = std * jax.random.normal(rng, shape, matrix.dtype)
  return jnp.concatenate([matrix, extra], axis=axis)


def extend_vocab_rows(params: Any, vocab_rows: int, seed: int = 0) -> Any:
  """Params with the token embedding [V, D] (and untied logits kernel
  [D, V]) grown to `vocab_rows`; existing rows are kept bit for bit."""
  rng_embed, rng_logits = jax.random.split(jax.random.key(seed))
  embedder = dict(params['token_embedder'])
  embedder['embedding'] = _appended(
    embedder['embedding'], vocab_rows, 0, rng_embed
  )
  params = {**params, 'token_embedder': embedder}
  logits = params.get('decoder', {}).get('logits_dense')
  if logits is not None:
    kernel = _appended(logits['kernel'], vocab_rows, 1, rng_logits)
    params['decoder'] = {
      **params['decoder'],
      'logits_dense': {**logits, 'kernel': kernel},
    }
  return params


def vocab_rows(params: Any) -> int:
  """V of the token embedding [V, D]."""
  return int(params['token_embedder']['embedding'].shape[0])
