"""Tests for gr/index/artifact.py: the versioned index artifact."""

import os

import pytest

from gr.index import artifact as index_lib
from gr.index import vocab as vocab_lib
from gr.data.beir import Document
from gr.docids import get_scheme

WORDS = (
  "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
  "nu xi omicron pi rho sigma tau upsilon phi chi psi omega"
).split()


def _corpus(n):
  return {
    f"d{i}": Document(
      f"d{i}",
      f"title {i}",
      " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)),
    )
    for i in range(n)
  }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  corpus = _corpus(30)
  table = get_scheme("naive").assign(corpus)
  work = str(tmp_path_factory.mktemp("work"))
  texts = index_lib.training_texts(corpus, {"q": "alpha beta"}) * 5
  return corpus, index_lib.build_index(table, texts, work, vocab_size=60)


def test_docid_sequences_map_to_their_documents(built):
  _, index = built
  sequences, values = index.docid_sequences()
  assert len(sequences) == index.table.num_docs
  for (docid, doc_id), seq, value in zip(
    index.table.all_docids(), sequences, values
  ):
    assert seq[-1] == vocab_lib.EOS_ID
    assert index.vocab.decode_docid(seq) == docid
    assert index.doc_ids[value] == doc_id
  trie = index.build_trie()
  assert len(trie) == len(sequences)
  assert all(trie.get(s) == v for s, v in zip(sequences, values))


def test_save_load_round_trip_and_versions(built, tmp_path):
  _, index = built
  d = str(tmp_path / "index")
  first = index_lib.save_index(index, d)
  loaded = index_lib.load_index(d)
  assert loaded.table == index.table
  assert loaded.vocab.fingerprint == index.vocab.fingerprint
  removed = index.with_table(index.table.remove(["d0"]))
  second = index_lib.save_index(removed, d, keep=1)
  assert index_lib.current_version_dir(d) == second
  assert not os.path.exists(first)  # keep=1 pruned the old version
  assert "d0" not in index_lib.load_index(d).table.docids_of


def test_crash_before_switch_leaves_previous_version(
  built, tmp_path, monkeypatch
):
  _, index = built
  d = str(tmp_path / "index")
  index_lib.save_index(index, d)

  def crash(*args, **kwargs):
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(index_lib, "_switch_current", crash)
  with pytest.raises(KeyboardInterrupt):
    index_lib.save_index(index.with_table(index.table.remove(["d1"])), d)
  monkeypatch.undo()
  loaded = index_lib.load_index(d)
  assert "d1" in loaded.table.docids_of  # the old, complete version


def test_corrupt_vocab_is_refused(built, tmp_path):
  _, index = built
  d = str(tmp_path / "index")
  version_dir = index_lib.save_index(index, d)
  with open(os.path.join(version_dir, "vocab", "spm.model"), "ab") as f:
    f.write(b"garbage")
  with pytest.raises(ValueError, match="sha256"):
    index_lib.load_index(d)


def test_missing_index_is_a_clear_error(tmp_path):
  with pytest.raises(index_lib.IndexArtifactError, match="CURRENT"):
    index_lib.load_index(str(tmp_path))


def test_vocab_must_hold_the_tables_tokens(built):
  _, index = built
  bare = vocab_lib.Vocabulary(index.vocab.sp_model_path)
  with pytest.raises(index_lib.IndexArtifactError, match="reserved"):
    index_lib.Index(index.table, bare)
