"""Beam search with a logits-processor hook, trie constraints, ranking.

`beam_search` decodes with a decoder KV cache inside `lax.while_loop`. It
keeps `beam_size` alive beams and a separate pool of `top_k` finished
(EOS-terminated) sequences, and stops early once no alive beam can beat the
worst finished one. Two hooks shape what a beam may do next:

- a `LogitsProcessor` rewrites the dense log-probabilities [B, K, V] of every
  step (any rule; its state follows the beams);
- a `Constraint` lists the (at most W_d at step d) tokens each beam may
  take. Beam search then gathers just those log-probs and takes its top-k
  over [B, K * W_d] instead of [B, K * V]: no [B, K, V] mask is built. Each
  step has the static width of its depth (one `lax.switch` branch per
  depth), so one wide node at one depth widens only that step. The first
  step, from the shared initial state where only beam 0 is alive, is a
  dense row over the vocabulary: top-k over [B, V].

`TrieConstraint` restricts decoding to the docids of a `gr.index.trie.TrieArrays`
and implements both: `constrained_beam_search` uses the sparse `Constraint`
path (below the root a beam only has its <= W_d trie children), the dense-mask
`LogitsProcessor` path stays as a reference.

Sparse output layer (`sparse_output=True`, off by default): the decoder
comes as a `SplitDecoder` (hidden states, then an output layer that can
score a few listed tokens), and below the root only the W listed tokens of
each beam get logits: [N, W] from W gathered output rows instead of [N, V].
Each step's scores are then the log-softmax over the listed tokens (at the
root too, over the root's tokens), i.e. the model's distribution restricted
to the trie: the scores of all docids sum to probability 1, and they differ
from the full-vocabulary log-probs (whose normaliser needs all V logits).
`TrieConstraint(arrays, restricted=True)` computes the same scores densely
(full logits, masked, renormalised): the reference.

Documents with several docids (multi-docids, up to D each):
`constrained_document_search` decodes a pool of top_k * D docids, merges
each document's docids ("max" or "logsumexp") and returns top_k distinct
documents with the docids that found them; `exact_document_rank` is its
oracle (every docid scored by teacher forcing, merged the same way).

Shapes: B = batch, K = beam_size, N = B * K, V = vocabulary, L = max length,
W_d = the most tokens a `Constraint` lists per beam at depth (step) d.
Token ids: BOS = PAD = 0 (the first decoder input), EOS = 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gr import batching
from gr.index import trie as trie_lib

NEG_INF = -jnp.inf
PyTree = Any
# (decoder_tokens [N, 1] int32, cache, step) -> (logits [N, V], new_cache)
TokensToLogits = Callable[
  [jax.Array, PyTree, jax.Array], tuple[jax.Array, PyTree]
]
# (decoder_tokens [N, 1] int32, cache, step) -> (hidden [N, E], new_cache)
TokensToHidden = Callable[
  [jax.Array, PyTree, jax.Array], tuple[jax.Array, PyTree]
]
# (hidden [N, E], tokens [N, M] int32 in [0, V) or None) -> fp32 logits of
# those tokens [N, M] (of the whole vocabulary [N, V] for None)
OutputLayer = Callable[[jax.Array, Optional[jax.Array]], jax.Array]


@dataclasses.dataclass(frozen=True)
class SplitDecoder:
  """A decoder step cut before its output layer; also a `TokensToLogits`.

  The sparse output path (`beam_search(sparse_output=True)`) runs
  `tokens_to_hidden` once per step and `output_layer` only on the tokens
  the constraint lists; called as a TokensToLogits it gives full logits.
  """

  tokens_to_hidden: TokensToHidden
  output_layer: OutputLayer

  def __call__(
    self, decoder_tokens: jax.Array, cache: PyTree, step: jax.Array
  ) -> tuple[jax.Array, PyTree]:
    hidden, cache = self.tokens_to_hidden(decoder_tokens, cache, step)
    return self.output_layer(hidden, None), cache


class LogitsProcessor(Protocol):
  """Rewrites per-step log-probabilities; its state follows the beams.

  Every leaf of the state has leading dims [B, K]; beam search gathers it
  along K when beams are reordered.
  """

  def init(self, batch_size: int, beam_size: int) -> PyTree:
    """Initial state, leaves [B, K, ...]."""

  def process(
    self, state: PyTree, log_probs: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, PyTree]:
    """log_probs [B, K, V] at decode `step` -> (new log_probs, state)."""

  def update(self, state: PyTree, chosen_tokens: jax.Array) -> PyTree:
    """State after the (already gathered) beams took `chosen_tokens` [B, K]."""


class Constraint(Protocol):
  """Lists the tokens each beam may take next, and the state each leads to.

  States are int32 [B, K], -1 = dead. Every beam starts in the same state
  (`init`), so the first step is one shared dense row over the vocabulary;
  after it, each beam lists at most W_d tokens (token -1 = empty slot),
  where the width W_d may differ per depth d (the decode step): each depth
  has its own static shapes.
  """

  def init(self, batch_size: int, beam_size: int) -> jax.Array:
    """Initial states [B, K] int32, all equal."""

  def first_states(self, vocab_size: int) -> jax.Array:
    """[V]: the state token t leads to from the initial state, -1 = barred."""

  def num_levels(self) -> int:
    """D >= 1: depths with their own width; depths past D use D's."""

  def candidates(
    self, states: jax.Array, depth: int
  ) -> tuple[jax.Array, jax.Array]:
    """states [B, K] at static `depth` in [1, D] (the decode step) ->
    (tokens [B, K, W_d], next states [B, K, W_d])."""


@flax.struct.dataclass
class BeamState:
  """Loop carry of `beam_search`."""

  step: jax.Array  # [] int32: position being decoded
  alive_seqs: jax.Array  # [B, K, L] int32
  alive_log_probs: jax.Array  # [B, K] float32
  finished_seqs: jax.Array  # [B, top_k, L] int32
  finished_scores: jax.Array  # [B, top_k] float32, -inf = empty slot
  cache: PyTree  # leaves [N, ...] or 0-d
  processor_state: PyTree  # leaves [B, K, ...]
  constraint_state: Optional[jax.Array]  # [B, K] int32, None = no constraint


@flax.struct.dataclass
class _Expansion:
  """The K continuations a step keeps, and the beams that took EOS."""

  eos_scores: jax.Array  # [B, K] length-penalised scores of ending now
  log_probs: jax.Array  # [B, K] total log-probs of the kept continuations
  beam_index: jax.Array  # [B, K] the beam each continues
  tokens: jax.Array  # [B, K] the token each took
  constraint_state: Optional[jax.Array]  # [B, K] or None


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree: PyTree, beam_indices: jax.Array) -> PyTree:
  """Reorders leaves [B, K, ...] along K by `beam_indices` [B, K']."""

  def gather(x):
    index = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)

  return jax.tree.map(gather, tree)


def _gather_flat_beams(tree: PyTree, beam_indices: jax.Array) -> PyTree:
  """Like `_gather_beams` for leaves [N, ...]; 0-d leaves are left as is."""
  batch, beams = beam_indices.shape

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch, -1) + x.shape[1:])  # --> [B, K, ...]
    x = _gather_beams(x, beam_indices)
    return x.reshape((batch * beams,) + x.shape[2:])  # --> [N, ...]

  return jax.tree.map(gather, tree)


def _expand_to_beams(tree: PyTree, beam_size: int) -> PyTree:
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
  processor_state,
  constraint_state,
) -> BeamState:
  """Beam 0 alive with log-prob 0, the others -inf; finished pool empty."""
  first_beam = jnp.arange(beam_size) == 0
  return BeamState(
    step=jnp.array(0, jnp.int32),
    alive_seqs=jnp.zeros((batch_size, beam_size, max_decode_len), jnp.int32),
    alive_log_probs=jnp.broadcast_to(
      jnp.where(first_beam, 0.0, NEG_INF).astype(jnp.float32),
      (batch_size, beam_size),
    ),
    finished_seqs=jnp.zeros((batch_size, top_k, max_decode_len), jnp.int32),
    finished_scores=jnp.full((batch_size, top_k), NEG_INF, jnp.float32),
    cache=_expand_to_beams(initial_cache, beam_size),
    processor_state=processor_state,
    constraint_state=constraint_state,
  )


def _decoder_inputs(state: BeamState) -> jax.Array:
  """The token each beam feeds the decoder now [N, 1] (BOS = 0 at step 0)."""
  batch, beams, _ = state.alive_seqs.shape
  previous = jax.lax.dynamic_index_in_dim(
    state.alive_seqs, jnp.maximum(state.step - 1, 0), axis=2, keepdims=False
  )
  return jnp.where(state.step == 0, 0, previous).reshape(batch * beams, 1)


def restricted_log_softmax(
  logits: jax.Array,
  allowed: jax.Array,
) -> jax.Array:
  """Log-softmax over the allowed entries of the last axis; -inf elsewhere.

  A row with nothing allowed stays all -inf (no NaN).
  """
  masked = jnp.where(allowed, logits, NEG_INF)
  log_z = jax.nn.logsumexp(masked, axis=-1, keepdims=True)
  return masked - jnp.where(jnp.isfinite(log_z), log_z, 0.0)


def _step_scores(state: BeamState, tokens_to_logits, processor):
  """Scores of every next token; log-probs are scores - log_z.

  Returns:
    (scores [B, K, V], log_z [B, K, 1], new cache, processor state). Without
    a processor, scores are the logits and log_z their log-normaliser, so a
    sparse step reads the [B, K, V] logits but writes nothing that wide.
  """
  batch, beams, _ = state.alive_seqs.shape
  logits, cache = tokens_to_logits(
    _decoder_inputs(state), state.cache, state.step
  )
  logits = logits.astype(jnp.float32).reshape(batch, beams, -1)  # --> [B,K,V]
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


def _top_continuations(candidates: jax.Array):
  """Best K of candidates [B, K, M]: (log-probs, beam index, flat index)."""
  batch, beams, width = candidates.shape
  flat = candidates.reshape(batch, beams * width)  # --> [B, K * M]
  log_probs, index = jax.lax.top_k(flat, beams)
  return log_probs, index // width, index  # [B, K] each


def _expand_dense(state: BeamState, scores, log_z, eos_id, alpha) -> _Expansion:
  """Every token of the vocabulary is a candidate (scores [B, K, V])."""
  candidates = state.alive_log_probs[:, :, None] + (scores - log_z)
  eos_scores = candidates[:, :, eos_id] / length_penalty(state.step + 1, alpha)
  candidates = candidates.at[:, :, eos_id].set(NEG_INF)
  log_probs, beam_index, index = _top_continuations(candidates)
  return _Expansion(
    eos_scores=eos_scores,
    log_probs=log_probs,
    beam_index=beam_index,
    tokens=index % scores.shape[2],
    constraint_state=None,
  )


def _expand_listed(
  state: BeamState, token_log_probs, tokens, next_states, eos_id, alpha
) -> _Expansion:
  """Candidate tokens [B, K, M] (-1 = none) with log-probs [B, K, M]."""
  batch, beams, width = tokens.shape
  candidates = jnp.where(
    tokens >= 0, state.alive_log_probs[:, :, None] + token_log_probs, NEG_INF
  )  # [B, K, M]
  is_eos = tokens == eos_id
  eos_scores = jnp.max(jnp.where(is_eos, candidates, NEG_INF), axis=2)
  eos_scores = eos_scores / length_penalty(state.step + 1, alpha)
  log_probs, beam_index, index = _top_continuations(
    jnp.where(is_eos, NEG_INF, candidates)
  )
  chosen = lambda x: jnp.take_along_axis(
    x.reshape(batch, beams * width), index, axis=1
  )  # [B, K * M] --> [B, K]
  alive = log_probs > NEG_INF  # dead beams: PAD token, dead state
  return _Expansion(
    eos_scores=eos_scores,
    log_probs=log_probs,
    beam_index=beam_index,
    tokens=jnp.where(alive, chosen(tokens), 0),
    constraint_state=jnp.where(alive, chosen(next_states), -1),
  )


def _expand_first(
  state: BeamState, log_probs, next_states, eos_id, alpha
) -> _Expansion:
  """Step 0: beam 0 alone is alive with next-token log_probs [B, V].

  next_states [V]: the state each token leads to (-1 = barred token).
  """
  batch, beams = state.alive_log_probs.shape
  row = state.alive_log_probs[:, :1] + log_probs  # [B, V]
  candidates = jnp.where(next_states >= 0, row, NEG_INF)
  eos_row = candidates[:, eos_id : eos_id + 1]  # [B, 1], beam 0 ending now
  eos_scores = jnp.where(
    jnp.arange(beams) == 0,
    eos_row / length_penalty(state.step + 1, alpha),
    NEG_INF,
  )  # [B, K]
  candidates = candidates.at[:, eos_id].set(NEG_INF)
  too_few = max(0, beams - candidates.shape[1])  # K > V: pad to K columns
  candidates = jnp.pad(
    candidates, ((0, 0), (0, too_few)), constant_values=NEG_INF
  )
  log_probs, tokens = jax.lax.top_k(candidates, beams)  # [B, K] each
  alive = log_probs > NEG_INF  # dead beams: PAD token, dead state
  return _Expansion(
    eos_scores=eos_scores,
    log_probs=log_probs,
    beam_index=jnp.zeros((batch, beams), jnp.int32),
    tokens=jnp.where(alive, tokens, 0),
    constraint_state=jnp.where(
      alive, jnp.take(next_states, tokens, mode="clip"), -1
    ),
  )


def _first_bonus(constraint, next_states: jax.Array) -> jax.Array:
  """A plan's [B, V] bonus at step 0 (0 for constraints without one)."""
  bonus = getattr(constraint, "first_bonus", None)
  return 0.0 if bonus is None else bonus(next_states)


def _bonus(constraint, states: jax.Array, next_states: jax.Array):
  """A plan's [B, K, W] bonus below the root (0 without one)."""
  bonus = getattr(constraint, "bonus", None)
  return 0.0 if bonus is None else bonus(states, next_states)


def _by_depth(state: BeamState, constraint, first_step, later_step):
  """first_step() at step 0, later_step(depth) below the root.

  One branch per depth 1..D (`constraint.num_levels()`, at most the last
  step L - 1), each with its own static width; steps past D take depth D's
  branch.
  """
  last_step = state.alive_seqs.shape[2] - 1
  depths = range(1, max(1, min(constraint.num_levels(), last_step)) + 1)
  branches = [first_step] + [functools.partial(later_step, d) for d in depths]
  return jax.lax.switch(jnp.minimum(state.step, len(depths)), branches)


def _expand_constrained(
  state: BeamState, scores, log_z, constraint, eos_id, alpha
) -> _Expansion:
  """Candidates from `constraint`: a dense [B, V] row at step 0."""

  def first_step():
    next_states = constraint.first_states(scores.shape[2])
    log_probs = (
      scores[:, 0] - log_z[:, 0] + _first_bonus(constraint, next_states)
    )
    return _expand_first(state, log_probs, next_states, eos_id, alpha)

  def later_step(depth):
    tokens, next_states = constraint.candidates(state.constraint_state, depth)
    picked = jnp.take_along_axis(scores, jnp.maximum(tokens, 0), axis=2)
    bonus = _bonus(constraint, state.constraint_state, next_states)
    return _expand_listed(
      state, picked - log_z + bonus, tokens, next_states, eos_id, alpha
    )

  return _by_depth(state, constraint, first_step, later_step)


def _expand_sparse_output(
  state: BeamState, hidden, output_layer, constraint, eos_id, alpha
) -> _Expansion:
  """Logits only of the listed tokens; log-softmax over just those.

  hidden [N, E]. Step 0: the output layer over [B, V] for beam 0 (every beam
  holds the same BOS state), normalised over the first states' tokens.
  Below the root: [N, W] logits of each beam's <= W listed tokens.
  """
  batch, beams = state.alive_log_probs.shape

  def first_step():
    first = hidden.reshape(batch, beams, -1)[:, 0]  # --> [B, E]
    logits = output_layer(first, None).astype(jnp.float32)  # [B, V]
    next_states = constraint.first_states(logits.shape[1])
    log_probs = restricted_log_softmax(logits, next_states >= 0)
    log_probs = log_probs + _first_bonus(constraint, next_states)
    return _expand_first(state, log_probs, next_states, eos_id, alpha)

  def later_step(depth):
    tokens, next_states = constraint.candidates(state.constraint_state, depth)
    width = tokens.shape[2]
    logits = output_layer(
      hidden, jnp.maximum(tokens, 0).reshape(batch * beams, width)
    ).astype(jnp.float32)  # [N, W]
    logits = logits.reshape(batch, beams, width)  # --> [B, K, W]
    bonus = _bonus(constraint, state.constraint_state, next_states)
    return _expand_listed(
      state,
      restricted_log_softmax(logits, tokens >= 0) + bonus,
      tokens,
      next_states,
      eos_id,
      alpha,
    )

  return _by_depth(state, constraint, first_step, later_step)


def _search_step(
  state: BeamState,
  tokens_to_logits,
  processor,
  constraint,
  eos_id,
  alpha,
  sparse_output=False,
) -> BeamState:
  """One decode position: finish EOS beams, extend the others."""
  if sparse_output:  # tokens_to_logits is a SplitDecoder; no processor
    hidden, cache = tokens_to_logits.tokens_to_hidden(
      _decoder_inputs(state), state.cache, state.step
    )
    processor_state = state.processor_state
    expansion = _expand_sparse_output(
      state, hidden, tokens_to_logits.output_layer, constraint, eos_id, alpha
    )
  else:
    scores, log_z, cache, processor_state = _step_scores(
      state, tokens_to_logits, processor
    )
    if constraint is None:
      expansion = _expand_dense(state, scores, log_z, eos_id, alpha)
    else:
      expansion = _expand_constrained(
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


def _all_done(state: BeamState, max_decode_len: int, alpha: float):
  """True when no alive beam can still enter any finished pool."""
  # Log-probs only fall, and for alpha >= 0 a longer length divides a
  # negative score by a larger penalty: the best an alive beam can reach is
  # its log-prob over the penalty at max length.
  best_alive = jnp.max(state.alive_log_probs, axis=1)  # [B]
  bound = best_alive / length_penalty(max_decode_len, alpha)
  worst_finished = jnp.min(state.finished_scores, axis=1)  # [B]
  done = (best_alive == NEG_INF) | (bound < worst_finished)
  return jnp.all(done) | (state.step >= max_decode_len)


def beam_search(
  tokens_to_logits: TokensToLogits,
  initial_cache: PyTree,
  batch_size: int,
  *,
  beam_size: int,
  max_decode_len: int,
  eos_id: int = 1,
  logits_processor: Optional[LogitsProcessor] = None,
  processor_state: Optional[PyTree] = None,
  constraint: Optional[Constraint] = None,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  sparse_output: bool = False,
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

  Returns:
    sequences [B, top_k, L] (EOS-terminated, PAD after) and scores
    [B, top_k], best first. Slots with no finished sequence score -inf.
  """
  top_k = top_k or beam_size
  if min(beam_size, max_decode_len, top_k) < 1 or length_penalty_alpha < 0:
    raise ValueError(
      f"beam_search: need beam_size ({beam_size}), max_decode_len "
      f"({max_decode_len}), top_k ({top_k}) >= 1 and length_penalty_alpha "
      f"({length_penalty_alpha}) >= 0"
    )
  if sparse_output and (
    constraint is None
    or logits_processor is not None
    or not isinstance(tokens_to_logits, SplitDecoder)
  ):
    raise ValueError(
      "beam_search: sparse_output needs a SplitDecoder, a constraint and "
      "no logits_processor"
    )
  if processor_state is None and logits_processor is not None:
    processor_state = logits_processor.init(batch_size, beam_size)
  constraint_state = (
    None if constraint is None else constraint.init(batch_size, beam_size)
  )
  state = _initial_state(
    initial_cache,
    batch_size,
    beam_size,
    max_decode_len,
    top_k,
    processor_state,
    constraint_state,
  )
  state = jax.lax.while_loop(
    lambda s: ~_all_done(s, max_decode_len, length_penalty_alpha),
    lambda s: _search_step(
      s,
      tokens_to_logits,
      logits_processor,
      constraint,
      eos_id,
      length_penalty_alpha,
      sparse_output,
    ),
    state,
  )
  return state.finished_seqs, state.finished_scores


@flax.struct.dataclass
class TrieConstraint:
  """Allows only continuations of docids in `arrays`.

  A `Constraint` (sparse: the root's dense table at step 0, then each node's
  <= W_d children, the trie's width at depth d) and also a
  `LogitsProcessor` (dense [B, K, V] mask; the slower reference). State:
  the trie node of each beam, [B, K] int32 (-1 = dead). As a processor with
  `restricted`, it also renormalises each row over the allowed tokens: the
  dense reference of `sparse_output`.
  """

  arrays: trie_lib.TrieArrays
  restricted: bool = flax.struct.field(pytree_node=False, default=False)
  # [B, C] look-ahead potential of every node (gr/decode/plan.py); None =
  # no plan. Each candidate gains potential[next] - potential[current].
  potential: Optional[jax.Array] = None

  def init(self, batch_size: int, beam_size: int) -> jax.Array:
    return jnp.zeros((batch_size, beam_size), jnp.int32)

  def first_bonus(self, next_states: jax.Array) -> jax.Array:
    """[B, V] (or 0) plan bonus of each first token; next_states [V]."""
    if self.potential is None:
      return jnp.zeros((), jnp.float32)
    return jnp.take(self.potential, jnp.maximum(next_states, 0), axis=1)

  def bonus(self, states: jax.Array, next_states: jax.Array) -> jax.Array:
    """[B, K, W] (or 0) plan bonus of each candidate: states [B, K],
    next_states [B, K, W]."""
    if self.potential is None:
      return jnp.zeros((), jnp.float32)
    batch, beams, width = next_states.shape
    flat = jnp.maximum(next_states, 0).reshape(batch, beams * width)
    after = jnp.take_along_axis(self.potential, flat, axis=1)
    before = jnp.take_along_axis(self.potential, jnp.maximum(states, 0), axis=1)
    return after.reshape(next_states.shape) - before[:, :, None]

  def first_states(self, vocab_size: int) -> jax.Array:
    return trie_lib.root_children(self.arrays, vocab_size)[1]  # [V]

  def num_levels(self) -> int:
    return len(self.arrays.level_widths)

  def candidates(
    self, states: jax.Array, depth: int
  ) -> tuple[jax.Array, jax.Array]:
    batch, beams = states.shape
    tokens, nodes = trie_lib.children(self.arrays, states.reshape(-1), depth)
    shape = (batch, beams, tokens.shape[1])
    return tokens.reshape(shape), nodes.reshape(shape)  # --> [B, K, W]

  def process(
    self, state: jax.Array, log_probs: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    del step
    batch, beams, vocab = log_probs.shape
    mask = trie_lib.allowed_mask(self.arrays, state.reshape(-1), vocab)
    mask = mask.reshape(batch, beams, vocab)  # --> [B, K, V]
    if self.restricted:
      return restricted_log_softmax(log_probs, mask), state
    return jnp.where(mask, log_probs, NEG_INF), state

  def update(self, state: jax.Array, chosen_tokens: jax.Array) -> jax.Array:
    nodes = trie_lib.step(
      self.arrays, state.reshape(-1), chosen_tokens.reshape(-1)
    )
    return nodes.reshape(state.shape)


@flax.struct.dataclass
class ConstrainedResult:
  """Top-k docids found by constrained beam search, and their documents."""

  sequences: jax.Array  # [B, top_k, L] int32
  scores: jax.Array  # [B, top_k] float32, -inf = empty slot
  documents: jax.Array  # [B, top_k] int32, -1 = empty slot


def constrained_beam_search(
  tokens_to_logits: TokensToLogits,
  initial_cache: PyTree,
  batch_size: int,
  trie_arrays: trie_lib.TrieArrays,
  *,
  beam_size: int,
  max_decode_len: int,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  dense_mask: bool = False,
  sparse_output: bool = False,
  potential: Optional[jax.Array] = None,
) -> ConstrainedResult:
  """`beam_search` restricted to the trie's docids; maps them to documents.

  `trie_arrays` must be an argument of the caller's jitted function (data,
  not a closure constant) so that editing the trie does not recompile.
  By default the trie is a sparse `Constraint` (top-k over [B, K * W]);
  `dense_mask=True` applies it as a [B, K, V] mask instead (the reference
  path: same results, slower).

  sparse_output: score each step by the log-softmax over the trie's
  allowed tokens (the model's distribution restricted to the trie),
  computing logits only for them (tokens_to_logits must be a
  `SplitDecoder`). With dense_mask, the same scores come from full logits,
  masked and renormalised (the reference; any TokensToLogits).

  potential: [B, C] a plan's look-ahead potential of every trie node
  (gr/decode/plan.py); each finished docid then scores its log-prob plus
  the plan's score of its document. Sparse constraint only.
  """
  if potential is not None and dense_mask:
    raise ValueError("a plan's potential needs the sparse constraint")
  constraint = TrieConstraint(
    trie_arrays, restricted=sparse_output and dense_mask, potential=potential
  )
  sequences, scores = beam_search(
    tokens_to_logits,
    initial_cache,
    batch_size,
    beam_size=beam_size,
    max_decode_len=max_decode_len,
    eos_id=trie_arrays.eos_id,
    logits_processor=constraint if dense_mask else None,
    constraint=None if dense_mask else constraint,
    length_penalty_alpha=length_penalty_alpha,
    top_k=top_k,
    sparse_output=sparse_output and not dense_mask,
  )
  batch, k, length = sequences.shape
  documents = trie_lib.lookup(trie_arrays, sequences.reshape(batch * k, length))
  documents = documents.reshape(batch, k)  # --> [B, top_k]
  documents = jnp.where(scores > NEG_INF, documents, -1)
  return ConstrainedResult(
    sequences=sequences, scores=scores, documents=documents
  )


AGGREGATIONS = ("max", "logsumexp")


def _check_aggregation(aggregation: str, caller: str) -> None:
  if aggregation not in AGGREGATIONS:
    raise ValueError(
      f"{caller}: aggregation {aggregation!r} is not 'max' or 'logsumexp'"
    )


def rank_documents(
  doc_indices: jax.Array, scores: jax.Array, *, aggregation: str = "max"
) -> tuple[jax.Array, jax.Array]:
  """Merges several docids of one document into one ranked entry.

  Args:
    doc_indices: [B, K] document of each hit, -1 = empty.
    scores: [B, K] hit scores (-inf = empty).
    aggregation: "max" keeps a document's best hit; "logsumexp" adds the
      probabilities of all its hits.

  Returns:
    documents [B, K] (each at most once, best first, -1 padding) and their
    scores [B, K] (-inf padding).
  """
  _check_aggregation(aggregation, "rank_documents")
  valid = (doc_indices >= 0) & (scores > NEG_INF)  # [B, K]
  same = (
    (doc_indices[:, :, None] == doc_indices[:, None, :])
    & valid[:, :, None]
    & valid[:, None, :]
  )  # [B, K, K]
  hits = jnp.where(same, scores[:, None, :], NEG_INF)
  if aggregation == "max":
    merged = jnp.max(hits, axis=2)
  else:
    merged = jax.nn.logsumexp(hits, axis=2)
  earlier = jnp.tril(jnp.ones(same.shape[1:], bool), k=-1)  # j < i
  first = valid & ~jnp.any(same & earlier, axis=2)
  merged = jnp.where(first, merged, NEG_INF)
  order = jnp.argsort(-merged, axis=1, stable=True)
  ranked_scores = jnp.take_along_axis(merged, order, axis=1)
  ranked_docs = jnp.take_along_axis(
    jnp.where(first, doc_indices, -1), order, axis=1
  )
  return ranked_docs, ranked_scores


@flax.struct.dataclass
class RankedDocuments:
  """Distinct documents a search found, and the docids that found each.

  R = documents returned, D = docids kept per document.
  """

  documents: jax.Array  # [B, R] int32, -1 = empty slot
  scores: jax.Array  # [B, R] float32 merged docid scores, -inf = empty
  docids: jax.Array  # [B, R, D, L] int32 its docids found, best first; PAD
  docid_scores: jax.Array  # [B, R, D] float32, -inf = no docid in the slot


def document_search_sizes(
  beam_size: int, top_k: int, docids_per_doc: int
) -> tuple[int, int]:
  """(docid beams, finished docid pool) that can hold top_k documents.

  One docid per document: (beam_size, top_k), the search as it is. With up
  to D docids per document, both are scaled by D (the pool to top_k * D, the
  beams to D * max(beam_size, top_k)), so that top_k distinct documents fit
  even when each is found through all its docids.
  """
  if min(beam_size, top_k, docids_per_doc) < 1:
    raise ValueError(
      f"document_search_sizes: need beam_size ({beam_size}), "
      f"top_k ({top_k}), docids_per_doc ({docids_per_doc}) "
      ">= 1"
    )
  if docids_per_doc == 1:
    return beam_size, top_k
  return docids_per_doc * max(beam_size, top_k), docids_per_doc * top_k


def _document_hits(
  documents: jax.Array,
  hit_documents: jax.Array,
  hit_scores: jax.Array,
  width: int,
):
  """Best `width` hits of each document.

  Args:
    documents: [B, R] ranked documents, -1 = empty.
    hit_documents: [B, P] document of each hit, -1 = empty.
    hit_scores: [B, P] (-inf = empty).
    width: D <= P.

  Returns:
    (hit index [B, R, D], hit scores [B, R, D]), best first; -inf where the
    document has fewer than D hits.
  """
  same = (documents[:, :, None] == hit_documents[:, None, :]) & (
    documents[:, :, None] >= 0
  )  # [B, R, P]
  scores = jnp.where(same, hit_scores[:, None, :], NEG_INF)
  top_scores, index = jax.lax.top_k(scores, width)
  return index, top_scores


def rank_found(
  found: ConstrainedResult,
  *,
  top_k: int,
  docids_per_doc: int,
  aggregation: str = "max",
) -> RankedDocuments:
  """The top_k distinct documents of a search's finished docids.

  Args:
    found: P finished docids ([B, P] documents and scores, [B, P, L]).
    top_k: R, documents returned.
    docids_per_doc: D, docids kept per document (clipped to P).
    aggregation: how a document's docid scores merge (`rank_documents`).
  """
  documents, scores = rank_documents(
    found.documents, found.scores, aggregation=aggregation
  )
  documents, scores = documents[:, :top_k], scores[:, :top_k]  # --> [B, R]
  width = min(docids_per_doc, found.scores.shape[1])
  index, docid_scores = _document_hits(
    documents, found.documents, found.scores, width
  )
  rows = jnp.arange(index.shape[0])[:, None, None]
  docids = found.sequences[rows, index]  # --> [B, R, D, L]
  docids = jnp.where((docid_scores > NEG_INF)[..., None], docids, 0)
  return RankedDocuments(
    documents=documents, scores=scores, docids=docids, docid_scores=docid_scores
  )


def constrained_document_search(
  tokens_to_logits: TokensToLogits,
  initial_cache: PyTree,
  batch_size: int,
  trie_arrays: trie_lib.TrieArrays,
  *,
  beam_size: int,
  max_decode_len: int,
  top_k: int,
  docids_per_doc: int = 1,
  aggregation: str = "max",
  length_penalty_alpha: float = 0.0,
  dense_mask: bool = False,
  sparse_output: bool = False,
  potential: Optional[jax.Array] = None,
) -> RankedDocuments:
  """Constrained beam search for top_k distinct documents.

  Decodes with `document_search_sizes(beam_size, top_k, docids_per_doc)`
  (beams, pool): `tokens_to_logits` sees N = batch_size * beams rows. The
  pool's docids are merged per document by `aggregation` and the best
  top_k documents returned (with one docid per document: exactly
  `constrained_beam_search`'s hits). Other arguments as in
  `constrained_beam_search`.
  """
  _check_aggregation(aggregation, "constrained_document_search")
  beams, pool = document_search_sizes(beam_size, top_k, docids_per_doc)
  found = constrained_beam_search(
    tokens_to_logits,
    initial_cache,
    batch_size,
    trie_arrays,
    beam_size=beams,
    max_decode_len=max_decode_len,
    length_penalty_alpha=length_penalty_alpha,
    top_k=pool,
    dense_mask=dense_mask,
    sparse_output=sparse_output,
    potential=potential,
  )
  return rank_found(
    found, top_k=top_k, docids_per_doc=docids_per_doc, aggregation=aggregation
  )


def exact_rank(
  score_fn: Callable[[jax.Array], jax.Array],
  sequences: Sequence[Sequence[int]],
  values: Sequence[int],
  *,
  batch_size: int = 256,
  max_len: Optional[int] = None,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  plan: Optional[np.ndarray] = None,
):
  """Exact ranking of every docid for one query, by teacher forcing.

  Args:
    score_fn: targets [n, L] (EOS then PAD) -> total log-prob [n]; always
      called with n = batch_size (the last chunk is padded), so it compiles
      once.
    sequences: all docid token sequences, each ending in EOS.
    values: document index of each sequence.
    batch_size: sequences scored per call.
    max_len: L (default: the longest sequence).
    length_penalty_alpha: as in `beam_search`.
    top_k: how many to return (default all).
    plan: [n] a plan score added to each sequence's log-prob (before the
      length penalty, as the plan's bonuses are in beam search).

  Returns:
    (targets [k, L], scores [k], documents [k]) as numpy, best first; ties
    keep input order.
  """
  targets = batching.pad_sequences(sequences, max_len)
  scores = np.concatenate(
    [
      _score_chunk(score_fn, targets[start : start + batch_size], batch_size)
      for start in range(0, len(targets), batch_size)
    ]
  )
  if plan is not None:
    scores = scores + np.asarray(plan, np.float64)
  lengths = np.array([len(s) for s in sequences], np.float64)
  scores = scores / np.asarray(length_penalty(lengths, length_penalty_alpha))
  order = np.argsort(-scores, kind="stable")[:top_k]
  return targets[order], scores[order], np.asarray(values)[order]


def _score_chunk(score_fn, chunk: np.ndarray, batch_size: int) -> np.ndarray:
  """Scores `chunk` [n <= batch_size, L], padded to batch_size rows."""
  count = len(chunk)
  padded = np.concatenate(
    [chunk, np.repeat(chunk[:1], batch_size - count, axis=0)]
  )
  return np.asarray(score_fn(jnp.asarray(padded)), np.float64)[:count]


def aggregate_documents(
  documents: np.ndarray, scores: np.ndarray, *, aggregation: str = "max"
) -> tuple[np.ndarray, np.ndarray]:
  """Per-docid scores -> one score per document (numpy), best first.

  Args:
    documents: [n] document of each docid.
    scores: [n] its score.
    aggregation: "max" or "logsumexp", as in `rank_documents`.

  Returns:
    (documents [m], scores [m]), m distinct documents; ties keep the order
    in which documents first appear.
  """
  _check_aggregation(aggregation, "aggregate_documents")
  documents = np.asarray(documents)
  unique, first, inverse = np.unique(
    documents, return_index=True, return_inverse=True
  )
  merged = np.full(len(unique), -np.inf)
  combine = np.maximum if aggregation == "max" else np.logaddexp
  combine.at(merged, inverse.reshape(-1), np.asarray(scores, np.float64))
  order = np.lexsort((first, -merged))
  return unique[order], merged[order]


def exact_document_rank(
  score_fn: Callable[[jax.Array], jax.Array],
  sequences: Sequence[Sequence[int]],
  values: Sequence[int],
  *,
  aggregation: str = "max",
  batch_size: int = 256,
  max_len: Optional[int] = None,
  length_penalty_alpha: float = 0.0,
  top_k: Optional[int] = None,
  plan: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact ranking of documents: every docid scored, merged per document.

  Arguments as in `exact_rank`; `aggregation` as in `rank_documents`, over
  all docids of a document; `top_k` counts documents.

  Returns:
    (documents [k], scores [k]) as numpy, best first.
  """
  _check_aggregation(aggregation, "exact_document_rank")
  _, scores, documents = exact_rank(
    score_fn,
    sequences,
    values,
    batch_size=batch_size,
    max_len=max_len,
    length_penalty_alpha=length_penalty_alpha,
    plan=plan,
  )
  documents, scores = aggregate_documents(
    documents, scores, aggregation=aggregation
  )
  return documents[:top_k], scores[:top_k]
