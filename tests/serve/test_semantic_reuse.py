"""Deleted documents' semantic node tokens are reused by online adds
(issue 22 item 5, for the semantic scheme).

With token_style="node" a docid's last token (`<n3_1_7>`) is its
document's own, so `assign_new(reuse_retired=True)` gives a new document
routed to a leaf the smallest position a deleted document held there;
shared and position tokens are shared across leaves and are never reused.
The service asks for it (gr/serve/new_docids.py), so add/delete cycles stop
growing the vocabulary, and a restart replays the same table.
"""

import dataclasses

import numpy as np
import pytest

from gr.data import beir
from gr.docids import semantic
from gr.serve import retriever as serving

from tests.serve import test_serving as run_helpers
from tests.support import online_cycles


def clustered(n_per: int, seed: int = 0) -> np.ndarray:
  """[4 * n_per, 8] embeddings in 4 tight, far-apart clusters."""
  rng = np.random.default_rng(seed)
  centres = np.eye(8)[:4] * 10.0
  return np.concatenate(
    [c + 0.01 * rng.normal(size=(n_per, 8)) for c in centres]
  )


def corpus_of(n: int, prefix: str = "d") -> dict:
  return {
    f"{prefix}{i}": beir.Document(f"{prefix}{i}", "", "x") for i in range(n)
  }


def test_node_tokens_of_deleted_documents_are_handed_out_first():
  x = clustered(3)  # 12 documents, leaves of at most 2
  scheme = semantic.SemanticScheme(k=4, c=2, token_style="node")
  assert scheme.reuses_tokens
  table = scheme.assign(corpus_of(12), embeddings=x)
  gone = table.docids_of["d4"][0]
  table = table.remove(["d4"])
  new = {"n0": beir.Document("n0", "", "x")}
  fresh = scheme.assign_new(table, new, embeddings=x[4:5])
  reused = scheme.assign_new(table, new, embeddings=x[4:5], reuse_retired=True)
  assert reused.docids_of["n0"] == (gone,)
  assert reused.released_from(table) == [gone]
  assert reused.reserved_tokens == table.reserved_tokens  # no new token
  assert fresh.docids_of["n0"] != (gone,)
  assert len(fresh.reserved_tokens) == len(table.reserved_tokens) + 1
  # Same leaf, position past the used ones: only the last step differs.
  assert fresh.docids_of["n0"][0].split()[:-1] == gone.split()[:-1]
  # Once taken, the position is not handed out twice.
  again = scheme.assign_new(
    reused,
    {"n1": beir.Document("n1", "", "x")},
    embeddings=x[4:5],
    reuse_retired=True,
  )
  assert again.docids_of["n1"] != (gone,)


@pytest.mark.parametrize("style", ["shared", "position"])
def test_shared_tokens_are_never_reused(style):
  scheme = semantic.SemanticScheme(k=4, c=2, token_style=style)
  assert not scheme.reuses_tokens
  table = scheme.assign(corpus_of(12), embeddings=clustered(3)).remove(["d4"])
  with pytest.raises(ValueError, match="shared across leaves"):
    scheme.assign_new(
      table,
      {"n0": beir.Document("n0", "", "x")},
      embeddings=clustered(3)[4:5],
      reuse_retired=True,
    )


def test_add_delete_cycles_reuse_node_tokens_and_a_restart(tmp_path):
  """40 online adds, each followed by a delete (of the document just added
  half the time, else of a random live one, trained ones too): docids are
  reused, each reuse makes no token (without reuse every node-style add
  makes one: 40), a full beam finds every live document and never a
  deleted one, and a restart serves the same table."""
  model_dir = run_helpers.make_run(
    tmp_path / "semantic",
    scheme="semantic",
    num_docs=12,
    scheme_params={"k": 2, "c": 2, "token_style": "node"},
  )
  config = dataclasses.replace(run_helpers.CONFIG, max_k=48, buckets=(1,))
  r = serving.Retriever.from_checkpoint(model_dir, config=config)
  new = run_helpers.synthetic_corpus(40, prefix="cyc")
  tokens = len(r.index.vocab.docid_tokens)
  reused = online_cycles.add_delete_cycles(r, new, seed=7)
  assert reused >= 10
  assert len(r.index.vocab.docid_tokens) == tokens + len(new) - reused
  online_cycles.assert_all_found_and_kept(
    r, lambda: serving.Retriever.from_checkpoint(model_dir, config=config), 48
  )
