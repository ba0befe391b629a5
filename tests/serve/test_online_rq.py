"""Online adds to a residual-quantisation (RQ) docid run (issue 22): the
docid tokens an add creates get the RQ rule's rows (gr/docids/rq.py,
gr/docids/token_rows.py: a `<qr_i>` its document's residual as is, a
`<qx_j>` zero), never a scaled document vector or the end direction, so a
new document is found at rank 1 by its own words; deletes free their
`<qr_i>` for the next adds, and a restart serves the same.

A tiny random BERT (tests/support/tiny_bert.py) under a one-layer decoder
warm-started for RQ docids (1 level of 4 codes), placed by the same BERT as
the service places new documents (DocidNamer: the run's encoder).
"""

import dataclasses
import os

import numpy as np
import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.docids import rq
from gr.model import embed
from gr.serve import retriever as serving

from tests.serve import test_capacity as capacity
from tests.support import served_runs
from tests.support import tiny_bert

INPUT_LENGTH = 8
CONFIG = serving.ServingConfig(
  max_k=1, beam_size=8, buckets=(1,), score_mode="logits"
)


def rq_run(work, residual_token: bool) -> tuple[str, list[str]]:
  """A run dir with RQ docids over capacity.OLD, warm start, no training."""
  bert_dir = tiny_bert.write_tiny_bert(str(work / "bert"))
  corpus = {d: beir.Document(d, d, t) for d, t in capacity.OLD.items()}
  embedder = embed.Embedder.load(bert_dir, max_length=INPUT_LENGTH)
  vectors = embedder.embed([doc.text for doc in corpus.values()])
  scheme = docids_lib.get_scheme(
    "rq", levels=1, codebook_size=4, residual_token=residual_token
  )
  table = scheme.assign(corpus, embeddings=vectors)
  index_dir = str(work / "trained_index")
  _, model, params = served_runs.warm_started(
    bert_dir, corpus, table, index_dir, INPUT_LENGTH
  )
  served_runs.save_run(
    str(work), model, params, index_dir, step=1, input_length=INPUT_LENGTH
  )
  return str(work), capacity.word_list(bert_dir)


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
  return rq_run(tmp_path_factory.mktemp("rq_residual"), residual_token=True)


def serve(run: str) -> serving.Retriever:
  return serving.Retriever.from_checkpoint(
    os.path.join(run, "model"), config=CONFIG
  )


def token_row(r: serving.Retriever, token: str) -> np.ndarray:
  embedding = np.asarray(r.params["token_embedder"]["embedding"])
  return embedding[r.index.vocab.docid_token_id(token)]


def test_online_rq_adds_get_residual_rows_and_rank_first(
  residual_run, tmp_path
):
  run, words = residual_run
  run = capacity.copy_run(run, tmp_path / "run")
  new = capacity.distinctive_documents(words, 40, seed=7, prefix="q")
  first, second = dict(list(new.items())[:30]), dict(list(new.items())[30:])
  r = serve(run)
  try:
    assert (
      capacity.ranked_first(
        r, {d: beir.Document(d, "", t) for d, t in capacity.OLD.items()}
      )
      == 1.0
    )
    for doc in first.values():
      r.add_documents([doc])
    residuals = r.index.table.arrays["residuals"]
    for doc_id in first:
      (docid,) = r.index.table.docids_of[doc_id]
      token = docid.split(" ")[-1]
      i = rq.residual_number(docid)
      np.testing.assert_allclose(token_row(r, token), residuals[i], atol=1e-6)
    assert capacity.ranked_first(r, first) == 1.0
    tokens = len(r.index.vocab.docid_tokens)
    doomed = list(first)[::3]
    for doc_id in doomed:
      r.delete_document(doc_id)
    r.add_documents(list(second.values()))
    assert len(r.index.vocab.docid_tokens) == tokens  # <qr_i> reused
    live = {d: doc for d, doc in new.items() if d not in doomed}
    assert capacity.ranked_first(r, live) == 1.0
    found = r.retrieve([first[d].text for d in doomed], 1)
    assert not {h.doc_id for hits in found for h in hits} & set(doomed)
    embedding = np.asarray(r.params["token_embedder"]["embedding"])
    table = r.index.table
  finally:
    r.close()
  again = serve(run)
  try:
    capacity.assert_restart_serves_the_same(again, table, embedding, live)
  finally:
    again.close()


def test_online_rq_disambiguating_tokens_get_zero_rows(tmp_path):
  """Without residual tokens, a new document whose code is taken gets a
  `<qx_j>`: its row is zero (it adds nothing to a summed score), not a
  scaled document vector plus the end direction."""
  run, words = rq_run(tmp_path / "plain", residual_token=False)
  r = serving.Retriever.from_checkpoint(
    os.path.join(run, "model"),
    config=dataclasses.replace(CONFIG, max_k=4),
  )
  try:
    tokens = set(r.index.vocab.docid_tokens)
    new = capacity.distinctive_documents(words, 12, seed=8, prefix="x")
    r.add_documents(list(new.values()))
    created = [t for t in r.index.vocab.docid_tokens if t not in tokens]
    assert created and all(t.startswith("<qx_") for t in created)
    for token in created:
      np.testing.assert_array_equal(token_row(r, token), 0.0)
    for doc_id in new:  # every new docid's code rows are the codebook's
      (docid,) = r.index.table.docids_of[doc_id]
      codes, _ = rq.parse(docid)
      codebooks = rq.codebooks_of(r.index.table)
      np.testing.assert_allclose(
        token_row(r, rq.code_token(0, codes[0])), codebooks[0, codes[0]]
      )
  finally:
    r.close()
