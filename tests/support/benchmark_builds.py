"""Helpers for the tests of the known-item benchmark builders
(tests/data/test_news.py, tests/data/test_parlspeech.py)."""

import os

import pytest


def seeds_fixture(build, name: str):
  """A module fixture `built`: `build(folder, seed=...)` run into root/a and
  root/b (seed 0) and root/c (seed 1); gives (root, the manifest of a)."""

  @pytest.fixture(scope="module")
  def built(tmp_path_factory):
    root = tmp_path_factory.mktemp(name)
    manifest = build(root / "a", seed=0)
    build(root / "b", seed=0)
    build(root / "c", seed=1)
    return root, manifest

  return built


def folder_files(folder):
  """Every file below `folder`, as sorted relative paths."""
  return sorted(
    os.path.relpath(os.path.join(d, f), folder)
    for d, _, names in os.walk(folder)
    for f in names
  )
