"""O(new) online updates: incremental tables, the update logs, crash safety.

The oracle is a fresh build: the same documents assigned and removed
offline (scheme.assign_new / DocidTable.remove on the trained table), then a
DocidTable and trie built whole from that.
"""

import json
import os

import numpy as np
import pytest

from gr import atomic_io
from gr import docids as docids_lib
from gr.index import artifact as index_lib
from gr.serve import retriever as serving
from gr.data import beir
from gr.docids import base
from gr.docids import naive

from tests.serve import test_serving as run_helpers


def docs(names):
  return {
    n: beir.Document(n, f"T {n}", f"body of {n} river stone") for n in names
  }


def fresh_copy(table: base.DocidTable) -> base.DocidTable:
  """The same table built (and validated) whole by the constructor."""
  return base.DocidTable(
    table.scheme,
    dict(table.docids_of),
    table.reserved_tokens,
    table.config,
    table.version,
    table.arrays,
  )


# ------------------------------------------------------------ the table --


def test_incremental_table_equals_a_fresh_table_across_folds():
  """300 random adds and removes (past several folds of the delta)."""
  scheme = docids_lib.get_scheme("naive")
  table = scheme.assign(docs([f"d{i}" for i in range(50)]))
  rng = np.random.default_rng(0)
  for step in range(300):
    if rng.random() < 0.6 or table.num_docs < 5:
      table = scheme.assign_new(table, docs([f"n{step}", f"m{step}"]))
    else:
      victims = rng.choice(list(table.docids_of), size=2, replace=False)
      table = table.remove(victims.tolist())
    if step % 50 == 0 or step == 299:
      whole = fresh_copy(table)
      assert whole == table
      assert list(table.docid_to_doc.items()) == list(
        whole.docid_to_doc.items()
      )
      assert table.retired_docids == whole.retired_docids
  taken = table.taken_docids()
  assert set(taken) == set(table.docid_to_doc) | table.retired_docids
  assert all(r in taken for r in table.retired_docids)
  # The remembered next number equals a scan of every taken docid.
  scan = naive.next_free_number(set(taken))
  assert table.memo("naive.next_number", lambda: pytest.fail("lost")) == scan


def test_extend_still_refuses_a_taken_docid():
  table = docids_lib.get_scheme("naive").assign(docs(["a", "b"]))
  table = table.remove(["a"])
  with pytest.raises(base.DocidTableError, match="removed document"):
    table.extend({"c": ("<0>",)})
  with pytest.raises(base.DocidTableError, match="names both"):
    table.extend({"c": ("<1>",)})
  with pytest.raises(base.DocidTableError, match="not a reserved token"):
    table.extend({"c": ("<x>",)})


# ------------------------------------------------------- the update log --


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
  work = tmp_path_factory.mktemp("index")
  corpus = run_helpers.synthetic_corpus(10)
  table = docids_lib.get_scheme("naive").assign(corpus)
  return index_lib.build_index(
    table, [d.text for d in corpus.values()] * 3, str(work), vocab_size=64
  )


def _logged_updates(index, index_dir, steps):
  """Applies `steps` ("add", names) / ("remove", names), logging each."""
  scheme = docids_lib.get_scheme("naive")
  for op, names in steps:
    if op == "add":
      after = index.with_table(scheme.assign_new(index.table, docs(names)))
      index_lib.record_update(index_dir, index, after, added=names)
    else:
      after = index.with_table(index.table.remove(names))
      index_lib.record_update(index_dir, index, after, removed=names)
    index = after
  return index


STEPS = [
  ("add", ["x1", "x2"]),
  ("remove", ["doc3"]),
  ("add", ["x3"]),
  ("remove", ["x1"]),
]


def test_log_replays_to_the_same_index(small_index, tmp_path):
  index_dir = str(tmp_path)
  index_lib.save_index(small_index, index_dir)
  version_dir = index_lib.current_version_dir(index_dir)
  expected = _logged_updates(small_index, index_dir, STEPS)
  assert index_lib.live_versions(index_dir) == ["v000000"]  # no full writes
  lines = atomic_io.read_lines(index_lib.updates_path(version_dir))
  assert [json.loads(text)["version"] for _, text in lines] == [1, 2, 3, 4]
  loaded = index_lib.load_index(index_dir)
  assert loaded.table == fresh_copy(expected.table)
  assert loaded.vocab == expected.vocab


def test_torn_last_record_is_ignored_then_cut(small_index, tmp_path):
  index_dir = str(tmp_path)
  index_lib.save_index(small_index, index_dir)
  expected = _logged_updates(small_index, index_dir, STEPS[:2])
  log = index_lib.updates_path(index_lib.current_version_dir(index_dir))
  with open(log, "ab") as f:
    f.write(b'{"version": 3, "add": {"torn": ["<9>')  # crash mid-append
  assert index_lib.load_index(index_dir).table == expected.table
  assert index_lib.repair_updates(index_dir)
  assert open(log, "rb").read().endswith(b"\n")
  after = _logged_updates(expected, index_dir, STEPS[2:])
  assert index_lib.load_index(index_dir).table == fresh_copy(after.table)


def test_a_corrupt_committed_record_names_its_line(small_index, tmp_path):
  index_dir = str(tmp_path)
  index_lib.save_index(small_index, index_dir)
  _logged_updates(small_index, index_dir, STEPS[:1])
  log = index_lib.updates_path(index_lib.current_version_dir(index_dir))
  with open(log, "a") as f:
    f.write('{"version": 7, "remove": ["doc1"]}\n')
  with pytest.raises(index_lib.IndexArtifactError, match=r"updates.jsonl:2"):
    index_lib.load_index(index_dir)


def test_compaction_writes_a_full_version_and_a_new_log(
  small_index, tmp_path, monkeypatch
):
  monkeypatch.setattr(index_lib, "MIN_COMPACTION", 2)
  index_dir = str(tmp_path)
  index_lib.save_index(small_index, index_dir)
  expected = _logged_updates(small_index, index_dir, STEPS)
  assert index_lib.live_versions(index_dir) == ["v000000", "v000001"]
  current = index_lib.current_version_dir(index_dir)
  assert len(atomic_io.read_lines(index_lib.updates_path(current))) == 1
  assert index_lib.load_index(index_dir).table == fresh_copy(expected.table)


# ------------------------------------------------- the served index --


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
  return os.path.dirname(
    run_helpers.make_run(tmp_path_factory.mktemp("template"))
  )


def _trie_items(retriever):
  """(docid tokens, doc_id) of every docid in a Retriever's trie."""
  slots = retriever._live.slots  # pylint: disable=protected-access
  return sorted(
    (tokens, slots[slot])
    for tokens, slot in retriever._trie.items()  # pylint: disable=protected-access
  )


def test_crash_between_updates_reloads_to_a_fresh_build(
  run_template, tmp_path, monkeypatch
):
  """Adds and deletes, an add that crashes before its commit record, a
  restart, more updates: the reloaded index, its trie and the online
  documents equal those of a fresh build of the same documents."""
  model_dir = run_helpers.copy_run(run_template, tmp_path / "run")
  config = run_helpers.CONFIG
  served = serving.Retriever.from_checkpoint(model_dir, config=config)
  trained = served.index.table
  served.add_documents(list(docs(["a1", "a2"]).values()))
  served.delete_document("doc3")
  served.delete_document("a1")

  real_append = atomic_io.append_lines

  def crash_on_commit(path, lines):
    if str(path).endswith(index_lib.UPDATES_SUFFIX):
      with open(path, "ab") as f:
        f.write(lines[0][:20].encode())  # a torn commit record
      raise OSError("simulated crash")
    real_append(path, lines)

  monkeypatch.setattr(atomic_io, "append_lines", crash_on_commit)
  with pytest.raises(OSError, match="simulated crash"):
    served.add_documents(list(docs(["lost"]).values()))
  monkeypatch.setattr(atomic_io, "append_lines", real_append)
  served.close()  # the process died; its lock goes with it

  reloaded = serving.Retriever.from_checkpoint(model_dir, config=config)
  reloaded.add_documents(list(docs(["b1"]).values()))
  reloaded.delete_document("doc5")

  scheme = docids_lib.get_scheme("naive")
  fresh_table = scheme.assign_new(trained, docs(["a1", "a2"]))
  fresh_table = fresh_table.remove(["doc3"]).remove(["a1"])
  fresh_table = scheme.assign_new(fresh_table, docs(["b1"])).remove(["doc5"])
  fresh_table = fresh_copy(fresh_table)
  assert reloaded.index.table == fresh_table
  on_disk = index_lib.load_index(reloaded.index_dir)
  assert on_disk.table == fresh_table
  assert set(reloaded.online_documents) == {"a2", "b1"}
  reloaded.close()

  again = serving.Retriever.from_checkpoint(model_dir, config=config)
  fresh = serving.Retriever(
    again.model,
    again.params,
    index_lib.Index(fresh_table, again.index.vocab),
    input_length=again.input_length,
    config=config,
  )
  assert _trie_items(again) == _trie_items(fresh)
  assert set(serving.read_online_documents(again.index_dir)) >= {"a2", "b1"}
  assert set(again.online_documents) == {"a2", "b1"}
  hits = again.retrieve(["river stone"], k=config.max_k)[0]
  assert {h.doc_id for h in hits} == set(fresh_table.docids_of)
  again.close()


# ------------------------------------------ the live trie, no restart --


def _in_memory_retriever(run_template, config=run_helpers.CONFIG):
  """A Retriever of the template's checkpoint whose index is not on disk
  (every trie edit stays live: nothing reloads the table)."""
  model, params, trained, run, _ = serving.load_checkpoint(
    os.path.join(run_template, "model")
  )
  return serving.Retriever(
    model, params, trained, input_length=run.input_length, config=config
  )


def _fresh_build(retriever):
  """A Retriever built whole from `retriever`'s current table."""
  return serving.Retriever(
    retriever.model,
    retriever.params,
    retriever.index,
    input_length=retriever.input_length,
    config=retriever.config,
  )


def test_live_trie_equals_a_fresh_build_after_adds_and_deletes(run_template):
  """40 seeded adds (re-adds of deleted ids among them) and deletes of
  trained and added documents, with no restart: the live trie holds
  exactly a fresh build's (docid tokens, doc_id) pairs, and the device
  arrays the search reads equal the host trie."""
  served = _in_memory_retriever(run_template)
  rng = np.random.default_rng(22)
  deleted = []
  for step in range(40):
    live = sorted(served.index.table.docids_of)
    if rng.random() < 0.5 or len(live) < 4:
      names = [f"o{step}_{i}" for i in range(rng.integers(1, 4))]
      if deleted and rng.random() < 0.3:
        names.append(deleted.pop())  # an id back after its delete
      served.add_documents(list(docs(names).values()))
    else:
      victim = str(rng.choice(live))
      served.delete_document(victim)
      deleted.append(victim)
    if step % 10 == 9:
      assert _trie_items(served) == _trie_items(_fresh_build(served)), step
      arrays = served._live.trie_arrays  # pylint: disable=protected-access
      for name, host in served._trie.to_numpy().items():  # pylint: disable=protected-access
        np.testing.assert_array_equal(np.asarray(getattr(arrays, name)), host)
  assert {d for _, d in _trie_items(served)} == set(served.index.doc_ids)


def test_a_full_beam_returns_k_hits_after_a_delete(run_template):
  """N documents, beam = k = N - 1: after deleting the first hit, the N - 1
  left fill the beam exactly, so all come back. A docid left in the trie
  by the delete would take a beam place and return N - 2."""
  n = len(_in_memory_retriever(run_template).index.doc_ids)
  config = serving.ServingConfig(max_k=n - 1, beam_size=n - 1, buckets=(1,))
  served = _in_memory_retriever(run_template, config)
  query = ["river stone"]
  before = served.retrieve(query, n - 1)[0]
  assert len(before) == n - 1
  served.delete_document(before[0].doc_id)
  after = served.retrieve(query, n - 1)[0]
  assert len(after) == n - 1
  assert {h.doc_id for h in after} == set(served.index.doc_ids)
