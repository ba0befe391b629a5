"""Tests for gr/decode/sampling.py against exact distributions of a toy Markov chain.

The toy model is a second-order Markov chain: the next token's logits depend
on the previous two tokens (the older one read from a fake decoder cache,
so a cache that is not threaded through the loop changes the results) plus a
per-row bias from the initial cache. PAD (0) never has probability, so the
exact distribution over whole sequences is a finite enumeration.
HF transformers' logits warpers are the oracle for temperature/top-k/top-p.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from gr.decode import constraint as constraint_lib
from gr.decode import sampling
from gr.index.docid_trie import DocidTrie

VOCAB = 5  # 0 PAD, 1 EOS, 2..4 words
MAX_LEN = 3
NUM_SAMPLES = 20000


def _table(seed=0):
  """[V, V, V] logits of the next token given (older, previous)."""
  table = np.random.default_rng(seed).normal(size=(VOCAB,) * 3) * 1.5
  table[..., 0] = -np.inf  # PAD is never a token
  return table.astype(np.float32)


TABLE = _table()


def _tokens_to_logits(table, tokens, cache, step):
  """tokens [B, 1] -> logits [B, V] = table[older, previous] + bias."""
  del step
  previous = tokens[:, 0]
  logits = table[cache["last"], previous] + cache["bias"]
  return logits, dict(
    last=previous, bias=cache["bias"], index=cache["index"] + 1
  )


def _cache(bias):
  """bias [B, V] -> cache with leaves [B, ...] and a 0-d index."""
  return dict(
    last=jnp.zeros(bias.shape[:1], jnp.int32),
    bias=bias,
    index=jnp.array(0, jnp.int32),
  )


@functools.partial(
  jax.jit, static_argnames=("batch", "max_len", "temperature", "top_k", "top_p")
)
def _sample(
  table,
  bias_row,
  rng,
  *,
  batch,
  max_len=MAX_LEN,
  temperature=1.0,
  top_k=0,
  top_p=1.0,
):
  """`batch` samples of one chain (bias_row [V] repeated over rows)."""
  bias = jnp.broadcast_to(bias_row, (batch, VOCAB))
  return sampling.sample(
    functools.partial(_tokens_to_logits, table),
    _cache(bias),
    batch,
    max_decode_len=max_len,
    rng=rng,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
  )


def _hf_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Next-token probabilities [V] after HF's warpers (the oracle)."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,  # pylint: disable=g-import-not-at-top
    TopPLogitsWarper,
  )

  scores = torch.tensor(np.asarray(logits, np.float32))[None]
  scores = TemperatureLogitsWarper(temperature)(None, scores)
  if top_k:
    scores = TopKLogitsWarper(top_k)(None, scores)
  if top_p < 1.0:
    scores = TopPLogitsWarper(top_p)(None, scores)
  return torch.softmax(scores, -1)[0].numpy().astype(np.float64)


def _exact_distribution(table, bias_row, probs_fn, max_len=MAX_LEN):
  """{sequence (tokens up to EOS or max_len): probability} by enumeration."""
  out = {}

  def walk(prefix, older, previous, prob):
    if (prefix and prefix[-1] == 1) or len(prefix) == max_len:
      out[tuple(prefix)] = prob
      return
    probs = probs_fn(table[older, previous] + bias_row)
    for token in np.flatnonzero(probs > 0):
      walk(prefix + [int(token)], previous, int(token), prob * probs[token])

  walk([], 0, 0, 1.0)
  return out


def _as_tuples(sequences):
  """[N, L] EOS-then-PAD rows -> tuples without the PAD tail."""
  return [tuple(int(t) for t in row[: _length(row)]) for row in sequences]


def _length(row):
  eos = np.flatnonzero(row == 1)
  return int(eos[0]) + 1 if len(eos) else len(row)


def _chi_square_pvalue(samples, distribution):
  """p-value of the samples under `distribution` (rare cells pooled)."""
  counts = {}
  for s in samples:
    assert s in distribution, f"sampled {s}, which has probability 0"
    counts[s] = counts.get(s, 0) + 1
  n = len(samples)
  cells = sorted(distribution, key=distribution.get, reverse=True)
  common = [c for c in cells if distribution[c] * n >= 5]
  observed = [counts.get(c, 0) for c in common]
  expected = [distribution[c] * n for c in common]
  observed.append(n - sum(observed))
  expected.append(n - sum(expected))
  if expected[-1] < 1e-6:
    observed, expected = observed[:-1], expected[:-1]
  return stats.chisquare(observed, expected).pvalue


BIAS = np.random.default_rng(1).normal(size=VOCAB).astype(np.float32)
BIAS[0] = 0.0


@pytest.mark.parametrize(
  "temperature,top_k,top_p",
  [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 2, 1.0), (1.3, 0, 0.6), (0.8, 3, 0.8)],
)
def test_empirical_frequencies_match_the_exact_distribution(
  temperature, top_k, top_p
):
  sequences, _ = _sample(
    TABLE,
    BIAS,
    jax.random.key(7),
    batch=NUM_SAMPLES,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
  )
  distribution = _exact_distribution(
    TABLE,
    BIAS,
    functools.partial(
      _hf_probs, temperature=temperature, top_k=top_k, top_p=top_p
    ),
  )
  # Seeded, so not flaky; a wrong filter or cache gives p-values ~ 0.
  assert (
    _chi_square_pvalue(_as_tuples(np.asarray(sequences)), distribution) > 1e-3
  )


def test_log_probs_are_the_unfiltered_model_log_probs():
  sequences, log_probs = _sample(
    TABLE, BIAS, jax.random.key(3), batch=64, temperature=0.5, top_k=2
  )
  exact = _exact_distribution(TABLE, BIAS, _hf_probs)
  for seq, log_prob in zip(
    _as_tuples(np.asarray(sequences)), np.asarray(log_probs)
  ):
    np.testing.assert_allclose(log_prob, np.log(exact[seq]), rtol=1e-5)


def _greedy(table, bias_row, max_len=MAX_LEN):
  """The argmax path, by hand."""
  older, previous, out = 0, 0, []
  while len(out) < max_len and (not out or out[-1] != 1):
    token = int(np.argmax(table[older, previous] + bias_row))
    out.append(token)
    older, previous = previous, token
  return tuple(out)


@pytest.mark.parametrize("table_seed", [0, 1, 2, 3])
def test_top_k_1_and_low_temperature_equal_greedy(table_seed):
  table = _table(table_seed)
  expected = _greedy(table, BIAS)
  for kwargs in (
    dict(top_k=1),
    dict(temperature=0.0),
    dict(temperature=1e-4),
    dict(top_p=1e-6),
  ):
    sequences, _ = _sample(table, BIAS, jax.random.key(0), batch=8, **kwargs)
    assert set(_as_tuples(np.asarray(sequences))) == {expected}, kwargs


def test_seeded_determinism():
  first = _sample(TABLE, BIAS, jax.random.key(5), batch=256)[0]
  again = _sample(TABLE, BIAS, jax.random.key(5), batch=256)[0]
  other = _sample(TABLE, BIAS, jax.random.key(6), batch=256)[0]
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_raw_key_equals_typed_key():
  typed = _sample(TABLE, BIAS, jax.random.key(5), batch=32)[0]
  raw = _sample(TABLE, BIAS, jax.random.key_data(jax.random.key(5)), batch=32)[
    0
  ]
  np.testing.assert_array_equal(typed, raw)


def test_per_row_keys_make_a_row_independent_of_the_batch():
  keys = jax.random.split(jax.random.key(11), 64)
  together = np.asarray(_sample(TABLE, BIAS, keys, batch=64)[0])
  reordered = np.asarray(_sample(TABLE, BIAS, keys[::-1], batch=64)[0])
  np.testing.assert_array_equal(together, reordered[::-1])
  assert len(set(_as_tuples(together))) > 1


def test_eos_then_pad_and_early_stop():
  sequences, log_probs = _sample(
    TABLE, BIAS, jax.random.key(2), batch=512, max_len=6
  )
  sequences = np.asarray(sequences)
  for row in sequences:
    length = _length(row)
    assert np.all(row[:length] != 0), row  # no PAD before the end
    assert np.all(row[length:] == 0), row  # PAD after EOS
    assert np.sum(row == 1) <= 1
  assert np.all(np.isfinite(np.asarray(log_probs)))


def test_loop_stops_when_every_row_has_ended():
  steps_run = []

  def tokens_to_logits(tokens, cache, step):
    jax.debug.callback(lambda s: steps_run.append(int(s)), step)
    logits = jnp.full((tokens.shape[0], VOCAB), -10.0).at[:, 1].set(10.0)
    return logits, cache

  cache = dict(index=jnp.array(0, jnp.int32))
  sequences, _ = jax.jit(
    lambda rng: sampling.sample(
      tokens_to_logits, cache, 4, max_decode_len=8, rng=rng, top_k=1
    )
  )(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(sequences)[:, 0], 1)
  np.testing.assert_array_equal(np.asarray(sequences)[:, 1:], 0)
  assert steps_run == [0]  # every row took EOS at step 0: one step only


@settings(max_examples=25, deadline=None)
@given(
  seed=st.integers(0, 2**16),
  temperature=st.floats(0.2, 3.0),
  top_k=st.integers(0, 8),
  top_p=st.floats(0.05, 1.0),
)
def test_filter_logits_keeps_the_tokens_hf_keeps(
  seed, temperature, top_k, top_p
):
  logits = np.random.default_rng(seed).normal(size=(3, 8)).astype(np.float32)
  values, token_ids = sampling.filter_logits(
    jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p
  )
  ours = np.zeros(logits.shape)
  np.put_along_axis(
    ours,
    np.asarray(token_ids),
    np.asarray(jax.nn.softmax(values, axis=-1)),
    axis=-1,
  )
  expected = np.stack(
    [_hf_probs(row, temperature, top_k, top_p) for row in logits]
  )
  np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_logits_processor_hook_restricts_samples_to_the_trie():
  docids = [[2, 3, 1], [2, 4, 1], [4, 1]]
  trie = DocidTrie.build(docids, [0, 1, 2], eos_id=1)
  processor = constraint_lib.TrieConstraint(trie.to_device())
  bias = jnp.broadcast_to(jnp.asarray(BIAS), (256, VOCAB))
  sequences, log_probs = jax.jit(
    lambda rng: sampling.sample(
      functools.partial(_tokens_to_logits, jnp.asarray(TABLE)),
      _cache(bias),
      256,
      max_decode_len=MAX_LEN,
      rng=rng,
      logits_processor=processor,
    )
  )(jax.random.key(0))
  found = set(_as_tuples(np.asarray(sequences)))
  assert found == {tuple(d) for d in docids}
  assert np.all(np.isfinite(np.asarray(log_probs)))


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(temperature=-1.0),
    dict(top_k=-1),
    dict(top_p=0.0),
    dict(top_p=1.5),
    dict(max_decode_len=0),
  ],
)
def test_bad_settings_raise(kwargs):
  settings_ = dict(max_decode_len=MAX_LEN) | kwargs
  with pytest.raises(ValueError, match="sample"):
    sampling.sample(
      functools.partial(_tokens_to_logits, TABLE),
      _cache(jnp.zeros((2, VOCAB))),
      2,
      rng=jax.random.key(0),
      **settings_,
    )


def test_wrong_number_of_row_keys_raises():
  with pytest.raises(ValueError, match="one per row"):
    sampling.sample(
      functools.partial(_tokens_to_logits, TABLE),
      _cache(jnp.zeros((2, VOCAB))),
      2,
      max_decode_len=MAX_LEN,
      rng=jax.random.split(jax.random.key(0), 3),
    )
