"""Ancestral sampling from a decoder: temperature, top-k, top-p, seeded.

`sample` decodes with the decoder KV cache inside `lax.while_loop`, one
token per step for every row, until every row has taken EOS or the length
limit is reached. After EOS a row holds PAD. Each step's logits go through

  1. an optional `LogitsProcessor` (gr/decode/hooks.py, with one beam),
  2. temperature (logits / t; t = 0 is greedy argmax),
  3. top-k (keep the k largest; of tokens tied with the k-th, the lowest
     ids),
  4. top-p (keep the smallest set of most likely tokens whose probability
     reaches p; the most likely token is always kept),

and the token is drawn with a per-row key folded with the step, so a row's
sample depends only on its own key and logits, not on the other rows.

Shapes: B = batch (rows), V = vocabulary, L = max_decode_len.
Token ids: BOS = PAD = 0 (the first decoder input), EOS = 1.
"""

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from gr.decode import hooks

PyTree = Any
NEG_INF = -jnp.inf


@flax.struct.dataclass
class SampleState:
  """Loop carry of `sample`."""

  step: jax.Array  # [] int32: position being decoded
  sequences: jax.Array  # [B, L] int32, PAD where not decoded yet
  log_probs: jax.Array  # [B] float32: model log-prob of the tokens so far
  finished: jax.Array  # [B] bool: the row has taken EOS
  cache: PyTree  # leaves [B, ...] or 0-d
  processor_state: PyTree  # leaves [B, 1, ...]


def filter_logits(
  logits: jax.Array,
  *,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """The tokens that may be drawn from logits [B, V], and their logits.

  temperature must be > 0 here (`sample` treats 0 as greedy); top_k = 0 and
  top_p = 1.0 switch those filters off. With top_k, only the k best tokens
  are candidates (C = k), so the random draw and the top-p sort cost k per
  row, not V (on CPU, XLA sorts the whole row otherwise).

  Returns:
    (candidate logits [B, C], tempered, -inf where top-p drops a token;
     candidate token ids [B, C]).
  """
  logits = logits.astype(jnp.float32) / temperature
  batch, vocab = logits.shape
  if 0 < top_k < vocab:
    logits, token_ids = jax.lax.top_k(logits, top_k)  # [B, k] each
  else:
    token_ids = jnp.broadcast_to(jnp.arange(vocab), (batch, vocab))
  if top_p < 1.0:
    logits = _top_p_filter(logits, top_p)
  return logits, token_ids


def _top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """Keeps the most likely tokens until their probability reaches top_p."""
  order = jnp.argsort(-logits, axis=-1)  # [B, C], most likely first
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, C]
  keep_sorted = mass_before < top_p  # the first token always (0 < top_p)
  keep = (
    jnp.zeros_like(keep_sorted)
    .at[jnp.arange(logits.shape[0])[:, None], order]
    .set(keep_sorted)
  )
  return jnp.where(keep, logits, NEG_INF)


def row_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """One typed PRNG key per row [B] from a key (typed [] / raw [2]) or keys.

  A single key is split into B keys; B keys (typed [B] or raw [B, 2]) are
  used as they are, so a caller can seed each row itself.
  """
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if rng.ndim == 0:
    return jax.random.split(rng, batch_size)
  if rng.shape != (batch_size,):
    raise ValueError(
      f"sample: rng holds keys of shape {rng.shape}; expected "
      f"one key or ({batch_size},) keys, one per row"
    )
  return rng


def _draw(
  keys: jax.Array,
  logits: jax.Array,
  step: jax.Array,
  *,
  temperature: float,
  top_k: int,
  top_p: float,
) -> jax.Array:
  """Tokens [B] from logits [B, V]; row b uses fold_in(keys[b], step)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  candidate_logits, token_ids = filter_logits(
    logits, temperature=temperature, top_k=top_k, top_p=top_p
  )
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
  choice = jax.vmap(jax.random.categorical)(step_keys, candidate_logits)
  return jnp.take_along_axis(token_ids, choice[:, None], axis=-1)[:, 0].astype(
    jnp.int32
  )  # --> [B]


def _step_logits(state: SampleState, tokens_to_logits, processor):
  """Model log-probs [B, V], processed logits [B, V], cache, processor state."""
  previous = jax.lax.dynamic_index_in_dim(
    state.sequences, jnp.maximum(state.step - 1, 0), axis=1, keepdims=False
  )
  inputs = jnp.where(state.step == 0, 0, previous)[:, None]  # --> [B, 1]
  logits, cache = tokens_to_logits(inputs, state.cache, state.step)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  processed, processor_state = log_probs, state.processor_state
  if processor is not None:
    processed, processor_state = processor.process(
      processor_state, log_probs[:, None, :], state.step
    )
    processed = processed[:, 0, :]  # [B, 1, V] --> [B, V]
  return log_probs, processed, cache, processor_state


def _sample_step(
  state: SampleState,
  tokens_to_logits,
  processor,
  keys,
  *,
  eos_id: int,
  temperature: float,
  top_k: int,
  top_p: float,
) -> SampleState:
  """Draws one token per unfinished row; finished rows take PAD."""
  log_probs, processed, cache, processor_state = _step_logits(
    state, tokens_to_logits, processor
  )
  tokens = _draw(
    keys,
    processed,
    state.step,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
  )
  tokens = jnp.where(state.finished, 0, tokens)
  token_log_probs = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[
    :, 0
  ]  # --> [B]
  if processor is not None:
    processor_state = processor.update(processor_state, tokens[:, None])
  return SampleState(
    step=state.step + 1,
    sequences=state.sequences.at[:, state.step].set(tokens),
    log_probs=state.log_probs + jnp.where(state.finished, 0.0, token_log_probs),
    finished=state.finished | (tokens == eos_id),
    cache=cache,
    processor_state=processor_state,
  )


def sample(
  tokens_to_logits: hooks.TokensToLogits,
  initial_cache: PyTree,
  batch_size: int,
  *,
  max_decode_len: int,
  rng: jax.Array,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_id: int = 1,
  logits_processor: Optional[hooks.LogitsProcessor] = None,
) -> tuple[jax.Array, jax.Array]:
  """Samples one sequence per row; jit-friendly (lax.while_loop).

  Args:
    tokens_to_logits: (decoder_tokens [B, 1], cache, step) ->
      (logits [B, V], new_cache).
    initial_cache: decoder cache with leaves [B, ...] (or 0-d).
    batch_size: B; for several samples of one input, repeat its rows.
    max_decode_len: L, the most tokens of a sequence, EOS included.
    rng: a PRNG key, or one key per row ([B] typed or [B, 2] raw).
    temperature: > 0 scales the logits; 0 decodes greedily.
    top_k: keep only the k most likely tokens (0: all).
    top_p: nucleus sampling mass in (0, 1] (1: all).
    eos_id: end token; a row stops when it takes it.
    logits_processor: optional `hooks.LogitsProcessor` (state leaves
      [B, 1, ...]); it rewrites model log-probs before the filters above.

  Returns:
    sequences [B, L] int32 (EOS then PAD; a row that never took EOS fills
    all L) and log_probs [B]: the sum of the model's own (unfiltered,
    untempered) log-probabilities of the row's tokens, EOS included.
  """
  _check_settings(batch_size, max_decode_len, temperature, top_k, top_p)
  keys = row_keys(rng, batch_size)
  state = SampleState(
    step=jnp.array(0, jnp.int32),
    sequences=jnp.zeros((batch_size, max_decode_len), jnp.int32),
    log_probs=jnp.zeros((batch_size,), jnp.float32),
    finished=jnp.zeros((batch_size,), bool),
    cache=initial_cache,
    processor_state=(
      logits_processor.init(batch_size, 1)
      if logits_processor is not None
      else None
    ),
  )
  state = jax.lax.while_loop(
    lambda s: (s.step < max_decode_len) & ~jnp.all(s.finished),
    lambda s: _sample_step(
      s,
      tokens_to_logits,
      logits_processor,
      keys,
      eos_id=eos_id,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
    ),
    state,
  )
  return state.sequences, state.log_probs


def _check_settings(batch_size, max_decode_len, temperature, top_k, top_p):
  if min(batch_size, max_decode_len) < 1:
    raise ValueError(
      f"sample: batch_size ({batch_size}) and max_decode_len "
      f"({max_decode_len}) must be >= 1"
    )
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(
      f"sample: need temperature ({temperature}) >= 0, top_k "
      f"({top_k}) >= 0 and 0 < top_p ({top_p}) <= 1"
    )
