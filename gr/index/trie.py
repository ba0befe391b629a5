"""Docid trie: a host-side editable trie and its on-device array layout.

A docid is a token-id sequence ending in EOS. Every trie node but the root
sits in a slot of the node arrays, and the children of a node sit in one
contiguous block of slots: a node's id is its slot, so no edge arrays are
needed (CSR with the edges and the nodes in one). Taking the EOS edge
reaches a leaf whose `child_start` holds the document index of that docid
(several docids may share one document).

Device side, `TrieArrays` is a pytree of arrays passed INTO jitted functions
as data (never closed over):

  root_child    [T] int32  slot of the root's child by token t, or -1
  child_start   [C] int32  first slot of a node's block of children; the
                           document index for a leaf
  num_children  [C] int16  children of a node (0 for leaves and the root:
                           its children live in `root_child`)
  edge_token    [C] int16  token of the edge into each node (int32 for both
                           when the vocabulary does not fit int16)
  level_widths       static: width W_d of the child slice gathered for the
                     nodes at depth d (`level_widths[d - 1]`, d >= 1)

C (slots), T (root tokens) and every W_d are capacities that only grow
(each doubles), so inserting or deleting docids leaves the shapes and static
fields as they were unless a capacity was exceeded: jitted consumers do not
recompile. Node id -1 is the dead node: it allows nothing and every step
from it stays dead. Slots that no node uses hold stale values; nothing
points to them.

A bulk build (`from_padded`) numbers nodes depth by depth, each block
exactly full and sorted by token. An insert appends to its parent's block,
which moves to a free block twice its size when full; a delete moves the
last sibling into the gap. Either touches O(depth) slots (O(W) when a block
moves, amortised O(1)), and `DocidTrie.update_device` scatters just those
into the arrays on device.

`children` (the sparse continuations, [N, W_d]) and `step` cost O(N * W),
`root_children` O(V) and `allowed_mask` (the dense [N, V] form) O(N * (W +
V)): all independent of how many docids the trie holds.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0
_ARRAY_FIELDS = ("root_child", "child_start", "num_children", "edge_token")
DEAD = -1
_MIN_NODE_CAPACITY = 16
_MAX_TOKEN = 2**31 - 1  # int32: tokens without a vocabulary, document indices
_INT16_TOKENS = 2**15 - 1  # vocabularies up to this size use int16


@flax.struct.dataclass
class TrieArrays:
  """Slot layout of a `DocidTrie` (see module docstring)."""

  root_child: jax.Array  # [T] int32
  child_start: jax.Array  # [C] int32
  num_children: jax.Array  # [C] int16 or int32
  edge_token: jax.Array  # [C] int16 or int32
  level_widths: tuple[int, ...] = flax.struct.field(
    pytree_node=False, default=()
  )
  eos_id: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def max_children(self) -> int:
    """The widest level: the child slice width when depth is unknown."""
    return max(self.level_widths, default=1)

  def level_width(self, depth: int) -> int:
    """Static width W_d for nodes at `depth` >= 1 (deeper: the last level)."""
    if not self.level_widths:
      return 1
    return self.level_widths[min(depth, len(self.level_widths)) - 1]


def _next_power_of_two(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _children_of(arrays: TrieArrays, nodes: jax.Array, width: int):
  """Child slices of `nodes` [N]: (tokens [N, W], children [N, W], valid)."""
  safe = jnp.maximum(nodes, 0)
  slots = arrays.child_start[safe][:, None] + jnp.arange(width)  # [N, W]
  tokens = jnp.take(arrays.edge_token, slots, mode="clip").astype(jnp.int32)
  count = jnp.where(nodes >= 0, arrays.num_children[safe], 0)
  valid = jnp.arange(width)[None, :] < count[:, None]
  return tokens, slots.astype(jnp.int32), valid


def children(arrays: TrieArrays, nodes: jax.Array, depth: Optional[int] = None):
  """Sparse continuations of `nodes` [N] below the root.

  Args:
    arrays: device trie.
    nodes: [N] node ids (-1 = dead).
    depth: static depth (>= 1) of every live node in `nodes`: the slice
      width is that level's W_d; None = the widest level.

  Returns:
    (tokens [N, W], child nodes [N, W]), -1 in both where there is no edge
    (padding, dead nodes, leaves, and the root: its children are the dense
    `root_child` table, see `root_children`).
  """
  width = arrays.max_children if depth is None else arrays.level_width(depth)
  tokens, child_nodes, valid = _children_of(arrays, nodes, width)
  return jnp.where(valid, tokens, DEAD), jnp.where(valid, child_nodes, DEAD)


def root_children(arrays: TrieArrays, vocab_size: int):
  """The root's continuations as dense rows: (tokens [V], child nodes [V]).

  tokens[t] is t where the root has a child by token t, else -1.
  """
  table = _root_row(arrays, vocab_size)
  return jnp.where(table >= 0, jnp.arange(vocab_size), DEAD), table


def _root_row(arrays: TrieArrays, vocab_size: int) -> jax.Array:
  """Root children table cut or padded to [V] (-1 where no child)."""
  table = arrays.root_child[:vocab_size]
  missing = vocab_size - table.shape[0]
  if missing > 0:
    table = jnp.pad(table, (0, missing), constant_values=DEAD)
  return table


def allowed_mask(
  arrays: TrieArrays, nodes: jax.Array, vocab_size: int
) -> jax.Array:
  """Which next tokens each node allows.

  Args:
    arrays: device trie.
    nodes: [N] int node ids (-1 = dead).
    vocab_size: V, static.

  Returns:
    [N, V] bool; all False for dead nodes and leaves.
  """
  tokens, _, valid = _children_of(arrays, nodes, arrays.max_children)
  rows = jnp.broadcast_to(jnp.arange(nodes.shape[0])[:, None], tokens.shape)
  columns = jnp.where(valid, tokens, vocab_size)  # out of range -> dropped
  mask = jnp.zeros((nodes.shape[0], vocab_size), bool)
  mask = mask.at[rows, columns].set(True, mode="drop")
  root_mask = _root_row(arrays, vocab_size) >= 0  # [V]
  return mask | ((nodes == 0)[:, None] & root_mask[None, :])


def step(
  arrays: TrieArrays,
  nodes: jax.Array,
  tokens: jax.Array,
  depth: Optional[int] = None,
) -> jax.Array:
  """Follows edge `tokens` [N] from `nodes` [N]; -1 where there is none.

  depth: static depth of the nodes below the root (as in `children`).
  """
  width = arrays.max_children if depth is None else arrays.level_width(depth)
  child_tokens, slots, valid = _children_of(arrays, nodes, width)
  hit = valid & (child_tokens == tokens[:, None])  # [N, W]
  below_root = jnp.max(jnp.where(hit, slots, DEAD), axis=1)
  in_table = (tokens >= 0) & (tokens < arrays.root_child.shape[0])
  from_root = jnp.where(
    in_table, jnp.take(arrays.root_child, tokens, mode="clip"), DEAD
  )
  return jnp.where(nodes == 0, from_root, below_root)


def lookup(arrays: TrieArrays, sequences: jax.Array) -> jax.Array:
  """Document index of each sequence [N, L] (EOS then PAD), -1 if absent.

  Unrolled over the L positions: position p steps from depth p, with that
  level's width.
  """
  count = sequences.shape[0]
  nodes = jnp.zeros((count,), jnp.int32)
  active = jnp.ones((count,), bool)
  for position, tokens in enumerate(sequences.T):
    moved = step(arrays, nodes, tokens, max(position, 1))
    nodes = jnp.where(active, moved, nodes)
    active &= tokens != arrays.eos_id
  values = arrays.child_start[jnp.maximum(nodes, 0)]  # a leaf's document
  return jnp.where((nodes >= 0) & ~active, values, DEAD)


def _set_rows(arrays, rows, values):
  """arrays[k][rows[k]] = values[k] for each array k (rows past the end are
  dropped)."""
  return jax.tree.map(
    lambda a, r, v: a.at[r].set(v, mode="drop"), arrays, rows, values
  )


_set_rows_in_place = jax.jit(_set_rows, donate_argnums=0)
_set_rows_copied = jax.jit(_set_rows)


def _padded_rows(rows: np.ndarray, out_of_range: int) -> np.ndarray:
  """rows padded to a power of two (one compilation per bucket) by an index
  past the array's end (the scatter drops it)."""
  padded = np.full(_next_power_of_two(max(len(rows), 1)), out_of_range)
  padded[: len(rows)] = rows
  return padded.astype(np.int32)


def _nodes_by_depth(columns: np.ndarray, lengths: np.ndarray):
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


def _sorted_columns(sequences: np.ndarray):
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


class DocidTrie:
  """Editable host trie of docid token sequences (each ending in EOS).

  The host keeps the device layout itself (numpy arrays at the device
  capacities), plus each node's block size, free blocks by size, and the
  slots edited since the last upload.
  """

  def __init__(
    self,
    *,
    eos_id: int = 1,
    capacity: Optional[int] = None,
    vocab_size: Optional[int] = None,
    fanout_capacity: Optional[int] = None,
    level_capacity: Sequence[int] = (),
  ):
    """Empty trie; capacities are the starting device capacities.

    Args:
      eos_id: the token that ends every docid.
      capacity: node slots C (rounded up to a power of two).
      vocab_size: tokens must be below it; it sizes the root table and
        picks int16 tokens when it fits.
      fanout_capacity: the least width of every level.
      level_capacity: the least width of each level (depth 1, 2, ...), e.g.
        another trie's `level_widths`, so that both share compiled shapes.
    """
    self.eos_id = int(eos_id)
    self.vocab_size = vocab_size
    small = vocab_size is not None and vocab_size <= _INT16_TOKENS
    self._token_dtype = np.int16 if small else np.int32
    self._min_width = _next_power_of_two(max(fanout_capacity or 0, 1))
    self._level_widths: list[int] = []
    self.reserve_level_widths(level_capacity)
    slots = _next_power_of_two(max(capacity or 0, _MIN_NODE_CAPACITY))
    self._root_child = np.full(
      _next_power_of_two(max(vocab_size or 0, 2)), DEAD, np.int32
    )
    self._child_start = np.zeros(slots, np.int32)
    self._num_children = np.zeros(slots, self._token_dtype)
    self._edge_token = np.full(slots, DEAD, self._token_dtype)
    self._block = np.zeros(slots, np.int32)  # host only: block sizes
    self._free: dict[int, list[int]] = {}  # power-of-two size -> starts
    self._top = 1  # slots from here on were never used; slot 0 is the root
    self._live = 1
    self._size = 0
    self._edited: set[int] = set()  # slots edited since the last upload
    self._edited_roots: set[int] = set()  # root tokens edited since then

  @classmethod
  def build(
    cls,
    sequences: Sequence[Sequence[int]],
    values: Sequence[int],
    **options,
  ) -> "DocidTrie":
    """Trie of `sequences[i]` -> document index `values[i]`, by inserts.

    `options` are the constructor's.

    Raises:
      ValueError: lengths differ, or sequence i is malformed or a duplicate
        (the message names i).
    """
    if len(sequences) != len(values):
      raise ValueError(
        f"DocidTrie.build: {len(sequences)} sequences but {len(values)} values"
      )
    trie = cls(**options)
    for index, (sequence, value) in enumerate(zip(sequences, values)):
      try:
        trie.insert(sequence, value)
      except ValueError as error:
        raise ValueError(
          f"DocidTrie.build: sequence {index}: {error}"
        ) from None
    return trie

  @classmethod
  def from_padded(
    cls, sequences: np.ndarray, values: Sequence[int], **options
  ) -> "DocidTrie":
    """Bulk `build` from sequences [n, L] (EOS then PAD), vectorised.

    Same docids, values and capacities as `build` on the unpadded rows,
    in numpy instead of one Python insert per docid; nodes are numbered
    depth by depth and every block is exactly full. `options` are the
    constructor's.

    Raises:
      ValueError: shapes differ, or row i is malformed or a duplicate (the
        message names i).
    """
    sequences = np.asarray(sequences)
    values = np.asarray(values, np.int64).reshape(-1)
    if sequences.ndim != 2 or len(sequences) != len(values):
      raise ValueError(
        f"DocidTrie.from_padded: sequences {sequences.shape} "
        f"need shape [n, L] for {len(values)} values"
      )
    trie = cls(**options)
    sequences = sequences.astype(np.int64)
    lengths = trie._checked_rows(sequences, values)
    order, columns = _sorted_columns(sequences)
    levels, repeated = _nodes_by_depth(columns, lengths[order])
    if repeated.any():
      row = int(order[np.argmax(repeated)])
      raise ValueError(
        f"DocidTrie.from_padded: sequence {row}: docid "
        f"{sequences[row, : lengths[row]].tolist()} is already in the trie"
      )
    trie._adopt(levels, values[order])
    return trie

  def _checked_rows(
    self, sequences: np.ndarray, values: np.ndarray
  ) -> np.ndarray:
    """Lengths [n] (EOS included) of valid rows, or ValueError naming one."""
    is_eos = sequences == self.eos_id
    lengths = np.argmax(is_eos, axis=1) + 1
    column = np.arange(sequences.shape[1])[None, :]
    before = column < lengths[:, None] - 1
    bad = ~is_eos.any(axis=1) | (values < 0) | (values > _MAX_TOKEN)
    bad |= np.any(
      before
      & (
        (sequences <= PAD_ID) | (sequences >= (self.vocab_size or _MAX_TOKEN))
      ),
      axis=1,
    )
    bad |= np.any((column >= lengths[:, None]) & (sequences != PAD_ID), axis=1)
    if bad.any():
      row = int(np.argmax(bad))
      raise ValueError(
        f"DocidTrie.from_padded: sequence {row} {sequences[row].tolist()} "
        f"(document {values[row]}): needs tokens in [{PAD_ID + 1}, "
        f"{self.vocab_size or _MAX_TOKEN}) then EOS ({self.eos_id}) then "
        "PAD only, and a document index in [0, 2**31)"
      )
    return lengths

  def _adopt(self, levels, values: np.ndarray) -> None:
    """Takes over an empty trie: `_nodes_by_depth` levels, row values [n].

    Each node's children are consecutive ids: one exactly full block.
    """
    first_id = 1
    self._reserve(1 + sum(len(tokens) for tokens, _, _ in levels))
    for depth, (tokens, parents, rows) in enumerate(levels):
      ids = np.arange(first_id, first_id + len(tokens))
      self._edge_token[ids] = tokens
      if depth == 0:
        self._fit_root(int(tokens.max(initial=0)))
        self._root_child[tokens] = ids
      elif len(ids):
        first = np.flatnonzero(np.diff(parents, prepend=-1) != 0)
        owners, counts = parents[first], np.diff(first, append=len(parents))
        self._child_start[owners] = ids[first]
        self._num_children[owners] = counts
        self._block[owners] = counts
        self._fit_level(depth, int(counts.max()))
      leaves = tokens == self.eos_id
      self._child_start[ids[leaves]] = values[rows[leaves]]
      first_id += len(ids)
    self._top = self._live = first_id
    self._size = len(values)
    self._edited.clear()
    self._edited_roots.clear()

  def __len__(self) -> int:
    return self._size

  @property
  def num_nodes(self) -> int:
    """Live nodes, root included."""
    return self._live

  @property
  def level_widths(self) -> tuple[int, ...]:
    """Device width W_d of each level d = 1, 2, ... (capacities)."""
    return tuple(self._level_widths)

  def reserve_level_widths(self, widths: Sequence[int]) -> None:
    """Grows level d's width to hold widths[d - 1] (never shrinks), so that
    online inserts up to it keep the device shapes. Call before uploading."""
    for depth, width in enumerate(widths, start=1):
      self._fit_level(depth, int(width))

  # Validation and walking.

  def _checked(self, sequence: Sequence[int]) -> tuple[int, ...]:
    """`sequence` as a tuple of ints, or ValueError saying what is wrong."""
    tokens = tuple(int(t) for t in sequence)
    if not tokens or tokens[-1] != self.eos_id:
      raise ValueError(
        f"docid {list(tokens)} does not end in EOS ({self.eos_id})"
      )
    for position, token in enumerate(tokens[:-1]):
      if token in (self.eos_id, PAD_ID) or token < 0:
        raise ValueError(
          f"docid {list(tokens)} has token {token} at position "
          f"{position}: EOS, PAD and negative ids may not "
          "appear before the final EOS"
        )
      if token >= (self.vocab_size or _MAX_TOKEN):
        raise ValueError(
          f"docid {list(tokens)} has token {token} >= "
          f"vocab_size {self.vocab_size or _MAX_TOKEN}"
        )
    return tokens

  def _child(self, node: int, token: int) -> Optional[int]:
    """Slot of `node`'s child by `token`, or None."""
    if node == 0:
      if not 0 <= token < len(self._root_child):
        return None
      child = int(self._root_child[token])
      return child if child >= 0 else None
    start, count = self._slice(node)
    hits = np.flatnonzero(self._edge_token[start : start + count] == token)
    return start + int(hits[0]) if len(hits) else None

  def _slice(self, node: int) -> tuple[int, int]:
    """(first slot, count) of `node`'s children."""
    return int(self._child_start[node]), int(self._num_children[node])

  def _path(self, tokens: Sequence[int]) -> Optional[list[int]]:
    """Nodes visited by `tokens` from the root (root first), or None."""
    path = [0]
    for token in tokens:
      child = self._child(path[-1], token)
      if child is None:
        return None
      path.append(child)
    return path

  def contains(self, sequence: Sequence[int]) -> bool:
    """Whether `sequence` (ending in EOS) is a docid in the trie."""
    tokens = tuple(int(t) for t in sequence)
    return (
      bool(tokens)
      and tokens[-1] == self.eos_id
      and self._path(tokens) is not None
    )

  def get(self, sequence: Sequence[int]) -> Optional[int]:
    """Document index of `sequence`, or None if absent."""
    if not self.contains(sequence):
      return None
    return int(self._child_start[self._path([int(t) for t in sequence])[-1]])

  def items(self) -> Iterator[tuple[tuple[int, ...], int]]:
    """All (sequence, document index) pairs, depth first by token."""
    roots = np.flatnonzero(self._root_child >= 0)[::-1]
    stack = [(int(self._root_child[t]), (int(t),)) for t in roots]
    while stack:
      node, prefix = stack.pop()
      if prefix[-1] == self.eos_id:
        yield prefix, int(self._child_start[node])
        continue
      start, count = self._slice(node)
      for slot in range(start + count - 1, start - 1, -1):
        stack.append((slot, prefix + (int(self._edge_token[slot]),)))

  # Editing.

  def insert(self, sequence: Sequence[int], value: int) -> None:
    """Adds docid `sequence` (ending in EOS) mapping to document `value`."""
    tokens = self._checked(sequence)
    if not 0 <= int(value) <= _MAX_TOKEN:
      raise ValueError(
        f"docid {list(tokens)}: document index {value} not in [0, 2**31)"
      )
    if self._path(tokens) is not None:
      raise ValueError(f"docid {list(tokens)} is already in the trie")
    node = 0
    for depth, token in enumerate(tokens):
      child = self._child(node, token)
      node = self._add_child(node, depth, token) if child is None else child
    self._child_start[node] = int(value)
    self._size += 1

  def delete(self, sequence: Sequence[int]) -> int:
    """Removes docid `sequence`, pruning unused nodes; returns its value.

    Raises:
      KeyError: `sequence` is not in the trie.
    """
    tokens = tuple(int(t) for t in sequence)
    path = self._path(tokens)
    if path is None or not tokens or tokens[-1] != self.eos_id:
      raise KeyError(f"docid {list(tokens)} is not in the trie")
    value = int(self._child_start[path[-1]])
    for depth in range(len(tokens), 0, -1):
      node = path[depth]
      if self._num_children[node] > 0:
        break
      self._remove_child(path[depth - 1], node, tokens[depth - 1])
    self._size -= 1
    return value

  def _add_child(self, parent: int, depth: int, token: int) -> int:
    """A new empty node under `parent` (at `depth`) by `token`: its slot."""
    if parent == 0:
      slot = self._allocate(1)
      self._fit_root(token)
      self._root_child[token] = slot
      self._edited_roots.add(token)
    else:
      start, count = self._slice(parent)
      if count == self._block[parent]:  # full: move to a block twice as big
        size = _next_power_of_two(count + 1)
        moved = self._allocate(size)
        self._move(start, moved, count)
        self._release(start, count)
        self._child_start[parent], self._block[parent] = moved, size
        start = moved
      slot = start + count  # appended: blocks stay sorted only from a build
      self._num_children[parent] = count + 1
      self._edited.add(parent)
      self._fit_level(depth, count + 1)
    self._child_start[slot] = self._num_children[slot] = self._block[slot] = 0
    self._edge_token[slot] = token
    self._edited.add(slot)
    self._live += 1
    return slot

  def _remove_child(self, parent: int, node: int, token: int) -> None:
    """Detaches childless `node` from `parent`; its slot is freed."""
    if self._block[node] > 0:
      self._release(int(self._child_start[node]), int(self._block[node]))
    self._live -= 1
    if parent == 0:
      self._root_child[token] = DEAD
      self._edited_roots.add(token)
      self._release(node, 1)
      return
    start, count = self._slice(parent)
    self._move(start + count - 1, node, 1)  # the last sibling fills the gap
    self._num_children[parent] = count - 1
    self._edited.add(parent)

  def _move(self, source: int, target: int, count: int) -> None:
    """Copies `count` slots (whole nodes) from `source` to `target`."""
    if count <= 0 or source == target:
      return
    for array in (
      self._child_start,
      self._num_children,
      self._edge_token,
      self._block,
    ):
      array[target : target + count] = array[source : source + count]
    self._edited.update(range(target, target + count))

  def _allocate(self, size: int) -> int:
    """First slot of a free block of `size` (a power of two) slots."""
    free = self._free.get(size)
    if free:
      return free.pop()
    start = self._top
    self._top += size
    self._reserve(self._top)
    return start

  def _release(self, start: int, size: int) -> None:
    """Frees `size` slots from `start`, as power-of-two blocks.

    Freed slots keep their stale contents: nothing points to them.
    """
    while size:
      piece = 1 << (size.bit_length() - 1)
      self._free.setdefault(piece, []).append(start)
      start, size = start + piece, size - piece

  def _reserve(self, slots: int) -> None:
    """Doubles the slot arrays until they hold `slots` (a new capacity)."""
    size = len(self._edge_token)
    if slots <= size:
      return
    size = _next_power_of_two(slots)

    def grown(array, fill):
      out = np.full(size, fill, array.dtype)
      out[: len(array)] = array
      return out

    self._child_start = grown(self._child_start, 0)
    self._num_children = grown(self._num_children, 0)
    self._edge_token = grown(self._edge_token, DEAD)
    self._block = grown(self._block, 0)

  def _fit_root(self, token: int) -> None:
    """Doubles the root table until it holds `token`."""
    size = len(self._root_child)
    if token >= size:
      table = np.full(_next_power_of_two(token + 1), DEAD, np.int32)
      table[:size] = self._root_child
      self._root_child = table

  def _fit_level(self, depth: int, width: int) -> None:
    """Grows level `depth`'s capacity (doubling) until it holds `width`."""
    while len(self._level_widths) < depth:
      self._level_widths.append(self._min_width)
    while self._level_widths[depth - 1] < width:
      self._level_widths[depth - 1] *= 2

  # Device layout.

  def _host_arrays(self) -> dict[str, np.ndarray]:
    """The host copy of the device layout (not copied)."""
    return dict(
      root_child=self._root_child,
      child_start=self._child_start,
      num_children=self._num_children,
      edge_token=self._edge_token,
    )

  def to_numpy(self) -> dict[str, np.ndarray]:
    """The device arrays as numpy copies (keys = TrieArrays array fields)."""
    return {k: v.copy() for k, v in self._host_arrays().items()}

  def _arrays(self, **arrays) -> TrieArrays:
    return TrieArrays(
      **arrays, level_widths=self.level_widths, eos_id=self.eos_id
    )

  def to_device(self) -> TrieArrays:
    """Device arrays; same shapes as last time unless a capacity grew."""
    self._edited.clear()
    self._edited_roots.clear()
    return self._arrays(
      **{k: jnp.array(v, copy=True) for k, v in self._host_arrays().items()}
    )

  def update_device(
    self, arrays: TrieArrays, *, donate: bool = True
  ) -> TrieArrays:
    """`to_device()` now, by writing the edits into `arrays` on device.

    `arrays` must be the result of the last `to_device` or `update_device`.
    Only the slots (and root entries) edited since then are scattered,
    O(edits), so the shapes and static fields stay as they were and jitted
    consumers do not recompile; when a capacity grew, this is `to_device()`.

    Args:
      arrays: the trie's last device arrays.
      donate: reuse their buffers (then `arrays` is invalid afterwards; pass
        False while other computations may still read it).
    """
    if (
      arrays.level_widths != self.level_widths
      or arrays.eos_id != self.eos_id
      or arrays.root_child.shape != self._root_child.shape
      or arrays.child_start.shape != self._child_start.shape
    ):
      return self.to_device()
    roots = np.fromiter(sorted(self._edited_roots), np.int64)
    slots = np.fromiter(sorted(self._edited), np.int64)
    self._edited.clear()
    self._edited_roots.clear()
    if not len(roots) and not len(slots):
      return arrays
    tree = {k: getattr(arrays, k) for k in _ARRAY_FIELDS}
    host = self._host_arrays()
    rows, values = {}, {}
    for name in _ARRAY_FIELDS:
      edited = roots if name == "root_child" else slots
      rows[name] = _padded_rows(edited, host[name].shape[0])
      values[name] = np.zeros(len(rows[name]), host[name].dtype)
      values[name][: len(edited)] = host[name][edited]
    setter = _set_rows_in_place if donate else _set_rows_copied
    return self._arrays(**setter(tree, rows, values))

  @property
  def pending_rows(self) -> int:
    """Rows the next `update_device` writes (edited slots and root entries)."""
    return len(self._edited) + len(self._edited_roots)

  def memory_bytes(self) -> int:
    """Bytes of the device layout at the current capacities."""
    return sum(a.nbytes for a in self._host_arrays().values())
