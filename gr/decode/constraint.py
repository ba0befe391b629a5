"""Decoding restricted to the docids of a trie.

`TrieConstraint` restricts decoding to the docids of a
`gr.index.trie.TrieArrays` and implements both hooks of beam search:
`constrained_beam_search` uses the sparse `Constraint` path (below the root a
beam only has its <= W_d trie children); the dense-mask `LogitsProcessor`
path stays as a reference. `TrieConstraint(arrays, restricted=True)` computes
the scores of the sparse output layer densely (full logits, masked,
renormalised): the reference of `sparse_output`.

Shapes: B = batch, K = beam_size, V = vocabulary, L = max length, C = trie
nodes, W = the trie's width at a depth.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from gr.decode import beam_search as beam_lib
from gr.decode import expand
from gr.decode import hooks
from gr.index import trie as trie_lib


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
      return expand.restricted_log_softmax(log_probs, mask), state
    return jnp.where(mask, log_probs, hooks.NEG_INF), state

  def forced_end(self, states: jax.Array) -> jax.Array:
    """[B, K] bool: the beams whose only allowed token is EOS (states
    [B, K]; False for the root and dead states)."""
    return trie_lib.only_eos(self.arrays, states.reshape(-1)).reshape(
      states.shape
    )

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
  tokens_to_logits: hooks.TokensToLogits,
  initial_cache: hooks.PyTree,
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
  score_mode: str = "log_probs",
  first_step: Optional[hooks.TokensToLogits] = None,
  score_forced_eos: bool = True,
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

  score_mode: "log_probs" or "logits" (`beam_search`'s: summed raw logits,
  EOS adding 0).

  first_step: `beam_search`'s: step 0 once per input ([B, 1] rows).

  score_forced_eos: False: a docid's EOS scores 0 where the trie allows
  nothing else (`beam_search`'s), so fixed-length docids score their tokens
  alone, and the step where every beam ends runs no model. Sparse
  constraint only.
  """
  if potential is not None and dense_mask:
    raise ValueError("a plan's potential needs the sparse constraint")
  if not score_forced_eos and dense_mask:
    raise ValueError("score_forced_eos=False needs the sparse constraint")
  constraint = TrieConstraint(
    trie_arrays, restricted=sparse_output and dense_mask, potential=potential
  )
  sequences, scores = beam_lib.beam_search(
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
    score_mode=score_mode,
    first_step=first_step,
    score_forced_eos=score_forced_eos,
  )
  batch, k, length = sequences.shape
  documents = trie_lib.lookup(trie_arrays, sequences.reshape(batch * k, length))
  documents = documents.reshape(batch, k)  # --> [B, top_k]
  documents = jnp.where(scores > hooks.NEG_INF, documents, -1)
  return ConstrainedResult(
    sequences=sequences, scores=scores, documents=documents
  )
