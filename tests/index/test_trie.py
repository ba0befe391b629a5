"""Tests for gr/index/docid_trie.py, trie.py and trie_build.py: host edits,
device layout, mask and step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gr.index import trie as trie_lib
from gr.index.docid_trie import DocidTrie

VOCAB = 8
MAX_TOKENS = 3  # docid tokens before EOS
CAPACITY = 64

_step = jax.jit(trie_lib.step)
_mask = jax.jit(trie_lib.allowed_mask, static_argnums=2)
_lookup = jax.jit(trie_lib.lookup)
_children = jax.jit(trie_lib.children)

docid_sets = st.lists(
  st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=MAX_TOKENS).map(
    lambda t: tuple(t) + (1,)
  ),
  min_size=1,
  max_size=12,
  unique=True,
)


def _build(sequences, values=None):
  values = values if values is not None else list(range(len(sequences)))
  return DocidTrie.build(
    sequences,
    values,
    capacity=CAPACITY,
    vocab_size=VOCAB,
    fanout_capacity=VOCAB,
  )


def _nodes_of(arrays, prefixes):
  """Device node reached by each prefix (tuples of <= MAX_TOKENS + 1)."""
  nodes = jnp.zeros((len(prefixes),), jnp.int32)
  for position in range(MAX_TOKENS + 1):
    tokens = jnp.array(
      [p[position] if position < len(p) else 0 for p in prefixes], jnp.int32
    )
    moved = _step(arrays, nodes, tokens)
    active = jnp.array([position < len(p) for p in prefixes])
    nodes = jnp.where(active, moved, nodes)
  return np.asarray(nodes)


def _reachable(arrays):
  """All EOS-terminated sequences reachable on the device arrays (BFS)."""
  found, frontier = set(), [((), 0)]
  while frontier:
    prefixes, nodes = zip(*frontier)
    mask = np.asarray(_mask(arrays, jnp.array(nodes, jnp.int32), VOCAB))
    frontier = []
    for prefix, node, row in zip(prefixes, nodes, mask):
      for token in np.flatnonzero(row):
        child = int(_step(arrays, jnp.array([node]), jnp.array([token]))[0])
        assert child > 0, (prefix, token)
        if token == 1:
          found.add(prefix + (1,))
        else:
          frontier.append((prefix + (int(token),), child))
  return found


def _check_matches(trie, arrays, expected):
  """Device arrays hold exactly `expected` {sequence: value}."""
  assert len(trie) == len(expected)
  assert dict(trie.items()) == expected
  assert _reachable(arrays) == set(expected)
  sequences = list(expected)
  padded = np.zeros((len(sequences), MAX_TOKENS + 1), np.int32)
  for row, sequence in enumerate(sequences):
    padded[row, : len(sequence)] = sequence
  values = np.asarray(_lookup(arrays, jnp.asarray(padded)))
  np.testing.assert_array_equal(values, [expected[s] for s in sequences])


def _expected_next(sequences, prefix):
  return {
    s[len(prefix)]
    for s in sequences
    if len(s) > len(prefix) and s[: len(prefix)] == prefix
  }


@settings(max_examples=30, deadline=None)
@given(docid_sets, st.data())
def test_mask_and_step_match_prefix_oracle(sequences, data):
  values = data.draw(
    st.lists(
      st.integers(0, 4), min_size=len(sequences), max_size=len(sequences)
    )
  )
  trie = _build(sequences, values)
  arrays = trie.to_device()
  _check_matches(trie, arrays, dict(zip(sequences, values)))
  prefixes = sorted({s[:n] for s in sequences for n in range(len(s))})
  prefixes.append((VOCAB - 1,) * (MAX_TOKENS + 1))  # never a docid prefix
  nodes = _nodes_of(arrays, prefixes)
  masks = np.asarray(_mask(arrays, jnp.asarray(nodes), VOCAB))
  for prefix, node, row in zip(prefixes, nodes, masks):
    assert set(np.flatnonzero(row)) == _expected_next(sequences, prefix)
    assert (node >= 0) == bool(_expected_next(sequences, prefix))


@settings(max_examples=30, deadline=None)
@given(docid_sets)
def test_sparse_children_match_prefix_oracle_and_step(sequences):
  arrays = _build(sequences).to_device()
  prefixes = sorted({s[:n] for s in sequences for n in range(1, len(s) + 1)})
  nodes = _nodes_of(arrays, prefixes)
  tokens, children = map(np.asarray, _children(arrays, jnp.asarray(nodes)))
  assert tokens.shape == (len(prefixes), arrays.max_children)
  for prefix, node, row, kids in zip(prefixes, nodes, tokens, children):
    assert set(row[row >= 0]) == _expected_next(sequences, prefix)
    assert ((row >= 0) == (kids >= 0)).all()
    stepped = _step(arrays, jnp.full(len(row), node), jnp.asarray(row))
    np.testing.assert_array_equal(np.asarray(stepped)[row >= 0], kids[row >= 0])
  root_tokens, root_nodes = map(
    np.asarray, trie_lib.root_children(arrays, VOCAB)
  )
  first = root_tokens[root_tokens >= 0]
  assert set(first) == _expected_next(sequences, ())
  np.testing.assert_array_equal(root_nodes >= 0, root_tokens >= 0)
  np.testing.assert_array_equal(
    root_nodes[root_tokens >= 0], _nodes_of(arrays, [(int(t),) for t in first])
  )
  dead_and_root = np.asarray(_children(arrays, jnp.array([-1, 0]))[0])
  assert (dead_and_root == -1).all()  # the root's children are the table


@settings(max_examples=30, deadline=None)
@given(docid_sets, docid_sets, st.data())
def test_delete_then_insert_keeps_shapes_and_never_revives(
  sequences, new_sequences, data
):
  trie = _build(sequences)
  before = trie.to_device()
  deleted = data.draw(st.lists(st.sampled_from(sequences), unique=True))
  for sequence in deleted:
    assert trie.delete(sequence) == sequences.index(sequence)
  expected = {s: i for i, s in enumerate(sequences) if s not in deleted}
  after = trie.to_device()
  assert jax.tree.structure(after) == jax.tree.structure(before)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(after)] == [
    (x.shape, x.dtype) for x in jax.tree.leaves(before)
  ]
  _check_matches(trie, after, expected)
  assert trie.num_nodes == 1 + len(
    {s[:n] for s in expected for n in range(1, len(s) + 1)}
  )
  for offset, sequence in enumerate(new_sequences):
    if sequence not in expected:
      trie.insert(sequence, 100 + offset)
      expected[sequence] = 100 + offset
  _check_matches(trie, trie.to_device(), expected)


def _padded(sequences):
  out = np.zeros((len(sequences), MAX_TOKENS + 1), np.int32)
  for row, sequence in enumerate(sequences):
    out[row, : len(sequence)] = sequence
  return out


@settings(max_examples=30, deadline=None)
@given(docid_sets, docid_sets, st.data())
def test_bulk_build_equals_inserts_and_stays_editable(sequences, more, data):
  values = data.draw(
    st.lists(
      st.integers(0, 4), min_size=len(sequences), max_size=len(sequences)
    )
  )
  bulk = DocidTrie.from_padded(
    _padded(sequences),
    values,
    capacity=CAPACITY,
    vocab_size=VOCAB,
    fanout_capacity=VOCAB,
  )
  inserted = _build(sequences, values)
  expected = dict(zip(sequences, values))
  assert bulk.num_nodes == inserted.num_nodes
  _check_matches(bulk, bulk.to_device(), expected)
  for name, array in bulk.to_numpy().items():
    assert array.shape == inserted.to_numpy()[name].shape, name
  for sequence in data.draw(st.lists(st.sampled_from(sequences), unique=True)):
    assert bulk.delete(sequence) == expected.pop(sequence)
  for offset, sequence in enumerate(more):
    if sequence not in expected:
      bulk.insert(sequence, 50 + offset)
      expected[sequence] = 50 + offset
  _check_matches(bulk, bulk.to_device(), expected)


@pytest.mark.parametrize(
  "row, message",
  [
    ((2, 3, 0, 0), "sequence 1 .* then EOS"),  # no EOS
    ((2, 0, 3, 1), "sequence 1"),  # PAD before EOS
    ((2, 1, 3, 0), "sequence 1"),  # a token after EOS
    ((2, 99, 1, 0), "sequence 1"),  # >= vocab_size
    ((-2, 1, 0, 0), "sequence 1"),
    ((4, 1, 0, 0), "sequence 1: docid \\[4, 1\\] is already in the trie"),
  ],
)
def test_bulk_build_rejects_bad_rows_naming_them(row, message):
  rows = np.array([(4, 1, 0, 0), row, (5, 5, 1, 0)])
  with pytest.raises(ValueError, match=message):
    DocidTrie.from_padded(rows, [0, 1, 2], vocab_size=VOCAB)
  with pytest.raises(ValueError, match="document"):
    DocidTrie.from_padded(rows[[0, 2]], [0, -1], vocab_size=VOCAB)
  with pytest.raises(ValueError, match="shape"):
    DocidTrie.from_padded(rows, [0, 1], vocab_size=VOCAB)


def test_deleting_everything_prunes_to_root_and_recycles_ids():
  sequences = [(2, 3, 1), (2, 4, 1), (5, 1)]
  trie = _build(sequences)
  for sequence in sequences:
    trie.delete(sequence)
  assert len(trie) == 0 and trie.num_nodes == 1
  assert _reachable(trie.to_device()) == set()
  trie.insert((6, 6, 6, 1), 9)
  assert trie.num_nodes == 5
  assert trie._top <= 8  # the new nodes reuse freed slots 1..7
  assert trie.get((6, 6, 6, 1)) == 9 and trie.get((2, 3, 1)) is None


def test_capacity_doubles_only_when_exceeded():
  trie = DocidTrie(capacity=16, vocab_size=None)
  trie.insert((2, 1), 0)
  small = trie.to_device()
  for token in range(3, 9):
    trie.insert((token, 1), token)  # 1 + 2 * 7 = 15 nodes: still fits
  assert trie.to_device().child_start.shape == small.child_start.shape
  trie.insert((9, 1), 9)
  assert trie.to_device().child_start.shape == (32,)
  assert trie.to_device().root_child.shape == (16,)  # token 9 needs > 8
  trie.insert((2, 2, 2, 1), 2)
  wide = [(2, 2, t, 1) for t in range(3, 6)]
  for sequence in wide:
    trie.insert(sequence, 0)
  assert trie.to_device().max_children == 4


def test_fanout_below_root_not_docid_count_sets_mask_width():
  atomic = [(token, 1) for token in range(2, 1002)]
  trie = DocidTrie.build(atomic, list(range(1000)))
  arrays = trie.to_device()
  assert arrays.max_children == 1  # the root's 1000 children are a table
  nodes = jnp.array([0, arrays.root_child[500], -1], jnp.int32)
  mask = np.asarray(trie_lib.allowed_mask(arrays, nodes, 1100))
  assert mask[0].sum() == 1000 and mask[0, 2:1002].all()
  assert np.flatnonzero(mask[1]).tolist() == [1]
  assert not mask[2].any()


def test_memory_bytes_matches_device_arrays():
  trie = _build([(2, 3, 1), (4, 1)])
  arrays = trie.to_device()
  assert trie.memory_bytes() == sum(x.nbytes for x in jax.tree.leaves(arrays))


def test_root_table_narrower_than_vocab_is_padded():
  trie = DocidTrie.build([(3, 1)], [0])
  arrays = trie.to_device()
  assert arrays.root_child.shape[0] < 50
  mask = np.asarray(trie_lib.allowed_mask(arrays, jnp.array([0]), 50))
  assert np.flatnonzero(mask[0]).tolist() == [3]
  assert int(trie_lib.step(arrays, jnp.array([0]), jnp.array([40]))[0]) == -1


@pytest.mark.parametrize(
  "sequence, message",
  [
    ((2, 3), "does not end in EOS"),
    ((), "does not end in EOS"),
    ((2, 1, 3, 1), "position 1"),
    ((2, 0, 1), "position 1"),
    ((-3, 1), "position 0"),
    ((2, 99, 1), "vocab_size"),
  ],
)
def test_rejects_malformed_docids(sequence, message):
  with pytest.raises(ValueError, match=message):
    DocidTrie.build([(2, 1), sequence], [0, 1], vocab_size=VOCAB)
  with pytest.raises(ValueError, match="sequence 1"):
    DocidTrie.build([(2, 1), sequence], [0, 1], vocab_size=VOCAB)


def test_rejects_duplicates_bad_values_and_unknown_deletes():
  with pytest.raises(ValueError, match="sequence 2: .* already in the trie"):
    DocidTrie.build([(2, 1), (3, 1), (2, 1)], [0, 1, 2])
  with pytest.raises(ValueError, match="2 sequences but 1 values"):
    DocidTrie.build([(2, 1), (3, 1)], [0])
  trie = DocidTrie.build([(2, 3, 1)], [0])
  with pytest.raises(ValueError, match="document index -1"):
    trie.insert((4, 1), -1)
  with pytest.raises(KeyError):
    trie.delete((2, 1))
  with pytest.raises(KeyError):
    trie.delete((2, 3))  # a prefix, not a docid
  assert trie.contains((2, 3, 1)) and not trie.contains((2, 3))


@settings(max_examples=20, deadline=None)
@given(docid_sets, st.lists(docid_sets, min_size=1, max_size=4))
def test_update_device_equals_to_device_after_edits(sequences, rounds):
  trie = _build(sequences)
  arrays = trie.to_device()
  expected = {s: i for i, s in enumerate(sequences)}
  for offset, batch in enumerate(rounds):
    for sequence in batch:
      if sequence in expected:
        assert trie.delete(sequence) == expected.pop(sequence)
      else:
        trie.insert(sequence, offset)
        expected[sequence] = offset
    previous = arrays
    arrays = trie.update_device(arrays, donate=offset % 2 == 0)
    if offset % 2:  # not donated: the previous arrays stay readable
      np.asarray(previous.child_start)
    fresh = trie.to_device()
    assert jax.tree.structure(arrays) == jax.tree.structure(fresh)
    for got, want in zip(jax.tree.leaves(arrays), jax.tree.leaves(fresh)):
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    _check_matches(trie, arrays, expected)


def _random_docids(rng, count, length, vocab):
  """Distinct random docids [<= count, length + 1] (EOS last), int32."""
  tokens = np.unique(rng.integers(2, vocab, (count, length)), axis=0)
  rng.shuffle(tokens)
  eos = np.ones((len(tokens), 1), tokens.dtype)
  return np.concatenate([tokens, eos], axis=1).astype(np.int32)


def _assert_same_arrays(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_update_device_writes_only_the_edited_rows(monkeypatch):
  rng = np.random.default_rng(0)
  docids = _random_docids(rng, 3000, 4, 40)
  trie = DocidTrie.from_padded(
    docids,
    range(len(docids)),
    vocab_size=40,
    capacity=2**14,
    fanout_capacity=64,
  )
  arrays = trie.to_device()
  slots = arrays.child_start.shape[0]
  written = []
  real = trie_lib._set_rows_in_place
  monkeypatch.setattr(
    trie_lib,
    "_set_rows_in_place",
    lambda tree, rows, values: (
      written.append(
        {k: int((v < tree[k].shape[0]).sum()) for k, v in rows.items()}
      )
      or real(tree, rows, values)
    ),
  )
  monkeypatch.setattr(
    DocidTrie, "to_device", lambda self: pytest.fail("re-uploaded")
  )
  for round_ in range(5):
    trie.delete(tuple(docids[round_]))
    for k in range(2):  # a new docid under a new node, then a sibling
      trie.insert((39, 39, round_ + 2, 2 + k * 5, 1), 7)
    assert 0 < trie.pending_rows <= 24
    arrays = trie.update_device(arrays)
    assert trie.pending_rows == 0
  assert len(written) == 5
  assert all(sum(rows.values()) <= 4 * 24 for rows in written)
  monkeypatch.undo()
  assert arrays.child_start.shape[0] == slots
  _assert_same_arrays(arrays, trie.to_device())
  expected = {tuple(d): i for i, d in enumerate(docids.tolist())}
  for round_ in range(5):
    del expected[tuple(docids[round_])]
    for k in range(2):
      expected[(39, 39, round_ + 2, 2 + k * 5, 1)] = 7
  _check_large(trie, arrays, expected)


def _check_large(trie, arrays, expected):
  """Host and device both hold exactly `expected` {sequence: value}."""
  assert dict(trie.items()) == expected
  width = max(len(s) for s in expected)
  padded = np.zeros((len(expected), width), np.int32)
  for row, sequence in enumerate(expected):
    padded[row, : len(sequence)] = sequence
  np.testing.assert_array_equal(
    np.asarray(_lookup(arrays, jnp.asarray(padded))), list(expected.values())
  )


def test_update_device_after_growth_is_a_full_upload_and_never_recompiles():
  trie = DocidTrie(vocab_size=VOCAB, capacity=16, fanout_capacity=2)
  arrays = trie.to_device()
  consumer = jax.jit(lambda a, s: trie_lib.lookup(a, s))  # its own cache
  rng = np.random.default_rng(1)
  expected, compiled = {}, []
  for _ in range(40):
    sequence = tuple(int(t) for t in rng.integers(2, VOCAB, 3)) + (1,)
    if sequence in expected:
      trie.delete(sequence)
      del expected[sequence]
    else:
      trie.insert(sequence, len(expected))
      expected[sequence] = len(expected)
    shapes = [x.shape for x in jax.tree.leaves(arrays)], arrays.level_widths
    arrays = trie.update_device(arrays)
    _assert_same_arrays(arrays, trie.to_device())
    if expected:
      _check_large(trie, arrays, expected)
      consumer(arrays, jnp.zeros((1, 4), jnp.int32))
      grew = shapes != (
        [x.shape for x in jax.tree.leaves(arrays)],
        arrays.level_widths,
      )
      compiled.append((grew, consumer._cache_size()))
  recompiles = sum(1 for (_, a), (_, b) in zip(compiled, compiled[1:]) if b > a)
  assert recompiles == sum(grew for grew, _ in compiled[1:])
  assert recompiles < 8


@pytest.mark.parametrize("vocab, dtype", [(2048, np.int16), (None, np.int32)])
def test_tokens_use_the_smallest_dtype_that_fits(vocab, dtype):
  trie = DocidTrie.build([(2, 3, 1), (2000, 1)], [0, 1], vocab_size=vocab)
  arrays = trie.to_device()
  assert arrays.edge_token.dtype == dtype
  assert arrays.num_children.dtype == dtype
  assert arrays.child_start.dtype == arrays.root_child.dtype == np.int32
  _check_large(trie, arrays, {(2, 3, 1): 0, (2000, 1): 1})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulk_build_equals_insert_build_on_random_tries(seed):
  rng = np.random.default_rng(seed)
  vocab = int(rng.integers(6, 40))
  docids = _random_docids(rng, 800, int(rng.integers(1, 6)), vocab)
  cut = rng.integers(0, docids.shape[1] - 1, len(docids))  # shorter rows too
  rows = [tuple(d[:c]) + (1,) for d, c in zip(docids.tolist(), cut)]
  rows = list(dict.fromkeys(rows))
  values = rng.integers(0, 50, len(rows))
  padded = np.zeros((len(rows), docids.shape[1]), np.int32)
  for row, sequence in enumerate(rows):
    padded[row, : len(sequence)] = sequence
  bulk = DocidTrie.from_padded(padded, values, vocab_size=vocab)
  inserted = DocidTrie.build(rows, values, vocab_size=vocab)
  assert dict(bulk.items()) == dict(inserted.items()) == dict(zip(rows, values))
  assert bulk.num_nodes == inserted.num_nodes
  assert bulk.level_widths == inserted.level_widths
  expected = dict(zip(rows, values.tolist()))
  for trie in (bulk, inserted):
    arrays = trie.to_device()
    _check_large(trie, arrays, expected)
    prefixes = sorted({s[:n] for s in rows for n in range(1, len(s))})
    for depth in range(1, len(arrays.level_widths) + 1):
      at_depth = [p for p in prefixes if len(p) == depth]
      if not at_depth:
        continue
      nodes = jnp.asarray(_walk(arrays, at_depth))
      tokens = np.asarray(trie_lib.children(arrays, nodes, depth)[0])
      assert tokens.shape[1] == arrays.level_width(depth)
      for prefix, row in zip(at_depth, tokens):
        assert set(row[row >= 0]) == _expected_next(rows, prefix)


def _walk(arrays, prefixes):
  nodes = np.zeros(len(prefixes), np.int32)
  for position in range(len(prefixes[0])):
    tokens = jnp.array([p[position] for p in prefixes], jnp.int32)
    nodes = np.asarray(_step(arrays, jnp.asarray(nodes), tokens))
  return nodes


def test_level_widths_follow_the_widest_node_of_each_level():
  wide = [(2, t, 1) for t in range(2, 40)]  # one node with 38 children
  deep = [(3, 4, 5, 6, 1), (3, 4, 5, 7, 1)]
  trie = DocidTrie.build(wide + deep, list(range(40)), vocab_size=64)
  assert trie.level_widths == (64, 1, 2, 1)
  assert trie.to_device().max_children == 64
  trie.delete(deep[1])
  trie.insert((3, 4, 5, 8, 9, 1), 0)  # a new level; widths never shrink
  assert trie.level_widths == (64, 1, 2, 1, 1)


def test_the_token_bound_rises_only_where_the_arrays_hold_it():
  """holds_vocab / set_vocab_size: a rows growth keeps the trie while the
  root table is wide enough and int16 tokens still fit."""
  trie = DocidTrie(vocab_size=300)  # root table 512, int16 tokens
  trie.insert([299, 1], 0)
  shapes = [a.shape for a in jax.tree.leaves(trie.to_device())]
  assert trie.holds_vocab(512) and not trie.holds_vocab(513)
  with pytest.raises(ValueError, match="vocab_size 300"):
    trie.insert([511, 1], 1)
  trie.set_vocab_size(512)
  trie.insert([511, 1], 1)  # a token the old bound refused
  assert [a.shape for a in jax.tree.leaves(trie.to_device())] == shapes
  with pytest.raises(ValueError, match="does not fit"):
    trie.set_vocab_size(513)
  wide = DocidTrie(vocab_size=30_000)  # root 32,768, int16
  assert not wide.holds_vocab(32_768)  # int16 tokens end at 32,767
  big = DocidTrie(vocab_size=40_000)  # int32 tokens, root 65,536
  assert big.holds_vocab(65_536) and not big.holds_vocab(65_537)
  assert DocidTrie().holds_vocab(10**6)  # no bound
