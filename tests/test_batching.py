"""Tests for gr/batching.py: fixed-shape batches, rounded to a mesh."""

import numpy as np
import pytest

from gr import batching
from gr import partitioning


def test_pad_rows_appends_zero_rows_of_the_same_dtype():
  rows = np.arange(6, dtype=np.uint32).reshape(3, 2) + 1
  padded = batching.pad_rows(rows, 5)
  assert padded.shape == (5, 2) and padded.dtype == np.uint32
  np.testing.assert_array_equal(padded[:3], rows)
  assert not padded[3:].any()
  np.testing.assert_array_equal(batching.pad_rows(rows, 3), rows)


def test_pad_rows_rejects_more_rows_than_the_batch():
  with pytest.raises(ValueError, match="4 rows do not fit in 3"):
    batching.pad_rows(np.ones((4, 2)), 3)


def test_data_multiple_rounds_up_to_the_data_axis():
  assert batching.data_multiple(3, None) == 3
  mesh = partitioning.make_mesh(data=4, model=2)
  assert [batching.data_multiple(b, mesh) for b in (1, 4, 5, 9)] == [
    4,
    4,
    8,
    12,
  ]
  with pytest.raises(ValueError, match="batch_size"):
    batching.data_multiple(0, mesh)
