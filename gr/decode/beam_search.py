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

Two options save model calls (issue 21):

- `first_step`: at step 0 all K beams of an input hold BOS and the same
  cache, so their logits are equal; a step function over the B inputs
  (decoder_tokens [B, 1], the initial cache [B, ...]) -> (logits [B, V],
  cache [B, ...]) runs step 0 once per input instead of once per beam (a
  `SplitDecoder` with the sparse output layer). A step function whose rows
  keep all their per-input state in the cache (none in its closure) can
  pass itself. Step 0 is then peeled off the loop and the cache repeated to
  the beams after it.
- `score_forced_eos=False`: a beam whose only allowed token is EOS (the
  constraint's optional `forced_end`) ends with its score as it is, so a
  fixed-length docid scores its tokens alone (STATIC's score), not also the
  model's log-prob that it ends. Needs such a constraint and no processor.
  Wherever a forced EOS scores 0 (this, the sparse output layer, "logits"
  mode), a step where every alive beam must end calls no model.

Shapes: B = batch, K = beam_size, N = B * K, V = vocabulary, L = max length,
W_d = the most tokens a `Constraint` lists per beam at depth (step) d.
Token ids: BOS = PAD = 0 (the first decoder input), EOS = 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

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
  first_step=None,
) -> BeamState:
  """Beam 0 alive with log-prob 0, the others -inf; finished pool empty.

  The processor's state is `processor_state`, or its init() when None. The
  cache is repeated to the beams [N, ...], or stays [B, ...] for a
  `first_step`.
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
    cache=(
      initial_cache
      if first_step is not None
      else _expand_to_beams(initial_cache, beam_size)
    ),
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


def _run_decoder(state: BeamState, fn, first_step, sparse_output):
  """The decoder step: (logits [N, V], or hidden [N, E] for sparse_output;
  cache [N, ...]).

  `first_step` (given only at step 0, the cache still [B, ...]): every
  beam of an input holds BOS and the same cache, so the step runs once per
  input ([B, 1] rows) and its cache and hidden states are repeated to the
  beams; its logits stay [B, V] (`_normalised` broadcasts them).
  """
  batch, beams, _ = state.alive_seqs.shape
  if first_step is None:
    if sparse_output:  # fn is a hooks.SplitDecoder: its hidden states
      fn = fn.tokens_to_hidden
    outputs, cache = fn(_decoder_inputs(state), state.cache, state.step)
  else:
    if sparse_output:
      first_step = first_step.tokens_to_hidden
    outputs, cache = first_step(
      jnp.zeros((batch, 1), jnp.int32), state.cache, state.step
    )
    if sparse_output:
      outputs = _expand_to_beams(outputs, beams)  # --> [N, E]
    cache = _expand_to_beams(cache, beams)
  return outputs, cache


def _normalised(state: BeamState, logits, processor, score_mode, eos_id):
  """Scores of every next token from logits [N, V] (or [B, V] at a first
  step, normalised once per input); log-probs are scores - log_z.

  Returns:
    (scores [B, K, V], log_z [B, K, 1], processor state). Without a
    processor, scores are the logits and log_z their log-normaliser, so a
    sparse step reads the [B, K, V] logits but writes nothing that wide. In
    "logits" mode, log_z is 0 and EOS's logit 0.
  """
  batch, beams, _ = state.alive_seqs.shape
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32).reshape(batch, -1, vocab)  # [B, K|1, V]
  if score_mode == "logits":
    logits = logits.at[:, :, eos_id].set(0.0)
    log_z = jnp.zeros(logits.shape[:2] + (1,), jnp.float32)
  else:
    log_z = jax.nn.logsumexp(logits, axis=2, keepdims=True)
  logits = jnp.broadcast_to(logits, (batch, beams, vocab))  # --> [B, K, V]
  log_z = jnp.broadcast_to(log_z, (batch, beams, 1))
  if processor is None:
    return logits, log_z, state.processor_state
  log_probs, processor_state = processor.process(
    state.processor_state, logits - log_z, state.step
  )
  return log_probs, jnp.zeros_like(log_z), processor_state


def _merge_finished(state: BeamState, eos_scores: jax.Array, eos_id: int):
  """Adds the alive beams ended by EOS (scores [B, K]) to the finished pool."""
  ended = state.alive_seqs.at[:, :, state.step].set(eos_id)
  seqs = jnp.concatenate([state.finished_seqs, ended], axis=1)
  scores = jnp.concatenate([state.finished_scores, eos_scores], axis=1)
  top_scores, top_index = jax.lax.top_k(scores, state.finished_scores.shape[1])
  return _gather_beams(seqs, top_index), top_scores


@dataclasses.dataclass(frozen=True)
class _Search:
  """The static settings of one `beam_search` (see its Args)."""

  tokens_to_logits: Any
  processor: Optional[hooks.LogitsProcessor]
  constraint: Optional[hooks.Constraint]
  eos_id: int
  alpha: float
  sparse_output: bool
  score_mode: str
  score_forced_eos: bool

  @property
  def forced_eos_free(self) -> bool:
    """Whether a beam whose only allowed token is EOS ends at +0: by the
    scores themselves (restricted to the listed tokens, or raw logits with
    EOS at 0), or because `score_forced_eos` is off."""
    return (
      self.constraint is not None
      and self.processor is None
      and getattr(self.constraint, "forced_end", None) is not None
      and (
        self.sparse_output
        or self.score_mode == "logits"
        or not self.score_forced_eos
      )
    )


def _decoder_outputs(state: BeamState, search: _Search, first_step):
  """`_run_decoder`, skipped (zeros, cache as is) at a step where every
  alive beam's only allowed token is EOS and that EOS scores 0 anyway.

  Returns (outputs, cache, forced [B, K] bool or None: the beams whose only
  allowed token is EOS, when `search.forced_eos_free`).
  """
  run = lambda: _run_decoder(
    state, search.tokens_to_logits, first_step, search.sparse_output
  )
  if first_step is not None or not search.forced_eos_free:
    return (*run(), None)
  forced = search.constraint.forced_end(state.constraint_state)  # [B, K]
  shapes = jax.eval_shape(run)
  skip = lambda: (
    jnp.zeros(shapes[0].shape, shapes[0].dtype),
    state.cache,
  )
  ends = jnp.all(forced | (state.alive_log_probs == hooks.NEG_INF))
  return (*jax.lax.cond(ends, skip, run), forced)


def _expansion(state: BeamState, search: _Search, outputs, forced):
  """The step's `Expansion` from the decoder's outputs, and the processor
  state."""
  if search.sparse_output:  # outputs: hidden [N, E]; no processor
    expansion = expand.expand_sparse_output(
      state,
      outputs,
      search.tokens_to_logits.output_layer,
      search.constraint,
      search.eos_id,
      search.alpha,
      score_mode=search.score_mode,
    )
    return expansion, state.processor_state
  scores, log_z, processor_state = _normalised(
    state, outputs, search.processor, search.score_mode, search.eos_id
  )
  if forced is not None and search.score_mode != "logits":
    # a forced EOS scores 0: its log-normaliser is its own logit
    eos = scores[:, :, search.eos_id : search.eos_id + 1]
    log_z = jnp.where(forced[:, :, None], eos, log_z)
  if search.constraint is None:
    expansion = expand.expand_dense(
      state, scores, log_z, search.eos_id, search.alpha
    )
  else:
    expansion = expand.expand_constrained(
      state, scores, log_z, search.constraint, search.eos_id, search.alpha
    )
  return expansion, processor_state


def _search_step(state: BeamState, search: _Search, first_step=None):
  """One decode position: finish EOS beams, extend the others.

  first_step: the peeled step 0 over the inputs (`_run_decoder`).
  """
  outputs, cache, forced = _decoder_outputs(state, search, first_step)
  expansion, processor_state = _expansion(state, search, outputs, forced)
  finished_seqs, finished_scores = _merge_finished(
    state, expansion.eos_scores, search.eos_id
  )
  beam_index, tokens = expansion.beam_index, expansion.tokens
  alive_seqs = _gather_beams(state.alive_seqs, beam_index)
  processor_state = _gather_beams(processor_state, beam_index)
  if search.processor is not None:
    processor_state = search.processor.update(processor_state, tokens)
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
  beam_size, max_decode_len, top_k, search: _Search, first_step
) -> None:
  """Raises ValueError for sizes < 1, alpha < 0, an unknown score mode, a
  sparse output without a SplitDecoder (tokens_to_logits and first_step)
  and a constraint (or with a processor), or score_forced_eos=False
  without a constraint that knows forced ends (or with a processor)."""
  score_modes.check_score_mode(search.score_mode)
  if min(beam_size, max_decode_len, top_k) < 1 or search.alpha < 0:
    raise ValueError(
      f"beam_search: need beam_size ({beam_size}), max_decode_len "
      f"({max_decode_len}), top_k ({top_k}) >= 1 and length_penalty_alpha "
      f"({search.alpha}) >= 0"
    )
  split = lambda fn: fn is None or isinstance(fn, hooks.SplitDecoder)
  if search.sparse_output and (
    search.constraint is None
    or search.processor is not None
    or not split(search.tokens_to_logits)
    or not split(first_step)
  ):
    raise ValueError(
      "beam_search: sparse_output needs a SplitDecoder (tokens_to_logits "
      "and first_step), a constraint and no logits_processor"
    )
  if not search.score_forced_eos and not search.forced_eos_free:
    raise ValueError(
      "beam_search: score_forced_eos=False needs a constraint with "
      "forced_end (a TrieConstraint) and no logits_processor"
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
  first_step: Optional[hooks.TokensToLogits] = None,
  score_forced_eos: bool = True,
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
    first_step: step 0 over the B inputs ([B, 1] tokens, the initial cache
      [B, ...]) -> (logits [B, V], cache); see the module docstring.
    score_forced_eos: False: a forced EOS (the constraint's `forced_end`)
      scores 0; see the module docstring.

  Returns:
    sequences [B, top_k, L] (EOS-terminated, PAD after) and scores
    [B, top_k], best first. Slots with no finished sequence score -inf.
  """
  top_k = top_k or beam_size
  search = _Search(
    tokens_to_logits, logits_processor, constraint, eos_id,
    length_penalty_alpha, sparse_output, score_mode, score_forced_eos,
  )  # fmt: skip
  _check_arguments(beam_size, max_decode_len, top_k, search, first_step)
  state = _initial_state(
    initial_cache,
    batch_size,
    beam_size,
    max_decode_len,
    top_k,
    logits_processor,
    processor_state,
    constraint,
    first_step,
  )
  if first_step is not None:  # step 0 peeled, the cache still [B, ...]
    state = _search_step(state, search, first_step)
  state = jax.lax.while_loop(
    lambda s: ~_all_done(s, max_decode_len, length_penalty_alpha, score_mode),
    lambda s: _search_step(s, search),
    state,
  )
  return state.finished_seqs, state.finished_scores
