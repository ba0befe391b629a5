"""Docid trie on device: the array layout and the jitted walks over it.

A docid is a token-id sequence ending in EOS. Every trie node but the root
sits in a slot of the node arrays, and the children of a node sit in one
contiguous block of slots: a node's id is its slot, so no edge arrays are
needed (CSR with the edges and the nodes in one). Taking the EOS edge
reaches a leaf whose `child_start` holds the document index of that docid
(several docids may share one document). The host trie that builds, edits
and uploads this layout is gr/index/docid_trie.py's `DocidTrie`.

`TrieArrays` is a pytree of arrays passed INTO jitted functions as data
(never closed over):

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
points to them. `write_rows` scatters a host trie's edited slots into the
arrays on device.

`children` (the sparse continuations, [N, W_d]) and `step` cost O(N * W),
`root_children` O(V) and `allowed_mask` (the dense [N, V] form) O(N * (W +
V)): all independent of how many docids the trie holds.
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0
ARRAY_FIELDS = ("root_child", "child_start", "num_children", "edge_token")
DEAD = -1
MAX_TOKEN = 2**31 - 1  # int32: tokens without a vocabulary, document indices


@flax.struct.dataclass
class TrieArrays:
  """Slot layout of a `DocidTrie` on device (see module docstring)."""

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


def shapes_at(arrays: TrieArrays, capacity: int) -> TrieArrays:
  """The shapes (jax.ShapeDtypeStruct leaves) of `arrays` with node
  capacity C = `capacity`: what a search compiled ahead of a node growth
  sees."""
  shapes = jax.eval_shape(lambda tree: tree, arrays)
  return shapes.replace(
    **{
      field: jax.ShapeDtypeStruct((capacity,), getattr(shapes, field).dtype)
      for field in ("child_start", "num_children", "edge_token")
    }
  )


def next_power_of_two(n: int) -> int:
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


def only_eos(arrays: TrieArrays, nodes: jax.Array) -> jax.Array:
  """[N] bool: whether each of `nodes` [N] has one child, by EOS (False
  for the root, leaves and dead nodes)."""
  safe = jnp.maximum(nodes, 0)
  first = jnp.take(arrays.edge_token, arrays.child_start[safe], mode="clip")
  return (
    (nodes > 0) & (arrays.num_children[safe] == 1) & (first == arrays.eos_id)
  )


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
  padded = np.full(next_power_of_two(max(len(rows), 1)), out_of_range)
  padded[: len(rows)] = rows
  return padded.astype(np.int32)


def write_rows(
  arrays: TrieArrays,
  host: Mapping[str, np.ndarray],
  roots: np.ndarray,
  slots: np.ndarray,
  *,
  donate: bool = True,
) -> TrieArrays:
  """`arrays` with the root entries `roots` and the slots `slots` set from
  `host` (a host copy of the layout, keys `ARRAY_FIELDS`), scattered on
  device: O(edits), same shapes and static fields.

  donate: reuse the buffers of `arrays` (then invalid afterwards).
  """
  tree = {k: getattr(arrays, k) for k in ARRAY_FIELDS}
  rows, values = {}, {}
  for name in ARRAY_FIELDS:
    edited = roots if name == "root_child" else slots
    rows[name] = _padded_rows(edited, host[name].shape[0])
    values[name] = np.zeros(len(rows[name]), host[name].dtype)
    values[name][: len(edited)] = host[name][edited]
  setter = _set_rows_in_place if donate else _set_rows_copied
  return arrays.replace(**setter(tree, rows, values))
