"""`make test` (what CI runs) selects every crash-guarantee test."""

import pathlib
import re
import subprocess
import sys

from tests import conftest

REPO = pathlib.Path(__file__).resolve().parent.parent

CRASH_TESTS = (
  "tests/train/test_train.py::test_resume_after_sigkill_matches_uninterrupted",
  *conftest.CRASH_TESTS,
  "tests/serve/test_serving_http.py::"
  "test_script_sigterm_then_restart_keeps_added_document",
)


def _make_test_marker_expression() -> str:
  makefile = (REPO / "Makefile").read_text()
  (expression,) = re.findall(r'-m pytest .*-m "([^"]+)" tests', makefile)
  return expression


def test_make_test_selects_the_crash_tests():
  files = sorted({test.split("::")[0] for test in CRASH_TESTS})
  collected = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "--collect-only",
      "-q",
      "-p",
      "no:cacheprovider",
      "-m",
      _make_test_marker_expression(),
      *files,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert collected.returncode == 0, collected.stdout[-3000:]
  selected = set(collected.stdout.split())
  for test in CRASH_TESTS:
    assert test in selected, (test, collected.stdout[-3000:])
