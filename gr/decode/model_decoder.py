"""An encoder-decoder model as the decoding loops see it.

gr/decode/beam_search.py (beam search) and gr/decode/sampling.py (sampling)
drive a step function `tokens_to_logits(decoder_tokens [N, 1], cache, step)` over N
decoder rows, several per input (beams, or samples). `model_decoder` builds
it and its zero cache from a model's params and encoder states: encode the
inputs (unless states are given), project each decoder layer's
cross-attention keys and values once per input (`network.cross_attention_kv`,
instead of at every step), and repeat them to the rows.

Shapes: B = inputs, r = rows per input (beams or samples), N = B * r,
Li = input length, E = encoder width.
"""

import dataclasses
import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp

from gr.decode import hooks
from gr.model import models

StepFn = Union[hooks.TokensToLogits, hooks.SplitDecoder]


@dataclasses.dataclass(frozen=True)
class ModelDecoder:
  """What a decoding loop needs from the model.

  tokens_to_logits: (decoder_tokens [N, 1], cache, step) -> (fp32 logits
    [N, V], cache); a `hooks.SplitDecoder` for the sparse output layer.
  cache: zero decoder cache with `cache_rows` rows.
  first_step: the same step over the B inputs, once each ([B, 1] rows,
    a [B, ...] cache): `beam_search`'s first_step, for step 0, when every
    beam of an input holds BOS and the same cache.
  """

  tokens_to_logits: StepFn
  cache: hooks.PyTree
  first_step: Optional[StepFn] = None


def step_fn(
  model: models.EncoderDecoderModel,
  params,
  encoded,
  encoder_tokens: jax.Array,
  *,
  sparse_output: bool = False,
) -> StepFn:
  """tokens_to_logits over encoded [N, Li, E] (or its cross-attention K/V)
  and encoder_tokens [N, Li]; a `hooks.SplitDecoder` for sparse_output."""

  def tokens_to_logits(decoder_tokens, cache, step):
    del step
    return model.decode_step(
      params, cache, encoded, encoder_tokens, decoder_tokens
    )

  def tokens_to_hidden(decoder_tokens, cache, step):
    del step
    return model.decode_step_hidden(
      params, cache, encoded, encoder_tokens, decoder_tokens
    )

  if not sparse_output:
    return tokens_to_logits
  return hooks.SplitDecoder(
    tokens_to_hidden, functools.partial(model.output_logits, params)
  )


def model_decoder(
  model: models.EncoderDecoderModel,
  params,
  encoder_tokens: jax.Array,
  *,
  rows_per_input: int,
  cache_rows: int,
  max_decode_len: int,
  encoded: Optional[jax.Array] = None,
  cached_cross_attention: bool = True,
  sparse_output: bool = False,
) -> ModelDecoder:
  """The step function over B * rows_per_input rows, and a zero cache.

  Args:
    model, params: the encoder-decoder and its params.
    encoder_tokens: [B, Li] ids; their padding (0) masks cross-attention.
    rows_per_input: r, decoder rows per input (beam size or samples).
    cache_rows: rows of the zero cache: B for `beam_search` (which
      repeats it per beam), B * r for `sampling.sample`.
    max_decode_len: cache length, the most decoder steps.
    encoded: [B, Li, E] states to cross-attend to instead of
      model.encode(params, encoder_tokens) (e.g. document vectors).
    cached_cross_attention: project cross-attention K/V once per input
      (False: at every step, from the repeated states; same logits).
    sparse_output: return a `hooks.SplitDecoder`.
  """
  if encoded is None:
    encoded = model.encode(params, encoder_tokens)  # [B, Li, E]
  if cached_cross_attention:
    encoded = model.cross_attention_kv(params, encoded)  # [B, Li, H, D] each
  repeat = functools.partial(jnp.repeat, repeats=rows_per_input, axis=0)
  return ModelDecoder(
    tokens_to_logits=step_fn(
      model,
      params,
      jax.tree.map(repeat, encoded),  # --> [N, ...]
      repeat(encoder_tokens),  # --> [N, Li]
      sparse_output=sparse_output,
    ),
    cache=model.init_cache(params, cache_rows, max_decode_len),
    first_step=step_fn(
      model, params, encoded, encoder_tokens, sparse_output=sparse_output
    ),
  )
