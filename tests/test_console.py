"""Tests for the console filter of gr/experiments/gin_cli.py: expected
warnings and orbax's INFO lines are dropped, everything else kept."""

import logging as py_logging

from absl import logging

from gr.experiments import gin_cli


def _record(level, message, pathname="/x/gr/train/loop.py"):
  return py_logging.LogRecord("absl", level, pathname, 1, message, (), None)


def test_expected_warnings_and_orbax_info_are_dropped():
  handler = logging.get_absl_handler()
  before = list(handler.filters)
  try:
    gin_cli.quiet_orbax_info()
    (added,) = [f for f in handler.filters if f not in before]
    keep = added if callable(added) else added.filter
    assert not keep(
      _record(py_logging.WARNING, "Using an uncached FunctionDataset for x")
    )
    assert not keep(_record(py_logging.INFO, "saved", "/x/orbax/ckpt.py"))
    assert keep(_record(py_logging.WARNING, "something unexpected"))
    assert keep(_record(py_logging.WARNING, "disk", "/x/orbax/ckpt.py"))
    assert keep(_record(py_logging.INFO, "step 100/300"))
  finally:
    handler.filters[:] = before
