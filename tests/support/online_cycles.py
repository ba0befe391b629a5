"""Add/delete cycles on a served index, shared by the token-reuse tests."""

import numpy as np


def add_delete_cycles(retriever, documents: dict, seed: int) -> int:
  """Adds each of `documents` in turn; after each add deletes either that
  document or a random live one (half each, seeded). Returns how many
  docids the adds took from deleted documents (`released_from`)."""
  rng = np.random.default_rng(seed)
  reused = 0
  for doc in documents.values():
    before = retriever.index.table
    retriever.add_documents([doc])
    reused += len(retriever.index.table.released_from(before))
    live = sorted(retriever.index.doc_ids)
    doomed = doc.doc_id if rng.random() < 0.5 else live[rng.integers(len(live))]
    retriever.delete_document(doomed)
  return reused


def assert_all_found_and_kept(retriever, reopen, k: int) -> None:
  """Every live document is among the top k of a broad query, and a
  restart (`reopen()` -> a new retriever) serves the same table and finds
  them again. Closes both retrievers."""
  try:
    found = {h.doc_id for h in retriever.retrieve(["apple banana"], k)[0]}
    assert found == set(retriever.index.doc_ids)
    table = retriever.index.table
  finally:
    retriever.close()
  again = reopen()
  try:
    assert again.index.table == table
    found = {h.doc_id for h in again.retrieve(["apple banana"], k)[0]}
    assert found == set(table.doc_ids)
  finally:
    again.close()
