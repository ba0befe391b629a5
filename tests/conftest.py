"""Test-wide set-up: 8 fake CPU devices (for sharding tests), quiet TF, offline."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hypothesis  # pylint: disable=g-import-not-at-top,wrong-import-position

# CI (CI=true) replays the same examples every run, so a landing never
# depends on luck; local runs keep exploring new examples.
hypothesis.settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
  hypothesis.settings.load_profile("ci")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Crash guarantees that `make test` must run although they are marked slow
# in files this conftest does not own; tests/test_ci_markers.py checks that
# every one of them still exists and that `make test` selects it.
CRASH_TESTS = (
  "tests/continual/test_continual.py::test_killed_update_leaves_a_loadable_version",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
  for item in items:
    if item.nodeid in CRASH_TESTS:
      item.add_marker(pytest.mark.crash)


@pytest.fixture(scope="session")
def wordpiece_vocab():
  """The real MiniLM WordPiece vocabulary (shipped offline)."""
  from gr.index import wordpiece  # pylint: disable=g-import-not-at-top
  from gr.model import embed  # pylint: disable=g-import-not-at-top
  from gr.model import pretrained  # pylint: disable=g-import-not-at-top

  return wordpiece.WordPieceVocabulary(
    pretrained.tokenizer_path(embed.default_model_dir())
  )
