"""Tests for gr/decode/ (beam search, constraint, aggregation, oracle)
against brute-force enumeration on toy models.

The toy model is a second-order Markov chain: the logits of the next token
depend on the previous two tokens (the older one is read from a fake decoder
cache with leading dim N, so a wrong cache gather changes the results) plus a
per-example bias (leading dim B in the initial cache).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gr.decode import aggregate
from gr.decode import beam_search as beam_lib
from gr.decode import constraint as constraint_lib
from gr.decode import hooks
from gr.decode import oracle
from gr.index.docid_trie import DocidTrie

BATCH = 2
VOCAB = 6  # constrained tests: docid tokens 2..5
MAX_LEN = 4  # up to 3 docid tokens + EOS
SMALL_VOCAB = 4  # unconstrained tests
SMALL_LEN = 3


def _tokens_to_logits(table, tokens, cache, step):
  """tokens [N, 1] -> logits [N, V] = table[older, previous] + bias."""
  del step
  previous = tokens[:, 0]
  logits = table[cache["last"], previous] + cache["bias"]
  new_cache = dict(last=previous, bias=cache["bias"], index=cache["index"] + 1)
  return logits, new_cache


def _initial_cache(bias):
  """bias [B, V] -> cache with leaves [B, ...] and a shared 0-d index."""
  return dict(
    last=jnp.zeros(bias.shape[:1], jnp.int32),
    bias=bias,
    index=jnp.array(0, jnp.int32),
  )


def _toy(seed, vocab):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(vocab, vocab, vocab)).astype(np.float32) * 2
  bias = rng.normal(size=(BATCH, vocab)).astype(np.float32)
  return jnp.asarray(table), jnp.asarray(bias)


def _log_prob(table, bias_row, sequence):
  """Oracle: total log-prob of `sequence` under the toy model (numpy)."""
  table, bias_row = np.asarray(table, np.float64), np.asarray(bias_row)
  older, previous, total = 0, 0, 0.0
  for token in sequence:
    logits = table[older, previous] + bias_row
    total += logits[token] - np.log(np.exp(logits).sum())
    older, previous = previous, token
  return total


def _brute_force(table, bias_row, sequences, top_k, alpha=0.0):
  """Best `top_k` (score, sequence) of `sequences` by the oracle."""
  scored = [
    (_log_prob(table, bias_row, s) / ((5 + len(s)) / 6) ** alpha, tuple(s))
    for s in sequences
  ]
  return sorted(scored, reverse=True)[:top_k]


def _as_tuples(sequences):
  """[K, L] EOS-terminated rows -> tuples up to EOS."""
  out = []
  for row in np.asarray(sequences).tolist():
    out.append(tuple(row[: row.index(1) + 1]) if 1 in row else tuple(row))
  return out


@functools.partial(jax.jit, static_argnames=("beam_size", "top_k", "alpha"))
def _unconstrained(table, bias, *, beam_size, top_k, alpha):
  return beam_lib.beam_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    beam_size=beam_size,
    max_decode_len=SMALL_LEN,
    top_k=top_k,
    length_penalty_alpha=alpha,
  )


@functools.partial(jax.jit, static_argnames=("beam_size", "top_k"))
def _constrained(table, bias, arrays, *, beam_size, top_k):
  return constraint_lib.constrained_beam_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    arrays,
    beam_size=beam_size,
    max_decode_len=MAX_LEN,
    top_k=top_k,
  )


@jax.jit
def _teacher_forced(table, bias_row, targets):
  """score_fn for exact_rank: targets [n, L] -> total log-prob [n]."""
  count = targets.shape[0]
  inputs = jnp.concatenate(
    [jnp.zeros((count, 1), jnp.int32), targets[:, :-1]], axis=1
  )
  cache = _initial_cache(jnp.broadcast_to(bias_row, (count, VOCAB)))

  def position(cache, columns):
    tokens, target = columns
    logits, cache = _tokens_to_logits(table, tokens[:, None], cache, 0)
    log_probs = jax.nn.log_softmax(logits)
    return cache, jnp.take_along_axis(log_probs, target[:, None], 1)[:, 0]

  _, per_token = jax.lax.scan(position, cache, (inputs.T, targets.T))
  return jnp.sum(jnp.where(targets.T != 0, per_token, 0.0), axis=0)


_rank = jax.jit(aggregate.rank_documents, static_argnames="aggregation")

docid_sets = st.lists(
  st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=MAX_LEN - 1).map(
    lambda t: tuple(t) + (1,)
  ),
  min_size=1,
  max_size=8,
  unique=True,
)


def _trie(sequences, values):
  return DocidTrie.build(
    sequences, values, capacity=64, vocab_size=VOCAB, fanout_capacity=VOCAB
  )


@pytest.mark.parametrize("alpha", [0.0, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_unconstrained_equals_brute_force(seed, alpha):
  table, bias = _toy(seed, SMALL_VOCAB)
  beams = (SMALL_VOCAB - 1) ** (SMALL_LEN - 1)  # every non-EOS prefix fits
  sequences, scores = _unconstrained(
    table, bias, beam_size=beams, top_k=6, alpha=alpha
  )
  non_eos = [t for t in range(SMALL_VOCAB) if t != 1]
  everything = [
    p + (1,)
    for n in range(SMALL_LEN)
    for p in itertools.product(non_eos, repeat=n)
  ]
  for row in range(BATCH):
    expected = _brute_force(table, bias[row], everything, 6, alpha)
    assert _as_tuples(sequences[row]) == [s for _, s in expected]
    np.testing.assert_allclose(scores[row], [v for v, _ in expected], rtol=1e-5)
    tail = np.asarray(sequences[row])
    for seq, ids in zip(expected, tail):
      assert (ids[len(seq[1]) :] == 0).all()  # PAD after EOS


@settings(max_examples=20, deadline=None)
@given(docid_sets, st.integers(0, 2**16), st.data())
def test_constrained_with_full_beam_is_exact_ranking(sequences, seed, data):
  values = data.draw(
    st.lists(
      st.integers(0, 3), min_size=len(sequences), max_size=len(sequences)
    )
  )
  table, bias = _toy(seed, VOCAB)
  result = _constrained(
    table, bias, _trie(sequences, values).to_device(), beam_size=8, top_k=8
  )
  found = min(len(sequences), 8)
  for row in range(BATCH):
    targets, scores, documents = oracle.exact_rank(
      functools.partial(_teacher_forced, table, bias[row]),
      sequences,
      values,
      batch_size=3,
      max_len=MAX_LEN,
    )
    expected = _brute_force(table, bias[row], sequences, 8)
    np.testing.assert_allclose(scores, [v for v, _ in expected], rtol=1e-5)
    assert _as_tuples(targets) == [s for _, s in expected]
    assert _as_tuples(result.sequences[row][:found]) == _as_tuples(targets)
    np.testing.assert_allclose(result.scores[row][:found], scores, rtol=1e-5)
    np.testing.assert_array_equal(result.documents[row][:found], documents)
    assert np.all(np.asarray(result.scores[row][found:]) == -np.inf)
    assert np.all(np.asarray(result.documents[row][found:]) == -1)


@settings(max_examples=20, deadline=None)
@given(docid_sets, st.integers(0, 2**16))
def test_constrained_small_beam_returns_only_trie_docids(sequences, seed):
  table, bias = _toy(seed, VOCAB)
  values = list(range(len(sequences)))
  result = _constrained(
    table, bias, _trie(sequences, values).to_device(), beam_size=2, top_k=2
  )
  for row in range(BATCH):
    for sequence, document, score in zip(
      _as_tuples(result.sequences[row]),
      result.documents[row],
      result.scores[row],
    ):
      if score > -np.inf:
        assert sequence in sequences
        assert document == sequences.index(sequence)
        np.testing.assert_allclose(
          score, _log_prob(table, bias[row], sequence), rtol=1e-5
        )
  assert np.isfinite(result.scores[:, 0]).all()  # something is always found


@jax.jit
def _constrained_for_edits(table, bias, arrays):
  return constraint_lib.constrained_beam_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    arrays,
    beam_size=4,
    max_decode_len=MAX_LEN,
    top_k=4,
  )


def test_edits_change_results_without_recompiling():
  old = [
    s + (1,) for n in (1, 2) for s in itertools.product((2, 3, 4), repeat=n)
  ]
  trie = _trie(old, list(range(len(old))))
  table, bias = _toy(3, VOCAB)
  prefer_new = bias.at[:, 5].add(12.0).at[:, 1].add(12.0)
  first = _constrained_for_edits(table, prefer_new, trie.to_device())
  assert (5, 5, 1) not in _as_tuples(first.sequences[0])
  removed = _as_tuples(first.sequences[0])[:2]
  for sequence in removed:
    trie.delete(sequence)
  trie.insert((5, 5, 1), 99)
  second = _constrained_for_edits(table, prefer_new, trie.to_device())
  assert _constrained_for_edits._cache_size() == 1
  for row in range(BATCH):
    returned = _as_tuples(second.sequences[row])
    assert returned[0] == (5, 5, 1) and second.documents[row, 0] == 99
    assert not set(removed) & set(returned)
  third = _constrained_for_edits(table, bias, trie.to_device())
  assert not set(removed) & set(_as_tuples(third.sequences[0]))
  assert _constrained_for_edits._cache_size() == 1


WIDE_VOCAB = 12  # sparse-vs-dense tests: docid tokens 2..11
WIDE_LEN = 5

wide_docid_sets = st.lists(
  st.lists(
    st.integers(2, WIDE_VOCAB - 1), min_size=1, max_size=WIDE_LEN - 1
  ).map(lambda t: tuple(t) + (1,)),
  min_size=1,
  max_size=60,
  unique=True,
)


@functools.partial(jax.jit, static_argnames=("dense_mask", "alpha"))
def _wide_search(table, bias, arrays, *, dense_mask, alpha):
  return constraint_lib.constrained_beam_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    arrays,
    beam_size=3,
    max_decode_len=WIDE_LEN,
    top_k=3,
    length_penalty_alpha=alpha,
    dense_mask=dense_mask,
  )


@settings(max_examples=25, deadline=None)
@given(wide_docid_sets, st.integers(0, 2**16), st.sampled_from([0.0, 0.8]))
def test_sparse_path_equals_dense_mask_path(sequences, seed, alpha):
  # Beam 3 over up to 60 docids: an approximate search, so both paths must
  # make the same choices at every step, not just find the same optimum.
  trie = DocidTrie.build(
    sequences,
    [7 * i for i in range(len(sequences))],
    capacity=256,
    vocab_size=WIDE_VOCAB,
    fanout_capacity=16,
  )
  table, bias = _toy(seed, WIDE_VOCAB)
  arrays = trie.to_device()
  sparse = _wide_search(table, bias, arrays, dense_mask=False, alpha=alpha)
  dense = _wide_search(table, bias, arrays, dense_mask=True, alpha=alpha)
  found = np.asarray(dense.scores) > -np.inf
  np.testing.assert_array_equal(np.asarray(sparse.scores) > -np.inf, found)
  np.testing.assert_allclose(
    np.asarray(sparse.scores)[found], np.asarray(dense.scores)[found], rtol=1e-6
  )
  np.testing.assert_array_equal(
    np.asarray(sparse.documents), np.asarray(dense.documents)
  )
  for row in range(BATCH):
    count = int(found[row].sum())
    assert _as_tuples(sparse.sequences[row][:count]) == _as_tuples(
      dense.sequences[row][:count]
    )
    assert set(_as_tuples(sparse.sequences[row][:count])) <= set(sequences)
  assert found[:, 0].all()


def test_sparse_path_with_few_candidates_is_exact():
  # The root has 2 children (< beam 3: dead beams from step 0), its table is
  # narrower than the vocabulary (4 < 12), and every prefix fits in the beam,
  # so the search is exact.
  sequences = [(2, 1), (3, 1), (3, 5, 1), (3, 2, 1), (3, 4, 4, 1)]
  trie = DocidTrie.build(sequences, list(range(len(sequences))))
  arrays = trie.to_device()
  assert arrays.root_child.shape[0] < WIDE_VOCAB
  for seed in (11, 12):
    table, bias = _toy(seed, WIDE_VOCAB)
    sparse = _wide_search(table, bias, arrays, dense_mask=False, alpha=0.0)
    for row in range(BATCH):
      expected = _brute_force(table, bias[row], sequences, 3)
      assert _as_tuples(sparse.sequences[row]) == [s for _, s in expected]
      np.testing.assert_allclose(
        sparse.scores[row], [v for v, _ in expected], rtol=1e-5
      )
      assert [int(d) for d in sparse.documents[row]] == [
        sequences.index(s) for _, s in expected
      ]


class _NoRepeat:
  """Toy processor: a beam may not take the token it took last step."""

  def init(self, batch_size, beam_size):
    return jnp.full((batch_size, beam_size), -1, jnp.int32)

  def process(self, state, log_probs, step):
    del step
    repeat = jnp.arange(log_probs.shape[-1]) == state[:, :, None]
    return jnp.where(repeat, -jnp.inf, log_probs), state

  def update(self, state, chosen_tokens):
    return chosen_tokens


@jax.jit
def _no_repeat(table, bias):
  return beam_lib.beam_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    beam_size=6,
    max_decode_len=SMALL_LEN + 1,
    logits_processor=_NoRepeat(),
    top_k=5,
  )


def test_processor_state_follows_beams():
  table, bias = _toy(5, SMALL_VOCAB)
  sequences, scores = _no_repeat(table, bias)
  non_eos = [t for t in range(SMALL_VOCAB) if t != 1]
  allowed = [
    p + (1,)
    for n in range(SMALL_LEN + 1)
    for p in itertools.product(non_eos, repeat=n)
    if all(a != b for a, b in zip(p, p[1:]))
  ]
  for row in range(BATCH):
    expected = _brute_force(table, bias[row], allowed, 5)
    assert _as_tuples(sequences[row]) == [s for _, s in expected]
    np.testing.assert_allclose(scores[row], [v for v, _ in expected], rtol=1e-5)


def test_rejects_bad_search_settings():
  table, bias = _toy(0, SMALL_VOCAB)
  step = functools.partial(_tokens_to_logits, table)
  with pytest.raises(ValueError, match="length_penalty_alpha"):
    beam_lib.beam_search(
      step,
      _initial_cache(bias),
      BATCH,
      beam_size=2,
      max_decode_len=3,
      length_penalty_alpha=-1.0,
    )
  with pytest.raises(ValueError, match="beam_size"):
    beam_lib.beam_search(
      step, _initial_cache(bias), BATCH, beam_size=0, max_decode_len=3
    )


def test_rank_documents_merges_multi_docids():
  docs = jnp.array([[4, 7, 4, -1, 2]])
  scores = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.9, 0.05]]))
  ranked, merged = _rank(docs, scores, aggregation="max")
  assert ranked.tolist() == [[4, 7, 2, -1, -1]]
  np.testing.assert_allclose(np.exp(merged[0, :3]), [0.4, 0.3, 0.05], 1e-6)
  ranked, merged = _rank(docs, scores, aggregation="logsumexp")
  assert ranked.tolist() == [[4, 7, 2, -1, -1]]
  np.testing.assert_allclose(np.exp(merged[0, :3]), [0.6, 0.3, 0.05], 1e-6)
  assert np.all(np.asarray(merged[0, 3:]) == -np.inf)
  with pytest.raises(ValueError, match="aggregation"):
    aggregate.rank_documents(docs, scores, aggregation="mean")


@settings(max_examples=30, deadline=None)
@given(
  st.lists(
    st.lists(
      st.tuples(
        st.integers(-1, 4), st.floats(-20, 0, width=32, allow_subnormal=False)
      ),
      min_size=6,
      max_size=6,
    ),
    min_size=3,
    max_size=3,
  ),
  st.sampled_from(["max", "logsumexp"]),
)
def test_rank_documents_matches_dict_oracle(rows, aggregation):
  docs = jnp.array([[d for d, _ in row] for row in rows], jnp.int32)
  scores = jnp.array([[s for _, s in row] for row in rows], jnp.float32)
  ranked, merged = _rank(docs, scores, aggregation=aggregation)
  combine = (
    max
    if aggregation == "max"
    else (lambda xs: float(np.logaddexp.reduce(np.array(xs, np.float64))))
  )
  for row, out_docs, out_scores in zip(
    rows, ranked.tolist(), np.asarray(merged)
  ):
    hits = {}
    for doc, score in row:
      if doc >= 0:
        hits.setdefault(doc, []).append(score)
    expected = {doc: combine(s) for doc, s in hits.items()}
    count = len(expected)
    assert dict(zip(out_docs[:count], out_scores[:count].tolist())) == (
      pytest.approx(expected, rel=1e-5, abs=1e-5)
    )
    assert list(out_scores[:count]) == sorted(out_scores[:count], reverse=True)
    assert out_docs[count:] == [-1] * (len(row) - count)


@jax.jit
def _no_repeat_in_trie(table, bias, arrays):
  return beam_lib.beam_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    beam_size=8,
    max_decode_len=MAX_LEN,
    logits_processor=_NoRepeat(),
    constraint=constraint_lib.TrieConstraint(arrays),
    top_k=8,
  )


@settings(max_examples=10, deadline=None)
@given(docid_sets, st.integers(0, 2**16))
def test_processor_and_sparse_constraint_compose(sequences, seed):
  table, bias = _toy(seed, VOCAB)
  arrays = _trie(sequences, list(range(len(sequences)))).to_device()
  result_seqs, result_scores = _no_repeat_in_trie(table, bias, arrays)
  allowed = [s for s in sequences if all(a != b for a, b in zip(s, s[1:]))]
  for row in range(BATCH):
    expected = _brute_force(table, bias[row], allowed, 8)
    count = len(expected)
    assert _as_tuples(result_seqs[row][:count]) == [s for _, s in expected]
    np.testing.assert_allclose(
      result_scores[row][:count], [v for v, _ in expected], rtol=1e-5
    )
    assert np.all(np.asarray(result_scores[row][count:]) == -np.inf)


# ------------------------------------------------- documents, multi-docids

DOCIDS_PER_DOC = 3


@functools.partial(
  jax.jit,
  static_argnames=("beam_size", "top_k", "docids_per_doc", "aggregation"),
)
def _document_search(
  table,
  bias,
  arrays,
  *,
  beam_size,
  top_k,
  docids_per_doc=DOCIDS_PER_DOC,
  aggregation="max",
):
  return aggregate.constrained_document_search(
    functools.partial(_tokens_to_logits, table),
    _initial_cache(bias),
    BATCH,
    arrays,
    beam_size=beam_size,
    max_decode_len=MAX_LEN,
    top_k=top_k,
    docids_per_doc=docids_per_doc,
    aggregation=aggregation,
  )


def _merge(scores, aggregation):
  """Oracle: a document's docid scores (floats) merged."""
  if aggregation == "max":
    return max(scores)
  return float(np.logaddexp.reduce(np.array(scores, np.float64)))


def _document_oracle(table, bias_row, sequences, values, pool, aggregation):
  """Documents ranked from the best `pool` docids: [(doc, score, [docids])]."""
  best = _brute_force(table, bias_row, sequences, pool)
  per_doc = {}
  for score, sequence in best:  # best first
    per_doc.setdefault(values[sequences.index(sequence)], []).append(
      (score, sequence)
    )
  ranked = [
    (doc, _merge([s for s, _ in hits], aggregation), [seq for _, seq in hits])
    for doc, hits in per_doc.items()
  ]
  return sorted(ranked, key=lambda r: -r[1])


multi_docid_sets = st.lists(
  st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=MAX_LEN - 1).map(
    lambda t: tuple(t) + (1,)
  ),
  min_size=2,
  max_size=12,
  unique=True,
)


@settings(max_examples=15, deadline=None)
@given(
  multi_docid_sets,
  st.permutations(range(6 * DOCIDS_PER_DOC)),
  st.integers(0, 2**16),
  st.sampled_from(["max", "logsumexp"]),
  st.sampled_from([2, 6]),
)
def test_document_search_ranks_distinct_documents(
  sequences, slots, seed, aggregation, top_k
):
  # Up to 12 docids of 6 documents (<= 3 docids each); 3 * max(4, top_k) >= 12
  # beams make the search exhaustive, so its pool is the best top_k * 3
  # docids and the documents are ranked from exactly those.
  values = [slot // DOCIDS_PER_DOC for slot in slots[: len(sequences)]]
  table, bias = _toy(seed, VOCAB)
  result = _document_search(
    table,
    bias,
    _trie(sequences, values).to_device(),
    beam_size=4,
    top_k=top_k,
    aggregation=aggregation,
  )
  pool = top_k * DOCIDS_PER_DOC
  for row in range(BATCH):
    expected = _document_oracle(
      table, bias[row], sequences, values, pool, aggregation
    )[:top_k]
    count = len(expected)
    docs = result.documents[row].tolist()
    assert docs[:count] == [doc for doc, _, _ in expected]
    assert docs[count:] == [-1] * (top_k - count)
    assert len(set(docs[:count])) == count
    np.testing.assert_allclose(
      result.scores[row][:count], [s for _, s, _ in expected], rtol=1e-5
    )
    for found, scores, (_, _, want) in zip(
      result.docids[row], result.docid_scores[row], expected
    ):
      assert _as_tuples(found[: len(want)]) == want  # best first
      assert np.all(np.asarray(found[len(want) :]) == 0)
      assert np.all(np.asarray(scores[len(want) :]) == -np.inf)
    if aggregation == "max" or pool >= len(sequences):
      exact_docs, exact_scores = oracle.exact_document_rank(
        functools.partial(_teacher_forced, table, bias[row]),
        sequences,
        values,
        aggregation=aggregation,
        batch_size=4,
        max_len=MAX_LEN,
        top_k=top_k,
      )
      assert docs[:count] == exact_docs.tolist()
      np.testing.assert_allclose(
        result.scores[row][:count], exact_scores, rtol=1e-5
      )


@settings(max_examples=10, deadline=None)
@given(docid_sets, st.integers(0, 2**16))
def test_document_search_with_one_docid_each_is_the_docid_search(
  sequences, seed
):
  # A small beam (approximate): one docid per document must change nothing.
  table, bias = _toy(seed, VOCAB)
  arrays = _trie(sequences, list(range(len(sequences)))).to_device()
  docids = _constrained(table, bias, arrays, beam_size=2, top_k=2)
  documents = _document_search(
    table, bias, arrays, beam_size=2, top_k=2, docids_per_doc=1
  )
  np.testing.assert_array_equal(documents.documents, docids.documents)
  np.testing.assert_array_equal(documents.scores, docids.scores)
  np.testing.assert_array_equal(documents.docids[:, :, 0], docids.sequences)
  assert aggregate.document_search_sizes(5, 3, 1) == (5, 3)
  assert aggregate.document_search_sizes(5, 3, 2) == (10, 6)


def test_exact_document_rank_honours_the_aggregation():
  # Document 1's two docids (0.3 + 0.3) beat document 0's one (0.4) only
  # when probabilities add.
  sequences, values = [(2, 1), (3, 1), (4, 1), (5, 1)], [0, 1, 1, 2]
  log_probs = jnp.log(jnp.array([0, 0, 0.4, 0.3, 0.3, 0.05]))
  score_fn = lambda targets: log_probs[targets[:, 0]]
  docs, scores = oracle.exact_document_rank(
    score_fn, sequences, values, aggregation="max", batch_size=3
  )
  assert docs.tolist() == [0, 1, 2]
  np.testing.assert_allclose(np.exp(scores), [0.4, 0.3, 0.05], rtol=1e-6)
  docs, scores = oracle.exact_document_rank(
    score_fn, sequences, values, aggregation="logsumexp", batch_size=3, top_k=2
  )
  assert docs.tolist() == [1, 0]
  np.testing.assert_allclose(np.exp(scores), [0.6, 0.4], rtol=1e-6)
  with pytest.raises(ValueError, match="aggregation"):
    oracle.exact_document_rank(score_fn, sequences, values, aggregation="mean")


# ------------------------------------------------- sparse output layer --


def _split_toy(table):
  """The toy as a SplitDecoder: its 'hidden state' is the logits row, and
  the output layer picks the listed tokens' entries (or the whole row)."""

  def output_layer(hidden, tokens):
    if tokens is None:
      return hidden
    return jnp.take_along_axis(hidden, tokens, axis=1)

  return hooks.SplitDecoder(
    functools.partial(_tokens_to_logits, table), output_layer
  )


@functools.partial(
  jax.jit, static_argnames=("dense_mask", "alpha", "beam_size")
)
def _restricted_search(table, bias, arrays, *, dense_mask, alpha, beam_size=3):
  return constraint_lib.constrained_beam_search(
    _split_toy(table),
    _initial_cache(bias),
    BATCH,
    arrays,
    beam_size=beam_size,
    max_decode_len=WIDE_LEN,
    top_k=beam_size,
    length_penalty_alpha=alpha,
    dense_mask=dense_mask,
    sparse_output=True,
  )


def _restricted_log_prob(table, bias_row, sequence, sequences):
  """Oracle: log-prob of `sequence` under the toy restricted to the trie
  of `sequences` (each step's softmax over the prefix's children)."""
  table, bias_row = np.asarray(table, np.float64), np.asarray(bias_row)
  older, previous, total = 0, 0, 0.0
  for position, token in enumerate(sequence):
    prefix = tuple(sequence[:position])
    allowed = sorted(
      {
        s[position]
        for s in sequences
        if len(s) > position and s[:position] == prefix
      }
    )
    logits = table[older, previous] + bias_row
    total += logits[token] - np.log(np.exp(logits[allowed]).sum())
    older, previous = previous, token
  return total


@settings(max_examples=25, deadline=None)
@given(wide_docid_sets, st.integers(0, 2**16), st.sampled_from([0.0, 0.8]))
def test_sparse_output_equals_dense_restricted_scores(sequences, seed, alpha):
  """Logits of the listed tokens only, log-softmax over them: the same
  beams as full logits masked to the trie and renormalised."""
  trie = DocidTrie.build(
    sequences,
    [7 * i for i in range(len(sequences))],
    capacity=256,
    vocab_size=WIDE_VOCAB,
    fanout_capacity=16,
  )
  table, bias = _toy(seed, WIDE_VOCAB)
  arrays = trie.to_device()
  sparse = _restricted_search(
    table, bias, arrays, dense_mask=False, alpha=alpha
  )
  dense = _restricted_search(table, bias, arrays, dense_mask=True, alpha=alpha)
  found = np.asarray(dense.scores) > -np.inf
  np.testing.assert_array_equal(np.asarray(sparse.scores) > -np.inf, found)
  np.testing.assert_allclose(
    np.asarray(sparse.scores)[found],
    np.asarray(dense.scores)[found],
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_array_equal(
    np.asarray(sparse.documents), np.asarray(dense.documents)
  )
  for row in range(BATCH):
    count = int(found[row].sum())
    hits = _as_tuples(sparse.sequences[row][:count])
    assert hits == _as_tuples(dense.sequences[row][:count])
    for hit, score in zip(hits, np.asarray(sparse.scores[row])):
      penalty = ((5 + len(hit)) / 6) ** alpha
      np.testing.assert_allclose(
        score * penalty,
        _restricted_log_prob(table, bias[row], hit, sequences),
        rtol=1e-5,
        atol=1e-5,
      )
  assert found[:, 0].all()


def test_sparse_output_is_the_distribution_restricted_to_the_trie():
  """Exhaustive beams: every docid, scored by the restricted oracle; their
  probabilities sum to 1; the full-normaliser search ranks otherwise."""
  sequences = [
    (2, 1),
    (3, 1),
    (3, 5, 1),
    (3, 2, 1),
    (3, 4, 4, 1),
    (3, 4, 6, 1),
    (7, 2, 2, 1),
  ]
  trie = DocidTrie.build(
    sequences, list(range(len(sequences))), vocab_size=WIDE_VOCAB
  )
  arrays = trie.to_device()
  table, bias = _toy(21, WIDE_VOCAB)
  result = _restricted_search(
    table, bias, arrays, dense_mask=False, alpha=0.0, beam_size=len(sequences)
  )
  full = _wide_search(table, bias, arrays, dense_mask=False, alpha=0.0)
  for row in range(BATCH):
    expected = sorted(
      (
        (_restricted_log_prob(table, bias[row], s, sequences), s)
        for s in sequences
      ),
      reverse=True,
    )
    assert _as_tuples(result.sequences[row]) == [s for _, s in expected]
    np.testing.assert_allclose(
      result.scores[row], [v for v, _ in expected], rtol=1e-5
    )
    np.testing.assert_allclose(
      np.logaddexp.reduce(np.asarray(result.scores[row], np.float64)),
      0.0,
      atol=1e-5,
    )
    # A docid's restricted score is at least its full-vocabulary log-prob
    # (each step's normaliser sums over fewer tokens), here strictly.
    restricted = {s: v for v, s in expected}
    for hit, score in zip(_as_tuples(full.sequences[row]), full.scores[row]):
      assert restricted[hit] > float(score) + 1e-3


def test_sparse_output_needs_a_split_decoder_and_a_constraint():
  table, bias = _toy(0, WIDE_VOCAB)
  arrays = _trie([(2, 1)], [0]).to_device()
  constraint = constraint_lib.TrieConstraint(arrays)
  with pytest.raises(ValueError, match="sparse_output"):
    beam_lib.beam_search(
      functools.partial(_tokens_to_logits, table),
      _initial_cache(bias),
      BATCH,
      beam_size=2,
      max_decode_len=3,
      constraint=constraint,
      sparse_output=True,
    )
  with pytest.raises(ValueError, match="sparse_output"):
    beam_lib.beam_search(
      _split_toy(table),
      _initial_cache(bias),
      BATCH,
      beam_size=2,
      max_decode_len=3,
      sparse_output=True,
    )
  with pytest.raises(ValueError, match="sparse_output"):
    beam_lib.beam_search(
      _split_toy(table),
      _initial_cache(bias),
      BATCH,
      beam_size=2,
      max_decode_len=3,
      constraint=constraint,
      logits_processor=_NoRepeat(),
      sparse_output=True,
    )


# ------------------------------------------------- per-level widths --


def _wide_at_one_level(rng):
  """Random docids plus one node at depth 2 with every token as a child
  (as a text docid's common first words have): level widths differ."""
  wide = [(3, 4, t, 1) for t in range(2, WIDE_VOCAB)]
  narrow = {
    tuple(rng.integers(5, WIDE_VOCAB, rng.integers(1, WIDE_LEN))) + (1,)
    for _ in range(12)
  }
  return wide + sorted(narrow - set(wide))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_level_widths_give_the_dense_mask_beams(seed):
  sequences = _wide_at_one_level(np.random.default_rng(seed))
  trie = DocidTrie.build(
    sequences, list(range(len(sequences))), vocab_size=WIDE_VOCAB
  )
  arrays = trie.to_device()
  widths = arrays.level_widths
  assert widths[1] == 16 and max(widths[:1] + widths[2:]) < 16
  constraint = constraint_lib.TrieConstraint(arrays)
  states = jnp.zeros((BATCH, 3), jnp.int32)
  for depth in range(1, constraint.num_levels() + 1):
    tokens, _ = constraint.candidates(states, depth)
    assert tokens.shape == (BATCH, 3, arrays.level_width(depth))
  table, bias = _toy(seed, WIDE_VOCAB)
  for search in (_wide_search, _restricted_search):
    for alpha in (0.0, 0.8):
      sparse = search(table, bias, arrays, dense_mask=False, alpha=alpha)
      dense = search(table, bias, arrays, dense_mask=True, alpha=alpha)
      found = np.asarray(dense.scores) > -np.inf
      assert found[:, 0].all()
      np.testing.assert_array_equal(np.asarray(sparse.scores) > -np.inf, found)
      np.testing.assert_allclose(
        np.asarray(sparse.scores)[found],
        np.asarray(dense.scores)[found],
        rtol=1e-5,
        atol=1e-6,
      )
      np.testing.assert_array_equal(sparse.documents, dense.documents)
      for row in range(BATCH):
        count = int(found[row].sum())
        assert _as_tuples(sparse.sequences[row][:count]) == _as_tuples(
          dense.sequences[row][:count]
        )


def test_update_device_edits_change_results_without_recompiling():
  old = [
    s + (1,) for n in (1, 2) for s in itertools.product((2, 3, 4), repeat=n)
  ]
  trie = _trie(old, list(range(len(old))))
  table, bias = _toy(3, VOCAB)
  prefer_new = bias.at[:, 5].add(12.0).at[:, 1].add(12.0)
  search = jax.jit(
    lambda table, bias, arrays: _constrained_for_edits(table, bias, arrays)
  )
  arrays = trie.to_device()
  first = search(table, prefer_new, arrays)
  removed = _as_tuples(first.sequences[0])[:2]
  for sequence in removed:
    trie.delete(sequence)
  trie.insert((5, 5, 1), 99)
  arrays = trie.update_device(arrays)
  second = search(table, prefer_new, arrays)
  assert search._cache_size() == 1
  for row in range(BATCH):
    returned = _as_tuples(second.sequences[row])
    assert returned[0] == (5, 5, 1) and second.documents[row, 0] == 99
    assert not set(removed) & set(returned)
