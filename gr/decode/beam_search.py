"""Beam search with a logits-processor hook and sparse constraints.

`beam_search` decodes with a decoder KV cache inside `lax.while_loop`. It
keeps `beam_size` alive beams and a separate pool of `top_k` finished
(EOS-terminated) sequences, and stops early once no alive beam can beat the
worst finished one. Two hooks (gr/decode/hooks.py) shape what a beam may do
next:

- a `LogitsProcessor` rewrites the dense log-probabilities [B, K, V] of every
  step;
- a `Constraint` lists the (at most W_d at step d) tokens each beam may
  take. Beam search then gathers just those log-probs and takes its top-k
  over [B, K * W_d] instead of [B, K * V]: no [B, K, V] mask is built. Each
  step has the static width of its depth (one `lax.switch` branch per
  depth), so one wide node at one depth widens only that step. The first
  step, from the shared initial state where only beam 0 is alive, is a
  dense row over the vocabulary: top-k over [B, V].

Sparse output layer (`sparse_output=True`): only the W listed tokens of
each beam get logits ([N, W] from W gathered output rows, not [N, V]), and
each step scores their log-softmax: the model's distribution restricted to
the constraint (not the full-vocabulary log-probs).

Score mode (`score_mode`, gr/model/score_modes.py): "log_probs"
(the default) sums each step's log-softmax; "logits" (RIPOR) sums each
step's raw logits, EOS adding 0, so a residual-quantisation docid scores
its summed dot products with the decoder's outputs (about the query's dot
product with the document's reconstruction at the warm start). Raw logits
can be positive, so a beam's score can still rise: early stopping is off
in that mode (the search runs until every beam has ended or max length).
A logits processor then sees the raw logits (EOS set to 0), and the sparse
output layer scores the listed tokens' raw logits.

Shapes: B = batch, K = beam_size, N = B * K, V = vocabulary, L = max length,
W_d = the most tokens a `Constraint` lists per beam at depth (step) d.
Token ids: BOS = PAD = 0 (the first decoder input), EOS = 1.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from gr.decode import expand
from gr.decode import hooks
from gr.model import score_modes


@flax.struct.dataclass
class BeamState:
  """Loop carry of `beam_search`."""

  step: jax.Array  # [] int32: position being decoded
  alive_seqs: jax.Array  # [B, K, L] int32
  alive_log_probs: jax.Array  # [B, K] float32
  finished_seqs: jax.Array  # [B, top_k, L] int32
  finished_scores: jax.Array  # [B, top_k] float32, -inf = empty slot
  cache: hooks.PyTree  # leaves [N, ...] or 0-d
  processor_state: hooks.PyTree  # leaves [B, K, ...]
  constraint_state: Optional[jax.Array]  # [B, K] int32, None = no constraint


def _gather_beams(tree: hooks.PyTree, beam_indices: jax.Array) -> hooks.PyTree:
  """Reorders leaves [B, K, ...] along K by `beam_indices` [B, K']."""

  def gather(x):
    index = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)

  return jax.tree.map(gather, tree)


def _gather_flat_beams(
  tree: hooks.PyTree, beam_indices: jax.Array
) -> hooks.PyTree:
  """Like `_gather_beams` for leaves [N, ...]; 0-d leaves are left as is."""
  batch, beams = beam_indices.shape

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch, -1) + x.shape[1:])  # --> [B, K, ...]
    x = _gather_beams(x, beam_indices)
    return x.reshape((batch * beams,) + x.shape[2:])  # --> [N, ...]

  return jax.tree.map(gather, tree)


def _expand_to_beams(tree: hooks.PyTree, beam_size: int) -> hooks.PyTree:
  """Repeats each leaf [B, ...] to [B * K, ...]; 0-d leaves are shared."""

  def expand(x):
    return x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0)

  return jax.tree.map(expand, tree)


def _initial_state(
  initial_cache,
  batch_size,
  beam_size,
  max_decode_len,
  top_k,
  processor,
  processor_state,
  constraint,
) -> BeamState:
  """Beam 0 alive with log-prob 0, the others -inf; finished pool empty.

  The processor's state is `processor_state`, or its init() when None.
  """
  if processor_state is None and processor is not None:
    processor_state = processor.init(batch_size, beam_size)
  first_beam = jnp.arange(beam_size) == 0
  return BeamState(
    step=jnp.array(0, jnp.int32),
    alive_seqs=jnp.zeros((batch_size, beam_size, max_decode_len), jnp.int32),
    alive_log_probs=jnp.broadcast_to(
      jnp.where(first_beam, 0.0, hooks.NEG_INF).astype(jnp.float32),
      (batch_size, beam_size),
    ),
    finished_seqs=jnp.zeros((batch_size, top_k, max_decode_len), jnp.int32),
    finished_scores=jnp.full((batch_size, top_k), hooks.NEG_INF, jnp.float32),
    cache=_expand_to_beams(initial_cache, beam_size),
    processor_state=processor_state,
    constraint_state=(
      None if constraint is None else constraint.init(batch_size, beam_size)
    ),
  )


def _decoder_inputs(state: BeamState) -> jax.Array:
  """The token each beam feeds the decoder now [N, 1] (BOS = 0 at step 0)."""
  batch, beams, _ = state.alive_seqs.shape
  previous = jax.lax.dynamic_index_in_dim(
    state.alive_seqs, jnp.maximum(state.step - 1, 0), axis=2, keepdims=False
  )
  return jnp.where(state.step == 0, 0, previous).reshape(batch * beams, 1)


def _step_scores(
  state: BeamState, tokens_to_logits, processor, score_mode, eos_id
):
  """Scores of every next token; log-probs are scores - log_z.

  Returns:
    (scores [B, K, V], log_z [B, K, 1], new cache, processor state). Without
    a processor, scores are the logits and log_z their log-normaliser, so a
    sparse step reads the [B, K, V] logits but writes nothing that wide. In
    "logits" mode, log_z is 0 and EOS's logit 0.
  """
  batch, beams, _ = state.alive_seqs.shape
  logits, cache = tokens_to_logits(
    _decoder_inputs(state), state.cache, state.step
  )
  logits = logits.astype(jnp.float32).reshape(batch, beams, -1)  # --> [B,K,V]
  if score_mode == "logits":
    logits = logits.at[:, :, eos_id].set(0.0)
    log_z = jnp.zeros((batch, beams, 1), jnp.float32)
  else:
    log_z = jax.nn.logsumexp(logits, axis=2, keepdims=True)
  if processor is None:
    return logits, log_z, cache, state.processor_state
  log_probs, processor_state = processor.process(
    state.processor_state, logits - log_z, state.step
  )
  return log_probs, jnp.zeros_like(log_z), cache, processor_state


def _merge_finished(state: BeamState, eos_scores: jax.Array, eos_id: int):
  """Adds the alive beams ended by EOS (scores [B, K]) to the finished pool."""
  ended = state.alive_seqs.at[:, :, state.step].set(eos_id)
  seqs = jnp.concatenate([state.finished_seqs, ended], axis=1)
  scores = jnp.concatenate([state.finished_scores, eos_scores], axis=1)
  top_scores, top_index = jax.lax.top_k(scores, state.finished_scores.shape[1])
  return _gather_beams(seqs, top_index), top_scores


def _search_step(
  state: BeamState,
  tokens_to_logits,
  processor,
  constraint,
  eos_id,
  alpha,
  sparse_output=False,
  score_mode="log_probs",
) -> BeamState:
  """One decode position: finish EOS beams, extend the others."""
  if sparse_output:  # tokens_to_logits is a hooks.SplitDecoder; no processor
    hidden, cache = tokens_to_logits.tokens_to_hidden(
      _decoder_inputs(state), state.cache, state.step
    )
    processor_state = state.processor_state
    expansion = expand.expand_sparse_output(
      state,
      hidden,
      tokens_to_logits.output_layer,
      constraint,
      eos_id,
      alpha,
      score_mode=score_mode,
    )
  else:
    scores, log_z, cache, processor_state = _step_scores(
      state, tokens_to_logits, processor, score_mode, eos_id
    )
    if constraint is None:
      expansion = expand.expand_dense(state, scores, log_z, eos_id, alpha)
    else:
      expansion = expand.expand_constrained(
        state, scores, log_z, constraint, eos_id, alpha
      )
  finished_seqs, finished_scores = _merge_finished(
    state, expansion.eos_scores, eos_id
  )
  beam_index, tokens = expansion.beam_index, expansion.tokens
  alive_seqs = _gather_beams(state.alive_seqs, beam_index)
  processor_state = _gather_beams(processor_state, beam_index)
  if processor is not None:
    processor_state = processor.update(processor_state, tokens)
  return BeamState(
    step=state.step + 1,
    alive_seqs=alive_seqs.at[:, :, state.step].set(tokens),
    alive_log_probs=expansion.log_probs,
    finished_seqs=finished_seqs,
    finished_scores=finished_scores,
    cache=_gather_flat_beams(cache, beam_index),
    processor_state=processor_state,
    constraint_state=expansion.constraint_state,
  )


def _all_done(
  state: BeamState,
  max_decode_len: int,
  alpha: float,
  score_mode: str = "log_probs",
):
  """True when no alive beam can still enter any finished pool."""
  # Log-probs only fall, and for alpha >= 0 a longer length divides a
  # negative score by a larger penalty: the best an alive beam can reach is
  # its log-prob over the penalty at max length. Raw logits ("logits" mode)
  # can rise: only dead beams are done.
  best_alive = jnp.max(state.alive_log_probs, axis=1)  # [B]
  bound = best_alive / expand.length_penalty(max_decode_len, alpha)
  worst_finished = jnp.min(state.finished_scores, axis=1)  # [B]
  done = best_alive == hooks.NEG_INF
  if score_mode != "logits":
    done = done | (bound < worst_finished)
  return jnp.all(done) | (state.step >= max_decode_len)


def _check_arguments(
  beam_size,
  max_decode_len,
  top_k,
  alpha,
  sparse_output,
  constraint,
  logits_processor,
  tokens_to_logits,
  score_mode,
) -> None:
  """Raises ValueError for sizes < 1, alpha < 0, an unknown score mode,
  or a sparse output without a SplitDecoder and a constraint (or with a
  processor)."""
  score_modes.check_score_mode(score_mode)
  if min(beam_size, max_decode_len, top_k) < 1 or alpha < 0:
    raise ValueError(
      f"beam_search: need beam_size ({beam_size}), max_decode_len "
      f"({max_decode_len}), top_k ({top_k}) >= 1 and length_penalty_alpha "
      f"({alpha}) >= 0"
    )
  if sparse_output and (
    constraint is None
    or logits_processor is not None
    or not isinstance(tokens_to_logits, hooks.SplitDecoder)
  ):
    raise ValueError(
      "beam_search: sparse_output needs a SplitDecoder, a constraint and "
      "no logits_processor"
    )


def beam_search(
  tokens_to_logits: hooks.TokensToLogits,
  initial_cache: hooks.PyTree,
  batch_size: int,
  *,
  beam_size: int,
  max_decode_len: int,
  eos_id: int = 1,
  logits_processor: Optional[hooks.LogitsProcessor] = None,
  processor_state: Optional[hooks.PyTree] = None,
  constraint: Optional[hooks.Constraint] = None,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  sparse_output: bool = False,
  score_mode: str = "log_probs",
) -> tuple[jax.Array, jax.Array]:
  """Beam search over decoder tokens; jit-friendly (lax.while_loop).

  Args:
    tokens_to_logits: (decoder_tokens [N, 1], cache, step) ->
      (logits [N, V], new_cache), N = batch_size * beam_size.
    initial_cache: decoder cache with leaves [B, ...] (or 0-d, shared); it is
      repeated to [N, ...] and gathered as beams are reordered.
    batch_size: B.
    beam_size: K alive beams.
    max_decode_len: L, the most tokens of a sequence, EOS included.
    eos_id: end token; a sequence finishes when it takes it.
    logits_processor: optional hook applied to each step's log-probs.
    processor_state: its state (leaves [B, K, ...]); None = its init().
    constraint: optional sparse `Constraint`: only the tokens it lists are
      scored (after the processor, if both are given).
    length_penalty_alpha: finished scores are log-prob / ((5+len)/6)**alpha;
      must be >= 0 (early stopping relies on it).
    top_k: size of the finished pool returned (default beam_size).
    sparse_output: the sparse output layer: tokens_to_logits must be a
      `SplitDecoder` and a constraint is needed (and no processor); only the
      listed tokens get logits, and each step scores the log-softmax over
      them (the model's distribution restricted to the constraint).
    score_mode: "log_probs" or "logits" (summed raw logits, EOS 0, no early
      stopping; see the module docstring).

  Returns:
    sequences [B, top_k, L] (EOS-terminated, PAD after) and scores
    [B, top_k], best first. Slots with no finished sequence score -inf.
  """
  top_k = top_k or beam_size
  _check_arguments(
    beam_size, max_decode_len, top_k, length_penalty_alpha, sparse_output,
    constraint, logits_processor, tokens_to_logits, score_mode,
  )  # fmt: skip
  state = _initial_state(
    initial_cache,
    batch_size,
    beam_size,
    max_decode_len,
    top_k,
    logits_processor,
    processor_state,
    constraint,
  )
  state = jax.lax.while_loop(
    lambda s: ~_all_done(s, max_decode_len, length_penalty_alpha, score_mode),
    lambda s: _search_step(
      s,
      tokens_to_logits,
      logits_processor,
      constraint,
      eos_id,
      length_penalty_alpha,
      sparse_output,
      score_mode,
    ),
    state,
  )
  return state.finished_seqs, state.finished_scores
