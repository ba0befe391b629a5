"""A pretrained BERT-family encoder under the T5 decoder.

The encoder is gr/model/bert.py's BertEncoder (weights from a Hugging Face folder:
MiniLM offline, any BERT / bge / e5 checkpoint a user has); the decoder is
gr/model/network.py's T5 decoder with its own token embedding, which
cross-attends to the encoder's hidden states. The cross-attention key and
value kernels are [encoder_width, heads, kv], so the encoder may be wider
or narrower than the decoder: the projection is part of cross-attention
(network.cross_attention_kv projects it once per query for decoding).

Only the top `trainable_encoder_layers` encoder layers train; the frozen
bottom ones run under stop_gradient, or not at all when the batch carries
their cached output (`encoder_frozen_states` [batch, length, width],
gr/model/encoder_cache.py), so a CPU step runs only the trainable part.

Parameter tree: encoder/... (gr/model/bert.py names), token_embedder/embedding
[vocab, embed], decoder/... (gr/model/network.py names). Batches use the t5x
feature names of gr/model/models.py; encoder inputs are the encoder tokenizer's
ids ([CLS] text [SEP], 0 = padding).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gr import partitioning
from gr.model import bert
from gr.model import network


@dataclasses.dataclass(frozen=True)
class BertT5Config:
  """A BERT encoder config, a T5 decoder config and how much of it trains.

  decoder.num_encoder_layers is unused (the encoder is `encoder`).
  """

  encoder: bert.BertConfig
  decoder: network.T5Config
  trainable_encoder_layers: int = 0
  encoder_dir: str = ''  # the HF folder the weights and tokenizer come from

  def __post_init__(self):
    if isinstance(self.encoder, dict):
      object.__setattr__(self, 'encoder', bert.BertConfig(**self.encoder))
    if isinstance(self.decoder, dict):
      object.__setattr__(self, 'decoder', network.T5Config(**self.decoder))
    if not 0 <= self.trainable_encoder_layers <= self.encoder.num_layers:
      raise ValueError(
        f'BertT5Config.trainable_encoder_layers='
        f'{self.trainable_encoder_layers!r}: must be in '
        f'[0, {self.encoder.num_layers}]'
      )

  @property
  def vocab_size(self) -> int:
    return self.decoder.vocab_size

  @property
  def emb_dim(self) -> int:
    return self.decoder.emb_dim

  @property
  def encoder_width(self) -> int:
    return self.encoder.hidden_size

  @property
  def activation_dtype(self) -> Any:
    return self.decoder.activation_dtype

  @property
  def frozen_layers(self) -> int:
    """Encoder layers below the trainable ones (their output is cacheable)."""
    return self.encoder.num_layers - self.trainable_encoder_layers

  def with_vocab_size(self, vocab_size: int) -> 'BertT5Config':
    return dataclasses.replace(
      self, decoder=dataclasses.replace(self.decoder, vocab_size=vocab_size)
    )


class BertT5Transformer(nn.Module):
  """BERT encoder + T5 decoder (same methods as network.Transformer)."""

  config: BertT5Config

  def setup(self):
    cfg = self.config
    self.encoder = bert.BertEncoder(cfg.encoder)
    self.token_embedder = network.Embed(
      cfg.decoder.vocab_size, cfg.decoder.emb_dim, cfg.decoder.activation_dtype
    )
    self.decoder = network.Decoder(cfg.decoder, self.token_embedder)

  def frozen_encode(self, encoder_input_tokens: jax.Array) -> jax.Array:
    """[B, Li] token ids -> output of the frozen layers [B, Li, width]."""
    mask = encoder_input_tokens > 0
    return self.encoder(
      encoder_input_tokens, mask, stop_layer=self.config.frozen_layers
    )

  def encode(
    self,
    encoder_input_tokens: jax.Array,
    enable_dropout: bool = False,
    encoder_frozen_states: jax.Array | None = None,
  ) -> jax.Array:
    """[B, Li] ids (and optionally cached frozen states) -> [B, Li, width]."""
    del enable_dropout  # the pretrained encoder runs without dropout
    if encoder_frozen_states is None:
      encoder_frozen_states = jax.lax.stop_gradient(
        self.frozen_encode(encoder_input_tokens)
      )
    mask = encoder_input_tokens > 0
    hidden = self.encoder(
      encoder_frozen_states.astype(jnp.float32),
      mask,
      start_layer=self.config.frozen_layers,
    )
    return nn.with_logical_constraint(
      hidden,
      (
        partitioning.BATCH_AXIS,
        partitioning.LENGTH_AXIS,
        partitioning.EMBED_AXIS,
      ),
    )

  # The same decoder call as the T5 network's (encoded: [B, Li, width]
  # encoder states or their network.CrossAttentionKV).
  decode = network.Transformer.decode

  def __call__(
    self,
    encoder_input_tokens,
    decoder_input_tokens,
    decoder_target_tokens=None,
    enable_dropout=False,
    encoder_frozen_states=None,
  ):
    """Teacher-forced forward: [B, Li], [B, Lt] -> fp32 logits [B, Lt, V]."""
    if self.is_initializing():
      self.frozen_encode(encoder_input_tokens)  # create every encoder param
    encoded = self.encode(
      encoder_input_tokens, enable_dropout, encoder_frozen_states
    )
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      enable_dropout=enable_dropout,
      decoder_target_tokens=decoder_target_tokens,
    )
