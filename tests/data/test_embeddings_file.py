"""A user's embeddings file (gr/data/embeddings_file.py): round trip, and
each malformed file refused with an error naming the file and the row/id."""

import numpy as np
import pytest

from gr.data import embeddings_file as ef


def _vectors(n, d=4, seed=0):
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_trip_and_rows_in_the_asked_order(tmp_path):
  path = str(tmp_path / "e.npz")
  vectors = _vectors(5)
  ef.write_embeddings(path, ["a", "b", "c", "d", "e"], vectors)
  ids, loaded = ef.load_embeddings(path)
  assert ids.tolist() == ["a", "b", "c", "d", "e"]
  np.testing.assert_array_equal(loaded, vectors)
  # Any order, and documents the corpus lacks are ignored.
  got = ef.vectors_for(path, ["d", "a", "c"])
  np.testing.assert_array_equal(got, vectors[[3, 0, 2]])


def test_float64_and_float16_are_read_as_float32(tmp_path):
  path = str(tmp_path / "e.npz")
  np.savez(path, ids=np.array(["x", "y"]), vectors=np.ones((2, 3), np.float16))
  assert ef.load_embeddings(path)[1].dtype == np.float32


def _save(tmp_path, name="bad.npz", **arrays):
  path = str(tmp_path / name)
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize(
  "arrays, message",
  [
    (dict(vectors=np.ones((2, 3))), r"lacks array\(s\) \['ids'\]"),
    (dict(ids=np.array(["a", "b"])), r"lacks array\(s\) \['vectors'\]"),
    (
      dict(ids=np.array(["a", "b", "c"]), vectors=np.ones((2, 3))),
      "3 ids but 2 vector rows",
    ),
    (
      dict(ids=np.array(["a", "b"]), vectors=np.ones(2)),
      "must be a 2-D float array",
    ),
    (
      dict(ids=np.array(["a", "b"]), vectors=np.ones((2, 3), np.int32)),
      "must be a 2-D float array",
    ),
    (
      dict(ids=np.array([1, 2]), vectors=np.ones((2, 3))),
      "must be a 1-D string array",
    ),
    (
      dict(ids=np.array(["a", "b", "c", "b"]), vectors=np.ones((4, 3))),
      r"id 'b' appears twice \(rows 1 and 3\)",
    ),
    (
      dict(ids=np.array(["a", ""]), vectors=np.ones((2, 3))),
      "row 1 has an empty id",
    ),
    (
      dict(
        ids=np.array(["a", "b", "c"]),
        vectors=np.array([[0.0, 1], [0, 1], [np.inf, 0]]),
      ),
      r"row 2 \(id 'c'\) holds a NaN or infinite value",
    ),
    (
      dict(ids=np.array(["a", 3], object), vectors=np.ones((2, 3))),
      "not a readable .npz of plain arrays",
    ),
  ],
)
def test_malformed_files_name_the_file_and_row(tmp_path, arrays, message):
  path = _save(tmp_path, **arrays)
  with pytest.raises(ef.EmbeddingsFileError, match=message) as raised:
    ef.load_embeddings(path)
  assert str(raised.value).startswith(path)


def test_not_an_npz(tmp_path):
  npy = str(tmp_path / "one.npy")
  np.save(npy, np.ones((2, 3)))
  with pytest.raises(ef.EmbeddingsFileError, match="holds one array"):
    ef.load_embeddings(npy)
  text = tmp_path / "text.npz"
  text.write_text("ids,vectors\n")
  with pytest.raises(ef.EmbeddingsFileError, match="not a readable .npz"):
    ef.load_embeddings(str(text))
  with pytest.raises(ef.EmbeddingsFileError, match="no such embeddings file"):
    ef.load_embeddings(str(tmp_path / "absent.npz"))


def test_documents_without_a_vector_are_named(tmp_path):
  path = str(tmp_path / "e.npz")
  ef.write_embeddings(path, ["a", "b"], _vectors(2))
  with pytest.raises(
    ef.EmbeddingsFileError, match=r"no vector for 2 of 3 documents.*'z', 'y'"
  ):
    ef.vectors_for(path, ["a", "z", "y"])


def test_a_bad_file_is_never_written(tmp_path):
  path = tmp_path / "e.npz"
  with pytest.raises(ef.EmbeddingsFileError, match="appears twice"):
    ef.write_embeddings(str(path), ["a", "a"], _vectors(2))
  assert not path.exists() and not list(tmp_path.iterdir())
