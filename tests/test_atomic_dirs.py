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


def test_folders_renamed_into_place_are_readable_by_others(tmp_path):
  """mkdtemp makes 0700 folders: an index version, a tuned encoder or
  example shards written by one user must be readable by a service
  running as another, as the 0644 files in them are."""
  import numpy as np
  from gr import docids as docids_lib
  from gr.data import beir
  from gr.index import artifact as index_lib
  from gr.train import example_files

  corpus = {
    f"d{i}": beir.Document(f"d{i}", "", f"body {i} of words") for i in range(6)
  }
  index = index_lib.build_index(
    docids_lib.get_scheme("naive").assign(corpus),
    [d.text for d in corpus.values()],
    str(tmp_path / "built"),
    vocab_size=64,
  )
  with atomic_io.replaced_dir(tmp_path / "encoder") as staging:
    _write(staging, "config.json", "{}")
  version = index_lib.save_index(index, str(tmp_path / "index"))
  example_files.write_shards(
    str(tmp_path / "shards"), [], num_shards=1, text_targets=False
  )
  for folder in (tmp_path / "encoder", version, tmp_path / "shards"):
    assert os.stat(folder).st_mode & 0o777 == 0o755, folder
  assert np.all(
    [
      os.stat(os.path.join(root, f)).st_mode & 0o044 == 0o044
      for root, _, files in os.walk(tmp_path)
      for f in files
    ]
  )
