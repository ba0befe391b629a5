"""One beam-search step's choice: the K continuations kept, and who ends.

Each function takes the loop's `BeamState` (gr/decode/beam_search.py) and
one step's scores, and returns an `Expansion`: the best K continuations over
every vocabulary token (`expand_dense`), over the tokens a `Constraint` lists
(`expand_constrained`: a dense [B, V] row at step 0, then [B, K * W_d] with
one `lax.switch` branch per depth), or over the listed tokens' logits alone
(`expand_sparse_output`), and the length-penalised score of each beam that
takes EOS now.

Shapes: B = batch, K = beam_size, N = B * K, V = vocabulary, E = hidden,
W_d = the most tokens a `Constraint` lists per beam at depth (step) d.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from gr.decode import hooks


@flax.struct.dataclass
class Expansion:
  """The K continuations a step keeps, and the beams that took EOS."""

  eos_scores: jax.Array  # [B, K] length-penalised scores of ending now
  log_probs: jax.Array  # [B, K] total log-probs of the kept continuations
  beam_index: jax.Array  # [B, K] the beam each continues
  tokens: jax.Array  # [B, K] the token each took
  constraint_state: Optional[jax.Array]  # [B, K] or None


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def restricted_log_softmax(
  logits: jax.Array,
  allowed: jax.Array,
) -> jax.Array:
  """Log-softmax over the allowed entries of the last axis; -inf elsewhere.

  A row with nothing allowed stays all -inf (no NaN).
  """
  masked = jnp.where(allowed, logits, hooks.NEG_INF)
  log_z = jax.nn.logsumexp(masked, axis=-1, keepdims=True)
  return masked - jnp.where(jnp.isfinite(log_z), log_z, 0.0)


def listed_scores(
  logits: jax.Array,
  allowed: jax.Array,
  tokens: Optional[jax.Array],
  eos_id: int,
  score_mode: str,
) -> jax.Array:
  """The sparse output's step scores of the allowed entries (-inf elsewhere):
  their log-softmax over the allowed ones, or ("logits") their raw logits
  with EOS at 0. tokens: the ids of the last axis' entries (None: the
  vocabulary, entry i is token i)."""
  if score_mode != "logits":
    return restricted_log_softmax(logits, allowed)
  ids = jnp.arange(logits.shape[-1]) if tokens is None else tokens
  return jnp.where(
    allowed, jnp.where(ids == eos_id, 0.0, logits), hooks.NEG_INF
  )


def _top_continuations(candidates: jax.Array):
  """Best K of candidates [B, K, M]: (log-probs, beam index, flat index)."""
  batch, beams, width = candidates.shape
  flat = candidates.reshape(batch, beams * width)  # --> [B, K * M]
  log_probs, index = jax.lax.top_k(flat, beams)
  return log_probs, index // width, index  # [B, K] each


def expand_dense(state, scores, log_z, eos_id, alpha) -> Expansion:
  """Every token of the vocabulary is a candidate (scores [B, K, V])."""
  candidates = state.alive_log_probs[:, :, None] + (scores - log_z)
  eos_scores = candidates[:, :, eos_id] / length_penalty(state.step + 1, alpha)
  candidates = candidates.at[:, :, eos_id].set(hooks.NEG_INF)
  log_probs, beam_index, index = _top_continuations(candidates)
  return Expansion(
    eos_scores=eos_scores,
    log_probs=log_probs,
    beam_index=beam_index,
    tokens=index % scores.shape[2],
    constraint_state=None,
  )


def _expand_listed(
  state, token_log_probs, tokens, next_states, eos_id, alpha
) -> Expansion:
  """Candidate tokens [B, K, M] (-1 = none) with log-probs [B, K, M]."""
  batch, beams, width = tokens.shape
  candidates = jnp.where(
    tokens >= 0,
    state.alive_log_probs[:, :, None] + token_log_probs,
    hooks.NEG_INF,
  )  # [B, K, M]
  is_eos = tokens == eos_id
  eos_scores = jnp.max(jnp.where(is_eos, candidates, hooks.NEG_INF), axis=2)
  eos_scores = eos_scores / length_penalty(state.step + 1, alpha)
  log_probs, beam_index, index = _top_continuations(
    jnp.where(is_eos, hooks.NEG_INF, candidates)
  )
  chosen = lambda x: jnp.take_along_axis(
    x.reshape(batch, beams * width), index, axis=1
  )  # [B, K * M] --> [B, K]
  alive = log_probs > hooks.NEG_INF  # dead beams: PAD token, dead state
  return Expansion(
    eos_scores=eos_scores,
    log_probs=log_probs,
    beam_index=beam_index,
    tokens=jnp.where(alive, chosen(tokens), 0),
    constraint_state=jnp.where(alive, chosen(next_states), -1),
  )


def _expand_first(state, log_probs, next_states, eos_id, alpha) -> Expansion:
  """Step 0: beam 0 alone is alive with next-token log_probs [B, V].

  next_states [V]: the state each token leads to (-1 = barred token).
  """
  batch, beams = state.alive_log_probs.shape
  row = state.alive_log_probs[:, :1] + log_probs  # [B, V]
  candidates = jnp.where(next_states >= 0, row, hooks.NEG_INF)
  eos_row = candidates[:, eos_id : eos_id + 1]  # [B, 1], beam 0 ending now
  eos_scores = jnp.where(
    jnp.arange(beams) == 0,
    eos_row / length_penalty(state.step + 1, alpha),
    hooks.NEG_INF,
  )  # [B, K]
  candidates = candidates.at[:, eos_id].set(hooks.NEG_INF)
  too_few = max(0, beams - candidates.shape[1])  # K > V: pad to K columns
  candidates = jnp.pad(
    candidates, ((0, 0), (0, too_few)), constant_values=hooks.NEG_INF
  )
  log_probs, tokens = jax.lax.top_k(candidates, beams)  # [B, K] each
  alive = log_probs > hooks.NEG_INF  # dead beams: PAD token, dead state
  return Expansion(
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


def _by_depth(state, constraint, first_step, later_step):
  """first_step() at step 0, later_step(depth) below the root.

  One branch per depth 1..D (`constraint.num_levels()`, at most the last
  step L - 1), each with its own static width; steps past D take depth D's
  branch.
  """
  last_step = state.alive_seqs.shape[2] - 1
  depths = range(1, max(1, min(constraint.num_levels(), last_step)) + 1)
  branches = [first_step] + [functools.partial(later_step, d) for d in depths]
  return jax.lax.switch(jnp.minimum(state.step, len(depths)), branches)


def expand_constrained(
  state, scores, log_z, constraint, eos_id, alpha
) -> Expansion:
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


def expand_sparse_output(
  state, hidden, output_layer, constraint, eos_id, alpha,
  score_mode="log_probs",
) -> Expansion:  # fmt: skip
  """Logits only of the listed tokens; log-softmax over just those (or
  their raw logits, score_mode "logits": `listed_scores`).

  hidden [N, E]. Step 0: the output layer over [B, V] for beam 0 (every beam
  holds the same BOS state), normalised over the first states' tokens.
  Below the root: [N, W] logits of each beam's <= W listed tokens.
  """
  batch, beams = state.alive_log_probs.shape

  def first_step():
    first = hidden.reshape(batch, beams, -1)[:, 0]  # --> [B, E]
    logits = output_layer(first, None).astype(jnp.float32)  # [B, V]
    next_states = constraint.first_states(logits.shape[1])
    log_probs = listed_scores(
      logits, next_states >= 0, None, eos_id, score_mode
    )
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
      listed_scores(logits, tokens >= 0, tokens, eos_id, score_mode) + bonus,
      tokens,
      next_states,
      eos_id,
      alpha,
    )

  return _by_depth(state, constraint, first_step, later_step)
