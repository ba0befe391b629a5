"""Bulk build of a docid trie in numpy: sorted rows to nodes, depth by depth.

`DocidTrie.from_padded` (gr/index/docid_trie.py) checks padded docid rows
(`checked_lengths`), sorts them (`sorted_columns`) and numbers their trie
nodes depth by depth (`nodes_by_depth`): each node's children get
consecutive ids in token order, so every block of children is exactly full.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from gr.index import trie as trie_lib


def nodes_by_depth(columns: np.ndarray, lengths: np.ndarray):
  """The trie nodes of sorted rows, depth by depth.

  Rows sharing a prefix share its node (sorted, they are adjacent). Nodes
  get ids 1, 2, ... depth by depth, in row order, so the children of a node
  get consecutive ids, in token order.

  Args:
    columns: [L, n] the sorted rows (EOS then PAD), one column per depth.
    lengths: [n] tokens of each row, EOS included.

  Returns:
    (levels, repeated): levels[d] = (tokens, parents, rows), each [k_d], of
    the k_d nodes at depth d + 1 in id order (their parents ascend; rows:
    the first row through each node); repeated [n], True where a row equals
    the previous one.
  """
  count = columns.shape[1]
  changed = np.zeros(count, bool)  # prefix so far differs from previous row
  changed[:1] = True
  node = np.zeros(count, np.int32)  # each row's node one depth up
  next_id, levels = 1, []
  for depth, column in enumerate(columns):
    changed[1:] |= column[1:] != column[:-1]
    starts = changed & (lengths > depth)
    rows = np.flatnonzero(starts)
    levels.append((column[rows], node[rows], rows))
    node = next_id - 1 + np.cumsum(starts, dtype=np.int32)  # the last start
    next_id += len(rows)
  return levels, ~changed


def sorted_columns(sequences: np.ndarray):
  """Sorts rows [n, L] of tokens >= 0 lexicographically.

  As many leading columns as fit go into one int64 key, so the sort has few
  keys, and the sorted columns are unpacked from the sorted keys.

  Returns:
    (order [n], the sorted rows' columns [L, n] int32).
  """
  bits = max(int(sequences.max(initial=0)), 1).bit_length()
  per_key = max(1, 63 // bits)
  groups = [
    sequences[:, start : start + per_key]
    for start in range(0, sequences.shape[1], per_key)
  ]
  keys = []
  for group in groups:
    key = np.zeros(len(sequences), np.int64)
    for column in group.T:
      key = (key << bits) | column
    keys.append(key)
  order = np.lexsort(keys[::-1])
  columns = []
  for key, group in zip(keys, groups):
    key = key[order]
    for shift in range(group.shape[1] - 1, -1, -1):
      columns.append(((key >> (bits * shift)) & ((1 << bits) - 1)))
  return order, np.stack(columns).astype(np.int32)


def checked_lengths(
  sequences: np.ndarray,
  values: np.ndarray,
  *,
  eos_id: int,
  vocab_size: Optional[int],
) -> np.ndarray:
  """Lengths [n] (EOS included) of valid rows [n, L], or ValueError naming
  the first invalid one."""
  pad, top = trie_lib.PAD_ID, vocab_size or trie_lib.MAX_TOKEN
  is_eos = sequences == eos_id
  lengths = np.argmax(is_eos, axis=1) + 1
  column = np.arange(sequences.shape[1])[None, :]
  before = column < lengths[:, None] - 1
  bad = ~is_eos.any(axis=1) | (values < 0) | (values > trie_lib.MAX_TOKEN)
  bad |= np.any(before & ((sequences <= pad) | (sequences >= top)), axis=1)
  bad |= np.any((column >= lengths[:, None]) & (sequences != pad), axis=1)
  if bad.any():
    row = int(np.argmax(bad))
    raise ValueError(
      f"DocidTrie.from_padded: sequence {row} {sequences[row].tolist()} "
      f"(document {values[row]}): needs tokens in [{pad + 1}, "
      f"{top}) then EOS ({eos_id}) then "
      "PAD only, and a document index in [0, 2**31)"
    )
  return lengths
