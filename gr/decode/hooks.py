"""What beam search calls: the decoder step and its two hooks.

- `TokensToLogits`: (decoder_tokens [N, 1], cache, step) -> (logits [N, V],
  cache); a `SplitDecoder` is one cut before its output layer, so that the
  sparse output path scores only a few listed tokens.
- a `LogitsProcessor` rewrites the dense log-probabilities [B, K, V] of every
  step (any rule; its state follows the beams);
- a `Constraint` lists the (at most W_d at step d) tokens each beam may take
  (gr/decode/constraint.py's `TrieConstraint` is both).

Shapes: B = batch, K = beam_size, N = B * K, V = vocabulary, E = hidden,
W_d = the most tokens a `Constraint` lists per beam at depth (step) d.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp

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

  Optional: `forced_end(states [B, K]) -> [B, K] bool`, the beams whose only
  allowed token is EOS; with it, beam search can skip the model at a step
  where every alive beam must end (`beam_search(score_forced_eos=False)`).
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
