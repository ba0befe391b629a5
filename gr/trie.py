"""Docid trie: a host-side editable trie and its on-device array layout.

Host side, `DocidTrie` holds the docids (token-id sequences ending in EOS) as
a tree of nodes: node 0 is the root, every other node has one incoming edge
(parent, token). Taking the EOS edge reaches a leaf node whose `value` is the
document index of that docid; several docids may share one document.

Device side, `TrieArrays` is a pytree of int32 arrays passed INTO jitted
functions as data (never closed over):

  root_child    [T]  child of the root reached by token t, or -1 (dense table)
  child_start   [C]  offset of a node's first child edge in the edge arrays
  num_children  [C]  number of child edges of a node (0 for the root: its
                     children live in `root_child`)
  edge_token    [C]  edge tokens, grouped by parent and sorted by token
  edge_child    [C]  node id each edge leads to
  leaf_value    [C]  document index of a leaf (reached by EOS), else -1
  max_children       static: width W of the child slice gathered per node

C (nodes), T (root tokens) and W (fan-out below the root) are capacities that
only ever double, so inserting or deleting docids and calling `to_device()`
again gives arrays of the same shapes unless a capacity was exceeded: jitted
consumers do not recompile. Node id -1 is the dead node: it allows nothing
and every step from it stays dead.

`children` (the sparse continuations, [N, W]) and `step` cost O(N * W) for N
nodes, `root_children` O(V) and `allowed_mask` (the dense [N, V] form) O(N *
(W + V)): all independent of how many docids the trie holds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0
DEAD = -1
_MIN_NODE_CAPACITY = 16
_MAX_TOKEN = 2**31 - 1  # tokens are int32 on device
_TOKEN_SPAN = 2**31  # host edge keys: parent * _TOKEN_SPAN + token


@flax.struct.dataclass
class TrieArrays:
  """Capacity-padded CSR layout of a `DocidTrie` (see module docstring)."""

  root_child: jax.Array  # [T] int32
  child_start: jax.Array  # [C] int32
  num_children: jax.Array  # [C] int32
  edge_token: jax.Array  # [C] int32
  edge_child: jax.Array  # [C] int32
  leaf_value: jax.Array  # [C] int32
  max_children: int = flax.struct.field(pytree_node=False, default=1)
  eos_id: int = flax.struct.field(pytree_node=False, default=1)


def _edge_key(parent, token):
  """One int per edge (ints or int64 arrays): a cheaper dict key than a pair."""
  return parent * _TOKEN_SPAN + token


@functools.partial(jax.jit, donate_argnums=0)
def _set_rows_donated(array, rows, values):
  return array.at[rows].set(values, mode="drop")


@jax.jit
def _set_rows(array, rows, values):
  return array.at[rows].set(values, mode="drop")


def _scatter_rows(
  array: jax.Array, rows: np.ndarray, values: np.ndarray, donate: bool
) -> jax.Array:
  """array[rows] = values on device; rows padded to a power of two (one
  compilation per bucket), the padding out of range (dropped)."""
  if len(rows) == 0:
    return array
  bucket = _next_power_of_two(len(rows))
  padded_rows = np.full(bucket, array.shape[0], np.int32)
  padded_rows[: len(rows)] = rows
  padded_values = np.zeros(bucket, values.dtype)
  padded_values[: len(rows)] = values
  setter = _set_rows_donated if donate else _set_rows
  return setter(array, padded_rows, padded_values)


def _next_power_of_two(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _children_of(arrays: TrieArrays, nodes: jax.Array):
  """Child slices of `nodes` [N]: (tokens [N, W], children [N, W], valid)."""
  width = arrays.max_children
  safe = jnp.maximum(nodes, 0)
  offsets = arrays.child_start[safe][:, None] + jnp.arange(width)  # [N, W]
  tokens = jnp.take(arrays.edge_token, offsets, mode="clip")
  children = jnp.take(arrays.edge_child, offsets, mode="clip")
  count = jnp.where(nodes >= 0, arrays.num_children[safe], 0)
  valid = jnp.arange(width)[None, :] < count[:, None]
  return tokens, children, valid


def children(arrays: TrieArrays, nodes: jax.Array):
  """Sparse continuations of `nodes` [N] below the root.

  Returns:
    (tokens [N, W], child nodes [N, W]), -1 in both where there is no edge
    (padding, dead nodes, leaves, and the root: its children are the dense
    `root_child` table, see `root_children`).
  """
  tokens, child_nodes, valid = _children_of(arrays, nodes)
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
  tokens, _, valid = _children_of(arrays, nodes)
  rows = jnp.broadcast_to(jnp.arange(nodes.shape[0])[:, None], tokens.shape)
  columns = jnp.where(valid, tokens, vocab_size)  # out of range -> dropped
  mask = jnp.zeros((nodes.shape[0], vocab_size), bool)
  mask = mask.at[rows, columns].set(True, mode="drop")
  root_mask = _root_row(arrays, vocab_size) >= 0  # [V]
  return mask | ((nodes == 0)[:, None] & root_mask[None, :])


def step(arrays: TrieArrays, nodes: jax.Array, tokens: jax.Array) -> jax.Array:
  """Follows edge `tokens` [N] from `nodes` [N]; -1 where there is none."""
  child_tokens, children, valid = _children_of(arrays, nodes)
  hit = valid & (child_tokens == tokens[:, None])  # [N, W]
  below_root = jnp.max(jnp.where(hit, children, DEAD), axis=1)
  in_table = (tokens >= 0) & (tokens < arrays.root_child.shape[0])
  from_root = jnp.where(
    in_table, jnp.take(arrays.root_child, tokens, mode="clip"), DEAD
  )
  return jnp.where(nodes == 0, from_root, below_root)


def lookup(arrays: TrieArrays, sequences: jax.Array) -> jax.Array:
  """Document index of each sequence [N, L] (EOS then PAD), -1 if absent."""

  def walk(carry, tokens):
    nodes, active = carry
    nodes = jnp.where(active, step(arrays, nodes, tokens), nodes)
    return (nodes, active & (tokens != arrays.eos_id)), None

  count = sequences.shape[0]
  start = (jnp.zeros((count,), jnp.int32), jnp.ones((count,), bool))
  (nodes, active), _ = jax.lax.scan(walk, start, sequences.T)
  values = arrays.leaf_value[jnp.maximum(nodes, 0)]
  return jnp.where((nodes >= 0) & ~active, values, DEAD)


def _prefix_node_ids(sequences: np.ndarray, lengths: np.ndarray):
  """Node ids of the prefixes of sorted rows [n, L] (EOS then PAD).

  Rows sharing a prefix share its node (in sorted rows they are adjacent);
  ids are 1, 2, ... depth by depth.

  Returns:
    (nodes [n, L], -1 past a row's end; repeated [n], True where a row
    equals the previous one).
  """
  count, width = sequences.shape
  nodes = np.full((count, width), DEAD, np.int64)
  changed = np.zeros(count, bool)  # prefix so far differs from previous row
  changed[:1] = True
  next_id = 1
  for depth in range(width):
    changed[1:] |= sequences[1:, depth] != sequences[:-1, depth]
    present = lengths > depth
    starts = changed & present
    ids = next_id + np.cumsum(starts) - 1  # [n] id of each row's node
    nodes[present, depth] = ids[present]
    next_id += int(starts.sum())
  return nodes, ~changed


@dataclasses.dataclass
class _Capacity:
  """Device capacities; each only doubles."""

  nodes: int
  root_tokens: int
  fanout: int


class DocidTrie:
  """Editable host trie of docid token sequences (each ending in EOS).

  Host storage per node: parent, incoming token, value, child count (numpy,
  capacity-doubling) plus one dict entry per edge for lookups. Deleted docids
  prune their now-unused nodes; pruned ids are recycled for later inserts.
  """

  def __init__(
    self,
    *,
    eos_id: int = 1,
    capacity: Optional[int] = None,
    vocab_size: Optional[int] = None,
    fanout_capacity: Optional[int] = None,
  ):
    """Empty trie; capacities are the starting device capacities."""
    self.eos_id = int(eos_id)
    self.vocab_size = vocab_size
    nodes = _next_power_of_two(max(capacity or 0, _MIN_NODE_CAPACITY))
    self._capacity = _Capacity(
      nodes=nodes,
      root_tokens=_next_power_of_two(max(vocab_size or 0, 2)),
      fanout=_next_power_of_two(max(fanout_capacity or 0, 1)),
    )
    self._parent = np.full(nodes, DEAD, np.int64)
    self._token = np.full(nodes, DEAD, np.int64)
    self._value = np.full(nodes, DEAD, np.int64)
    self._num_children = np.zeros(nodes, np.int64)
    self._edges: dict[int, int] = {}  # _edge_key(parent, token) -> child
    self._free: list[int] = []
    self._next_node = 1  # node 0 is the root
    self._size = 0

  @classmethod
  def build(
    cls,
    sequences: Sequence[Sequence[int]],
    values: Sequence[int],
    *,
    eos_id: int = 1,
    capacity: Optional[int] = None,
    vocab_size: Optional[int] = None,
    fanout_capacity: Optional[int] = None,
  ) -> "DocidTrie":
    """Trie of `sequences[i]` -> document index `values[i]`.

    Raises:
      ValueError: lengths differ, or sequence i is malformed or a duplicate
        (the message names i).
    """
    if len(sequences) != len(values):
      raise ValueError(
        f"DocidTrie.build: {len(sequences)} sequences but {len(values)} values"
      )
    trie = cls(
      eos_id=eos_id,
      capacity=capacity,
      vocab_size=vocab_size,
      fanout_capacity=fanout_capacity,
    )
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
    cls,
    sequences: np.ndarray,
    values: Sequence[int],
    *,
    eos_id: int = 1,
    capacity: Optional[int] = None,
    vocab_size: Optional[int] = None,
    fanout_capacity: Optional[int] = None,
  ) -> "DocidTrie":
    """Bulk `build` from sequences [n, L] (EOS then PAD), vectorised.

    Same trie (and the same editable host state) as `build` on the unpadded
    rows, in numpy instead of one Python insert per docid; node ids are
    numbered depth by depth.

    Raises:
      ValueError: shapes differ, or row i is malformed or a duplicate (the
        message names i).
    """
    sequences = np.asarray(sequences, np.int64)
    values = np.asarray(values, np.int64).reshape(-1)
    if sequences.ndim != 2 or len(sequences) != len(values):
      raise ValueError(
        f"DocidTrie.from_padded: sequences {sequences.shape} "
        f"need shape [n, L] for {len(values)} values"
      )
    trie = cls(
      eos_id=eos_id,
      capacity=capacity,
      vocab_size=vocab_size,
      fanout_capacity=fanout_capacity,
    )
    lengths = trie._checked_rows(sequences, values)
    order = np.lexsort(sequences.T[::-1])  # rows sorted lexicographically
    nodes, repeated = _prefix_node_ids(sequences[order], lengths[order])
    if repeated.any():
      row = int(order[np.argmax(repeated)])
      raise ValueError(
        f"DocidTrie.from_padded: sequence {row}: docid "
        f"{sequences[row, : lengths[row]].tolist()} is already "
        "in the trie"
      )
    trie._adopt(sequences[order], nodes, values[order])
    return trie

  def _checked_rows(
    self, sequences: np.ndarray, values: np.ndarray
  ) -> np.ndarray:
    """Lengths [n] (EOS included) of valid rows, or ValueError naming one."""
    is_eos = sequences == self.eos_id
    lengths = np.argmax(is_eos, axis=1) + 1
    column = np.arange(sequences.shape[1])[None, :]
    before = column < lengths[:, None] - 1
    bad = ~is_eos.any(axis=1) | (values < 0)
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
        "PAD only, and a document index >= 0"
      )
    return lengths

  def _adopt(
    self, sequences: np.ndarray, nodes: np.ndarray, values: np.ndarray
  ) -> None:
    """Takes over an empty trie: node ids [n, L] (-1 = none) of sorted rows."""
    used = int(nodes.max(initial=0)) + 1
    if len(self._parent) < used:
      self._grow_host(_next_power_of_two(used))
    parents = np.concatenate([np.zeros_like(nodes[:, :1]), nodes[:, :-1]], 1)
    new = nodes >= 0
    new[1:] &= nodes[1:] != nodes[:-1]  # first row of each node only
    child, parent, token = nodes[new], parents[new], sequences[new]
    self._parent[child], self._token[child] = parent, token
    self._num_children[:used] = np.bincount(parent, minlength=used)
    leaves = token == self.eos_id
    self._value[child[leaves]] = values[np.nonzero(new)[0][leaves]]
    self._edges = dict(zip(_edge_key(parent, token).tolist(), child.tolist()))
    self._next_node, self._size = used, len(sequences)

  def __len__(self) -> int:
    return self._size

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

  def _path(self, tokens: tuple[int, ...]) -> Optional[list[int]]:
    """Nodes visited by `tokens` from the root (root first), or None."""
    path = [0]
    for token in tokens:
      child = self._edges.get(_edge_key(path[-1], token))
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
    return int(self._value[self._path(tuple(int(t) for t in sequence))[-1]])

  def items(self) -> Iterator[tuple[tuple[int, ...], int]]:
    """All (sequence, document index) pairs, depth first by token."""
    children: dict[int, list[tuple[int, int]]] = {}
    for key, child in self._edges.items():
      parent, token = divmod(key, _TOKEN_SPAN)
      children.setdefault(parent, []).append((token, child))
    stack = [(0, ())]
    while stack:
      node, prefix = stack.pop()
      if prefix and prefix[-1] == self.eos_id:
        yield prefix, int(self._value[node])
        continue
      for token, child in sorted(children.get(node, []), reverse=True):
        stack.append((child, prefix + (token,)))

  # Editing.

  def insert(self, sequence: Sequence[int], value: int) -> None:
    """Adds docid `sequence` (ending in EOS) mapping to document `value`."""
    tokens = self._checked(sequence)
    if int(value) < 0:
      raise ValueError(f"docid {list(tokens)}: document index {value} < 0")
    if self._path(tokens) is not None:
      raise ValueError(f"docid {list(tokens)} is already in the trie")
    node = 0
    for token in tokens:
      child = self._edges.get(_edge_key(node, token))
      if child is None:
        child = self._new_node(node, token)
      node = child
    self._value[node] = int(value)
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
    value = int(self._value[path[-1]])
    for node in reversed(path[1:]):
      if self._num_children[node] > 0:
        break
      self._free_node(node)
    self._size -= 1
    return value

  def _new_node(self, parent: int, token: int) -> int:
    """Allocates a node (recycled id first) under `parent` via `token`."""
    if self._free:
      node = self._free.pop()
    else:
      node = self._next_node
      self._next_node += 1
      if node >= len(self._parent):
        self._grow_host(2 * len(self._parent))
    self._parent[node], self._token[node] = parent, token
    self._edges[_edge_key(parent, token)] = node
    self._num_children[parent] += 1
    return node

  def _free_node(self, node: int) -> None:
    """Detaches `node` from its parent; it is unreachable from now on."""
    parent = int(self._parent[node])
    del self._edges[_edge_key(parent, int(self._token[node]))]
    self._num_children[parent] -= 1
    self._parent[node] = self._token[node] = self._value[node] = DEAD
    self._free.append(node)

  def _grow_host(self, size: int) -> None:
    """Doubles the host node arrays to `size`."""

    def grown(array, fill):
      out = np.full(size, fill, array.dtype)
      out[: len(array)] = array
      return out

    self._parent = grown(self._parent, DEAD)
    self._token = grown(self._token, DEAD)
    self._value = grown(self._value, DEAD)
    self._num_children = grown(self._num_children, 0)

  # Device layout.

  def _update_capacity(self) -> np.ndarray:
    """Doubles each device capacity until it fits; returns fan-outs [used]."""
    used = self._next_node
    parent, token = self._parent[:used], self._token[:used]
    fanout = np.bincount(parent[parent > 0], minlength=used)
    root_tokens = token[parent == 0]
    cap = self._capacity
    while cap.nodes < used:
      cap.nodes *= 2
    while cap.root_tokens <= (root_tokens.max() if root_tokens.size else 0):
      cap.root_tokens *= 2
    while cap.fanout < fanout.max(initial=0):
      cap.fanout *= 2
    return fanout

  def to_numpy(self) -> dict[str, np.ndarray]:
    """The device layout as int32 numpy arrays (keys = TrieArrays fields)."""
    used = self._next_node
    parent, token = self._parent[:used], self._token[:used]
    fanout = self._update_capacity()
    is_edge = parent > 0  # edges below the root; root edges go to the table
    is_root_edge = parent == 0
    cap = self._capacity
    order = np.flatnonzero(is_edge)
    order = order[np.lexsort((token[order], parent[order]))]
    num_children = np.zeros(cap.nodes, np.int32)
    num_children[:used] = fanout
    child_start = np.zeros(cap.nodes, np.int32)
    child_start[1:] = np.cumsum(num_children)[:-1]
    edge_token = np.full(cap.nodes, DEAD, np.int32)
    edge_child = np.full(cap.nodes, DEAD, np.int32)
    edge_token[: len(order)], edge_child[: len(order)] = token[order], order
    root_child = np.full(cap.root_tokens, DEAD, np.int32)
    root_nodes = np.flatnonzero(is_root_edge)
    root_child[token[root_nodes]] = root_nodes
    leaf_value = np.full(cap.nodes, DEAD, np.int32)
    leaf_value[:used] = self._value[:used]
    return dict(
      root_child=root_child,
      child_start=child_start,
      num_children=num_children,
      edge_token=edge_token,
      edge_child=edge_child,
      leaf_value=leaf_value,
    )

  def to_device(self) -> TrieArrays:
    """Device arrays; same shapes as last time unless a capacity doubled."""
    host = self.to_numpy()
    self._uploaded = host
    arrays = {k: jnp.asarray(v) for k, v in host.items()}
    return TrieArrays(
      **arrays, max_children=self._capacity.fanout, eos_id=self.eos_id
    )

  def update_device(
    self, arrays: TrieArrays, *, donate: bool = True
  ) -> TrieArrays:
    """`to_device()` now, written into `arrays` (the last upload) in place.

    Only the rows that changed since the previous `to_device` or
    `update_device` are scattered; when a capacity grew, this is a full
    `to_device()`. With `donate`, the buffers of `arrays` are reused and
    `arrays` must not be used afterwards (pass donate=False while other
    computations may still read it).
    """
    previous = getattr(self, "_uploaded", None)
    host = self.to_numpy()
    if (
      previous is None
      or any(previous[k].shape != v.shape for k, v in host.items())
      or arrays.max_children != self._capacity.fanout
    ):
      return self.to_device()
    updated = {}
    for name, array in host.items():
      rows = np.flatnonzero(previous[name] != array)
      updated[name] = _scatter_rows(
        getattr(arrays, name), rows, array[rows], donate
      )
    self._uploaded = host
    self.rows_written = sum(
      int(np.sum(previous[k] != v)) for k, v in host.items()
    )
    return TrieArrays(
      **updated, max_children=self._capacity.fanout, eos_id=self.eos_id
    )

  def memory_bytes(self) -> int:
    """Bytes of the device layout at the current capacities."""
    self._update_capacity()
    return 4 * (self._capacity.root_tokens + 5 * self._capacity.nodes)

  @property
  def num_nodes(self) -> int:
    """Live nodes, root included."""
    return self._next_node - len(self._free)
