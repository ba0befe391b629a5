"""Tests for gr/train/indexing.py's one rule for which docid schemes need an
embedder."""

import pytest

from gr import docids as docids_lib
from gr.train import indexing

TEXT_ONLY = ({"scheme": "text", "method": "prefix", "num_words": 3},)


@pytest.mark.parametrize(
  "name, params, expected",
  [
    ("naive", {}, False),
    ("atomic", {}, False),
    ("text", {}, False),
    ("semantic", {}, True),
    ("multi", {}, True),  # the default parts include a semantic one
    ("multi", {"parts": TEXT_ONLY}, False),
    ("multi", {"parts": ({"scheme": "semantic"},) + TEXT_ONLY}, True),
  ],
)
def test_needs_embedder(name, params, expected):
  scheme = docids_lib.get_scheme(name, **params)
  assert indexing.needs_embedder(scheme) is expected
