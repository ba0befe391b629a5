"""Fixed-shape batches for jitted calls, optionally split over a mesh.

A jitted function compiles once per input shape, so callers cut their rows
into batches of one size and pad the last one (`pad_rows`). On a mesh the
batch is split over the 'data' axis, so its size must be a multiple of that
axis (`data_multiple`).
"""

from typing import Optional, Sequence

from jax.sharding import Mesh
import numpy as np

from gr import partitioning


def pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """[n <= size, ...] -> [size, ...]: zero rows after the given ones."""
  rows = np.asarray(rows)
  if len(rows) > size:
    raise ValueError(f"pad_rows: {len(rows)} rows do not fit in {size}")
  return np.concatenate(
    [rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)]
  )


def data_multiple(batch_size: int, mesh: Optional[Mesh]) -> int:
  """`batch_size` rounded up to a multiple of the mesh's 'data' axis (as it
  is without a mesh)."""
  if batch_size < 1:
    raise ValueError(f"batch_size ({batch_size}) must be >= 1")
  if mesh is None:
    return batch_size
  data = mesh.shape[partitioning.DATA_AXIS]
  return -(-batch_size // data) * data


def pad_sequences(
  sequences: Sequence[Sequence[int]], length: int | None = None
) -> np.ndarray:
  """Token sequences -> [N, length] int32, PAD (0) after each one."""
  length = length or max(len(s) for s in sequences)
  out = np.zeros((len(sequences), length), np.int32)
  for row, sequence in enumerate(sequences):
    if len(sequence) > length:
      raise ValueError(
        f"pad_sequences: sequence {row} has {len(sequence)} "
        f"tokens, more than length {length}"
      )
    out[row, : len(sequence)] = sequence
  return out
