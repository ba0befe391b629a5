"""Docids from a user's embeddings file (indexing.assign_docids and
scripts/build_docids.py --embeddings_file) equal those built from the same
vectors given directly."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.data import embeddings_file
from gr.train import indexing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
N, D = 60, 8
PARAMS = {
  "rq": {"levels": 2, "codebook_size": 4},
  "semantic": {"k": 3, "c": 5},
}


def _corpus():
  return {f"d{i}": beir.Document(f"d{i}", "", f"body {i}") for i in range(N)}


def _vectors():
  x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _shuffled_file(path, vectors):
  """The file holds the rows in another order, plus a document not in the
  corpus: neither may change the docids."""
  order = np.random.default_rng(1).permutation(N)
  ids = [f"d{i}" for i in order] + ["elsewhere"]
  rows = np.concatenate([vectors[order], np.ones((1, D), np.float32)])
  embeddings_file.write_embeddings(path, ids, rows)


def _assert_same_table(a, b):
  assert a.docids_of == b.docids_of
  assert a.reserved_tokens == b.reserved_tokens
  assert sorted(a.arrays) == sorted(b.arrays)
  for name in a.arrays:
    np.testing.assert_array_equal(a.arrays[name], b.arrays[name])


@pytest.mark.parametrize("scheme", sorted(PARAMS))
def test_assign_docids_from_the_file_equals_direct_vectors(tmp_path, scheme):
  corpus, vectors = _corpus(), _vectors()
  path = str(tmp_path / "vectors.npz")
  _shuffled_file(path, vectors)
  direct = docids_lib.get_scheme(scheme, **PARAMS[scheme]).assign(
    corpus, embeddings=vectors
  )
  from_file = indexing.assign_docids(
    corpus, scheme, PARAMS[scheme], None, 64, None, embeddings_file=path
  )
  _assert_same_table(from_file, direct)
  # And the vectors mattered: other vectors give other docids.
  other = docids_lib.get_scheme(scheme, **PARAMS[scheme]).assign(
    corpus, embeddings=_vectors()[::-1].copy()
  )
  assert other.docids_of != direct.docids_of


def test_a_scheme_without_embeddings_refuses_the_file(tmp_path):
  path = str(tmp_path / "vectors.npz")
  _shuffled_file(path, _vectors())
  with pytest.raises(ValueError, match="'naive' docids use no embeddings"):
    indexing.assign_docids(_corpus(), "naive", {}, None, 64, None, path)


def test_a_document_missing_from_the_file_is_named(tmp_path):
  path = str(tmp_path / "vectors.npz")
  embeddings_file.write_embeddings(path, ["d0", "d1"], _vectors()[:2])
  with pytest.raises(embeddings_file.EmbeddingsFileError, match="'d2'"):
    indexing.assign_docids(_corpus(), "rq", PARAMS["rq"], None, 64, None, path)


def test_build_docids_script_takes_the_file(tmp_path):
  corpus, vectors = _corpus(), _vectors()
  data = tmp_path / "data"
  beir.write_beir(
    str(data), corpus, {"q": "body 1"}, {"test": {"q": {"d1": 1}}}
  )
  path = str(tmp_path / "vectors.npz")
  _shuffled_file(path, vectors)
  out = str(tmp_path / "table")
  subprocess.run(
    [
      sys.executable, os.path.join(REPO, "scripts/build_docids.py"),
      f"--data_dir={data}", "--scheme=rq", "--param=levels=2",
      "--param=codebook_size=4", f"--out={out}", f"--embeddings_file={path}",
    ],
    check=True, capture_output=True, cwd=REPO,
  )  # fmt: skip
  direct = docids_lib.get_scheme("rq", **PARAMS["rq"]).assign(
    corpus, embeddings=vectors
  )
  _assert_same_table(docids_lib.DocidTable.load(out), direct)


def test_build_docids_script_names_a_bad_file_in_one_line(tmp_path):
  data = tmp_path / "data"
  beir.write_beir(str(data), _corpus(), {"q": "b"}, {"test": {"q": {"d1": 1}}})
  path = str(tmp_path / "vectors.npz")
  embeddings_file.write_embeddings(path, ["d0"], _vectors()[:1])
  result = subprocess.run(
    [
      sys.executable, os.path.join(REPO, "scripts/build_docids.py"),
      f"--data_dir={data}", "--scheme=rq", f"--out={tmp_path / 'table'}",
      f"--embeddings_file={path}",
    ],
    capture_output=True, text=True, cwd=REPO,
  )  # fmt: skip
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert "Traceback" not in result.stderr
  assert f"{path}: no vector for 59 of 60 documents" in last, last
