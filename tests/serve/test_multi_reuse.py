"""Multi docids reuse their token part's deleted docids on online adds
(issue 22 item 5, for the multi scheme).

A multi table's token part (atomic here) hands out its deleted documents'
own tokens first (`assign_new(reuse_retired=True)`); the text parts' docids
of deleted documents stay retired. The service asks for it, so add/delete
cycles stop growing the vocabulary, and a restart replays the same table.
"""

import dataclasses


from gr.data import beir
from gr.docids import multi
from gr.serve import retriever as serving

from tests.serve import test_serving as run_helpers
from tests.support import online_cycles

PARTS = (
  {"scheme": "atomic"},
  {"scheme": "text", "method": "prefix", "num_words": 3},
)


def test_the_token_part_reuses_and_text_docids_stay_retired():
  scheme = multi.MultiScheme(parts=PARTS)
  assert scheme.reuses_tokens
  assert not multi.MultiScheme().reuses_tokens  # semantic "shared" part
  corpus = run_helpers.synthetic_corpus(6)
  table = scheme.assign(corpus)
  token, words = table.docids_of["doc2"]
  table = table.remove(["doc2"])
  new = {"n0": beir.Document("n0", "", "zebra quartz ocean river")}
  reused = scheme.assign_new(table, new, reuse_retired=True)
  assert reused.docids_of["n0"][0] == token
  assert reused.released_from(table) == [token]
  assert reused.reserved_tokens == table.reserved_tokens
  assert words in reused.retired_docids  # text docids are never reused
  assert token not in reused.retired_docids
  fresh = scheme.assign_new(table, new)
  assert fresh.docids_of["n0"][0] not in (token, *table.reserved_tokens)
  assert fresh.docids_of["n0"][1] == reused.docids_of["n0"][1]


def test_add_delete_cycles_reuse_tokens_and_a_restart(tmp_path):
  """30 online adds, each followed by a delete (of the document just added
  half the time, else of a random live one): each reuse makes no token
  (without reuse every add makes one), every live document is found by a
  full beam and no deleted one, and a restart serves the same table."""
  model_dir = run_helpers.make_run(
    tmp_path / "multi",
    scheme="multi",
    num_docs=8,
    scheme_params={"parts": PARTS},
  )
  config = dataclasses.replace(run_helpers.CONFIG, max_k=32, buckets=(1,))
  r = serving.Retriever.from_checkpoint(model_dir, config=config)
  new = run_helpers.synthetic_corpus(30, prefix="cyc")
  tokens = len(r.index.vocab.docid_tokens)
  reused = online_cycles.add_delete_cycles(r, new, seed=3)
  # A deleted token was free at every add but the first.
  assert reused == len(new) - 1
  assert len(r.index.vocab.docid_tokens) == tokens + 1
  online_cycles.assert_all_found_and_kept(
    r, lambda: serving.Retriever.from_checkpoint(model_dir, config=config), 32
  )
