"""atomic_io.replaced_dir: a folder replaced whole, or left as it was."""

import os

import pytest

from gr import atomic_io


def _write(folder, name, text):
  with open(os.path.join(folder, name), "w") as f:
    f.write(text)


def test_a_folder_is_replaced_whole_and_no_staging_is_left(tmp_path):
  target = tmp_path / "out"
  target.mkdir()
  _write(target, "old.txt", "old")
  with atomic_io.replaced_dir(target) as staging:
    assert os.path.dirname(staging) == str(tmp_path)
    _write(staging, "new.txt", "new")
  assert os.listdir(target) == ["new.txt"]
  assert os.listdir(tmp_path) == ["out"]


def test_a_failure_leaves_the_old_folder_and_no_staging(tmp_path):
  target = tmp_path / "out"
  target.mkdir()
  _write(target, "old.txt", "old")
  with pytest.raises(RuntimeError):
    with atomic_io.replaced_dir(target) as staging:
      _write(staging, "half.txt", "half")
      raise RuntimeError("crash mid-write")
  assert os.listdir(target) == ["old.txt"]
  assert os.listdir(tmp_path) == ["out"]


def test_a_missing_folder_and_its_parents_are_created(tmp_path):
  target = tmp_path / "a" / "b"
  with atomic_io.replaced_dir(target) as staging:
    _write(staging, "x", "1")
  assert os.listdir(target) == ["x"]
