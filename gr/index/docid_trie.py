"""The host docid trie: built in bulk or by inserts, edited, uploaded.

`DocidTrie` keeps gr/index/trie.py's device layout itself (numpy arrays at
the device capacities). A bulk build (`from_padded`, gr/index/trie_build.py)
numbers nodes depth by depth, each block exactly full and sorted by token.
An insert appends to its parent's block, which moves to a free block twice
its size when full; a delete moves the last sibling into the gap. Either
touches O(depth) slots (O(W) when a block moves, amortised O(1)), and
`update_device` scatters just those into the arrays on device.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from gr.index import trie as trie_lib
from gr.index import trie_build

_MIN_NODE_CAPACITY = 16
_INT16_TOKENS = 2**15 - 1  # vocabularies up to this size use int16


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
    self._min_width = trie_lib.next_power_of_two(max(fanout_capacity or 0, 1))
    self._level_widths: list[int] = []
    self.reserve_level_widths(level_capacity)
    slots = trie_lib.next_power_of_two(max(capacity or 0, _MIN_NODE_CAPACITY))
    roots = trie_lib.next_power_of_two(max(vocab_size or 0, 2))
    self._root_child = np.full(roots, trie_lib.DEAD, np.int32)
    self._child_start = np.zeros(slots, np.int32)
    self._num_children = np.zeros(slots, self._token_dtype)
    self._edge_token = np.full(slots, trie_lib.DEAD, self._token_dtype)
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
    lengths = trie_build.checked_lengths(
      sequences, values, eos_id=trie.eos_id, vocab_size=trie.vocab_size
    )
    order, columns = trie_build.sorted_columns(sequences)
    levels, repeated = trie_build.nodes_by_depth(columns, lengths[order])
    if repeated.any():
      row = int(order[np.argmax(repeated)])
      raise ValueError(
        f"DocidTrie.from_padded: sequence {row}: docid "
        f"{sequences[row, : lengths[row]].tolist()} is already in the trie"
      )
    trie._adopt(levels, values[order])
    return trie

  def _adopt(self, levels, values: np.ndarray) -> None:
    """Takes over an empty trie: `trie_build.nodes_by_depth` levels, row values [n].

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
  def slot_use(self) -> tuple[int, int]:
    """(slots ever used, node capacity C: needing more doubles it)."""
    return self._top, len(self._edge_token)

  @property
  def level_widths(self) -> tuple[int, ...]:
    """Device width W_d of each level d = 1, 2, ... (capacities)."""
    return tuple(self._level_widths)

  def holds_vocab(self, vocab_size: int) -> bool:
    """Whether tokens below `vocab_size` fit the device arrays as they are
    (the root table is that wide, and int16 tokens still hold them), so
    raising the bound (`set_vocab_size`) changes no shape or dtype."""
    if self.vocab_size is None:
      return True
    int16 = np.dtype(self._token_dtype) == np.int16
    return vocab_size <= len(self._root_child) and (
      not int16 or vocab_size <= _INT16_TOKENS
    )

  def set_vocab_size(self, vocab_size: int) -> None:
    """Raises the token bound to `vocab_size` (a model whose embedding rows
    grew), keeping every array; ValueError unless `holds_vocab`."""
    if not self.holds_vocab(vocab_size):
      raise ValueError(f"vocab_size {vocab_size} does not fit the trie's root "
        f"table {len(self._root_child)} or its {np.dtype(self._token_dtype)} "
        "tokens")  # fmt: skip
    self.vocab_size = max(vocab_size, self.vocab_size or 0)

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
      if token in (self.eos_id, trie_lib.PAD_ID) or token < 0:
        raise ValueError(
          f"docid {list(tokens)} has token {token} at position "
          f"{position}: EOS, PAD and negative ids may not "
          "appear before the final EOS"
        )
      if token >= (self.vocab_size or trie_lib.MAX_TOKEN):
        raise ValueError(
          f"docid {list(tokens)} has token {token} >= "
          f"vocab_size {self.vocab_size or trie_lib.MAX_TOKEN}"
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
    if not tokens or tokens[-1] != self.eos_id:
      return False
    return self._path(tokens) is not None

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
    if not 0 <= int(value) <= trie_lib.MAX_TOKEN:
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
        size = trie_lib.next_power_of_two(count + 1)
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
      self._root_child[token] = trie_lib.DEAD
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
    size = trie_lib.next_power_of_two(slots)

    def grown(array, fill):
      out = np.full(size, fill, array.dtype)
      out[: len(array)] = array
      return out

    self._child_start = grown(self._child_start, 0)
    self._num_children = grown(self._num_children, 0)
    self._edge_token = grown(self._edge_token, trie_lib.DEAD)
    self._block = grown(self._block, 0)

  def _fit_root(self, token: int) -> None:
    """Doubles the root table until it holds `token`."""
    size = len(self._root_child)
    if token >= size:
      table = np.full(
        trie_lib.next_power_of_two(token + 1), trie_lib.DEAD, np.int32
      )
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
    """The device arrays as numpy copies (keys = trie_lib.TrieArrays array fields)."""
    return {k: v.copy() for k, v in self._host_arrays().items()}

  def _arrays(self, **arrays) -> trie_lib.TrieArrays:
    return trie_lib.TrieArrays(
      **arrays, level_widths=self.level_widths, eos_id=self.eos_id
    )

  def to_device(self) -> trie_lib.TrieArrays:
    """Device arrays; same shapes as last time unless a capacity grew."""
    self._edited.clear()
    self._edited_roots.clear()
    return self._arrays(
      **{k: jnp.array(v, copy=True) for k, v in self._host_arrays().items()}
    )

  def update_device(
    self, arrays: trie_lib.TrieArrays, *, donate: bool = True
  ) -> trie_lib.TrieArrays:
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
    return trie_lib.write_rows(
      arrays, self._host_arrays(), roots, slots, donate=donate
    )

  @property
  def pending_rows(self) -> int:
    """Rows the next `update_device` writes (edited slots and root entries)."""
    return len(self._edited) + len(self._edited_roots)

  def memory_bytes(self) -> int:
    """Bytes of the device layout at the current capacities."""
    return sum(a.nbytes for a in self._host_arrays().values())
