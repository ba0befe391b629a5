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
