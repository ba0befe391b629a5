"""Tests for beam search's two model-saving options (issue 21 item 2):
`first_step` (step 0 once per input instead of once per beam) and
`score_forced_eos=False` (a forced EOS scores 0, and a step where every beam
must end calls no model), against the per-beam search and exact oracles.

The toy model is tests/decode/test_decoding.py's second-order Markov chain;
its per-input state lives in its cache, so it is also its own `first_step`.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gr.decode import beam_search as beam_lib
from gr.decode import constraint as constraint_lib
from gr.index import trie as trie_lib
from gr.index.docid_trie import DocidTrie
from tests.decode import test_decoding as toy

BATCH, VOCAB, MAX_LEN = toy.BATCH, toy.WIDE_VOCAB, toy.WIDE_LEN


def _step(table):
  return functools.partial(toy._tokens_to_logits, table)


def _random_trie(seed, count=40):
  rng = np.random.default_rng(seed)
  sequences = sorted(
    {
      tuple(rng.integers(2, VOCAB, rng.integers(1, MAX_LEN))) + (1,)
      for _ in range(count)
    }
  )
  trie = DocidTrie.build(
    sequences, [3 * i for i in range(len(sequences))], vocab_size=VOCAB
  )
  return sequences, trie


@functools.partial(jax.jit, static_argnames=("mode", "first"))
def _search(table, bias, arrays, *, mode, first):
  """The search in `mode`, with step 0 per beam or (first) per input."""
  step = toy._split_toy(table) if mode == "sparse_output" else _step(table)
  if mode in ("unconstrained", "processor"):
    return beam_lib.beam_search(
      step,
      toy._initial_cache(bias),
      BATCH,
      beam_size=4,
      max_decode_len=MAX_LEN,
      logits_processor=toy._NoRepeat() if mode == "processor" else None,
      first_step=step if first else None,
      length_penalty_alpha=0.8,
    )
  result = constraint_lib.constrained_beam_search(
    step,
    toy._initial_cache(bias),
    BATCH,
    arrays,
    beam_size=3,
    max_decode_len=MAX_LEN,
    dense_mask=mode == "dense_mask",
    sparse_output=mode == "sparse_output",
    score_mode="logits" if mode == "logits" else "log_probs",
    first_step=step if first else None,
    score_forced_eos=mode != "forced_eos_free",
  )
  return result.sequences, result.scores, result.documents


MODES = [
  "unconstrained",
  "processor",
  "sparse",
  "dense_mask",
  "sparse_output",
  "logits",
  "forced_eos_free",
]


@pytest.mark.parametrize("mode", MODES)
def test_first_step_per_input_equals_first_step_per_beam(mode):
  for seed in (0, 1):
    _, trie = _random_trie(seed)
    table, bias = toy._toy(seed, VOCAB)
    arrays = trie.to_device()
    per_beam = _search(table, bias, arrays, mode=mode, first=False)
    per_input = _search(table, bias, arrays, mode=mode, first=True)
    for ours, theirs in zip(per_input, per_beam):
      np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), 1e-6)


def _free_end_log_prob(table, bias_row, sequence, sequences):
  """Oracle: the toy's log-prob of `sequence`, without its EOS's term
  where no docid of `sequences` continues its prefix otherwise."""
  table, bias_row = np.asarray(table, np.float64), np.asarray(bias_row)
  older, previous, total = 0, 0, 0.0
  for position, token in enumerate(sequence):
    prefix = tuple(sequence[:position])
    nexts = {s[position] for s in sequences if s[:position] == prefix}
    logits = table[older, previous] + bias_row
    if nexts != {1}:
      total += logits[token] - np.log(np.exp(logits).sum())
    older, previous = previous, token
  return total


@functools.partial(jax.jit, static_argnames=("first",))
def _free_end_search(table, bias, arrays, *, first=False):
  return constraint_lib.constrained_beam_search(
    _step(table),
    toy._initial_cache(bias),
    BATCH,
    arrays,
    beam_size=8,
    max_decode_len=toy.MAX_LEN,
    score_forced_eos=False,
    first_step=_step(table) if first else None,
  )


@settings(max_examples=20, deadline=None)
@given(toy.docid_sets, st.integers(0, 2**16), st.booleans())
def test_forced_eos_free_is_the_exact_ranking_without_forced_ends(
  sequences, seed, first
):
  table, bias = toy._toy(seed, toy.VOCAB)
  values = [5 * i for i in range(len(sequences))]
  result = _free_end_search(
    table, bias, toy._trie(sequences, values).to_device(), first=first
  )
  for row in range(BATCH):
    expected = sorted(
      (
        (_free_end_log_prob(table, bias[row], s, sequences), s)
        for s in sequences
      ),
      reverse=True,
    )
    found = len(expected)
    hits = toy._as_tuples(result.sequences[row][:found])
    assert hits == [s for _, s in expected]
    np.testing.assert_allclose(
      result.scores[row][:found], [v for v, _ in expected], rtol=1e-5
    )
    assert result.documents[row][:found].tolist() == [
      values[sequences.index(s)] for s in hits
    ]


def _nan_at(table, last_step):
  """The toy step, but NaN logits at `last_step` (where every docid of a
  fixed-length trie must end): a search that calls it there scores NaN."""

  def tokens_to_logits(tokens, cache, step):
    logits, cache = toy._tokens_to_logits(table, tokens, cache, step)
    return jnp.where(step == last_step, jnp.nan, logits), cache

  return tokens_to_logits


@functools.partial(jax.jit, static_argnames=("mode",))
def _fixed_length_search(table, bias, arrays, *, mode):
  step = _nan_at(table, 3)
  if mode == "sparse_output":
    step = toy._split_toy(table)
    step = step.__class__(_nan_at(table, 3), step.output_layer)
  return constraint_lib.constrained_beam_search(
    step,
    toy._initial_cache(bias),
    BATCH,
    arrays,
    beam_size=3,
    max_decode_len=4,
    sparse_output=mode == "sparse_output",
    score_mode="logits" if mode == "logits" else "log_probs",
    score_forced_eos=mode != "forced_eos_free",
  )


def test_the_step_where_every_beam_must_end_calls_no_model():
  sequences = [s + (1,) for s in itertools.product((2, 3, 4), repeat=3)]
  trie = DocidTrie.build(sequences, list(range(27)), vocab_size=VOCAB)
  table, bias = toy._toy(7, VOCAB)
  arrays = trie.to_device()
  scored = _fixed_length_search(table, bias, arrays, mode="log_probs")
  assert np.isnan(np.asarray(scored.scores)).any()  # the default asks it
  for mode in ("forced_eos_free", "sparse_output", "logits"):
    result = _fixed_length_search(table, bias, arrays, mode=mode)
    assert np.isfinite(np.asarray(result.scores)).all(), mode
  free = _fixed_length_search(table, bias, arrays, mode="forced_eos_free")
  for row in range(BATCH):
    for hit, score in zip(
      toy._as_tuples(free.sequences[row]), free.scores[row]
    ):
      expected = _free_end_log_prob(table, bias[row], hit, sequences)
      np.testing.assert_allclose(score, expected, rtol=1e-5)
  trie.delete(toy._as_tuples(free.sequences[0])[0])
  trie.insert((5, 5, 5, 1), 99)
  edited = _fixed_length_search(
    table, bias.at[:, 5].add(9.0), trie.to_device(), mode="forced_eos_free"
  )
  assert edited.documents[0, 0] == 99
  assert _fixed_length_search._cache_size() == 4  # one per mode: the edit none


def test_only_eos_marks_the_nodes_whose_one_child_is_eos():
  sequences = [(2, 1), (3, 1), (3, 4, 1), (5, 6, 1)]
  trie = DocidTrie.build(sequences, [0, 1, 2, 3], vocab_size=VOCAB)
  arrays = trie.to_device()
  node = lambda prefix: trie._path(prefix)[-1]
  nodes = jnp.array(
    [0, -1, node((2,)), node((3,)), node((3, 4)), node((5,)), node((2, 1))]
  )
  expected = [False, False, True, False, True, False, False]
  assert trie_lib.only_eos(arrays, nodes).tolist() == expected
  constraint = constraint_lib.TrieConstraint(arrays)
  forced = constraint.forced_end(nodes.reshape(1, -1))
  assert forced.tolist() == [expected]


def test_forced_eos_free_and_first_step_check_their_arguments():
  table, bias = toy._toy(0, VOCAB)
  arrays = toy._trie([(2, 1)], [0]).to_device()
  common = dict(beam_size=2, max_decode_len=3, score_forced_eos=False)
  cache = toy._initial_cache(bias)
  with pytest.raises(ValueError, match="sparse constraint"):
    constraint_lib.constrained_beam_search(
      _step(table), cache, BATCH, arrays, dense_mask=True, **common
    )
  with pytest.raises(ValueError, match="score_forced_eos"):
    beam_lib.beam_search(_step(table), cache, BATCH, **common)
  with pytest.raises(ValueError, match="first_step"):
    constraint_lib.constrained_beam_search(
      toy._split_toy(table),
      cache,
      BATCH,
      arrays,
      beam_size=2,
      max_decode_len=3,
      sparse_output=True,
      first_step=_step(table),
    )
