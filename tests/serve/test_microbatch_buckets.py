"""microbatch.choose_buckets: the micro-batch limit from measured throughput."""

import pytest

from gr.serve import microbatch


def test_the_limit_is_the_fastest_batch_size():
  # The demo checkpoint's shape: batch 32 answers fewer queries/s than 16.
  measured = {1: 256.0, 4: 367.0, 16: 559.0, 32: 470.0}
  assert microbatch.choose_buckets(measured) == (1, 4, 16)


def test_monotone_throughput_keeps_every_size():
  assert microbatch.choose_buckets({8: 3.0, 1: 1.0, 2: 2.0}) == (1, 2, 8)


def test_nothing_measured_is_an_error():
  with pytest.raises(ValueError, match="at least one"):
    microbatch.choose_buckets({})
