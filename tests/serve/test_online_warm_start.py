"""New documents retrievable at once with a pretrained encoder, no training.

gr/model/warm_start.py `new_docid_rows` (the rule), the online add of gr/serve/retriever.py
and gr/continual/update.py's trie_only update on a MiniLM encoder + one-layer
decoder whose step 0 is dense retrieval (gr/model/warm_start.py): a new atomic
docid token's row starts as its document's embedding, so a query made of the
new document's words finds it first. The T5 path is covered (unchanged) by
tests/serve/test_serving.py and tests/continual/test_continual.py.
"""

import os
import types

import jax
import numpy as np
import pytest

from gr.continual import strategies
from gr.continual import generators
from gr.train import checkpoints
from gr.continual import update as continual
from gr import docids as docids_lib
from gr.model import configs
from gr.model import embed
from gr.index import artifact as index_lib
from gr.model import models
from gr.model import network
from gr.model import pretrained
from gr.search import retrieval
from gr.model import model_config
from gr.serve import retriever as serving
from gr.continual import versions
from gr.model import warm_start
from gr.data import beir
from gr.docids import base as docids_base

INPUT_LENGTH = 32
SETTINGS = strategies.TrainSettings(
  batch_size=4, input_length=INPUT_LENGTH, log_every=1000
)
CONFIG = serving.ServingConfig(max_k=5, buckets=(1,))

OLD = {
  "cat": "The cat slept on the warm windowsill, purring in the sun.",
  "stocks": "Stock markets fell sharply as investors feared inflation.",
  "football": "The striker scored twice and the team won the cup final.",
  "rain": "Heavy rain flooded the streets and closed the railway line.",
  "piano": "She played a Chopin nocturne on the old grand piano.",
  "moon": "Astronauts landed on the moon and collected lunar rocks.",
}
NEW = {
  "volcano": "A volcano erupted on the remote island, burying villages "
  "in ash and lava.",
  "bread": "The baker kneaded sourdough bread with rye flour and yeast.",
}
QUERIES = {
  "volcano": "volcano erupted lava ash island",
  "bread": "baker sourdough bread rye flour",
}


def documents(texts) -> dict[str, beir.Document]:
  return {d: beir.Document(d, d.title(), t) for d, t in texts.items()}


# ------------------------------------------------------------- the rule --


def fake_vocab(tokens):
  ids = {t: 10 + i for i, t in enumerate(tokens)}
  return types.SimpleNamespace(
    docid_tokens=tuple(tokens), docid_token_id=ids.__getitem__
  )


def test_new_atomic_rows_are_scaled_document_vectors():
  old = docids_base.DocidTable(
    "atomic", {"a": ("<d_0>",), "b": ("<d_1>",)}, ("<d_0>", "<d_1>"), {}
  )
  table = old.extend({"c": ("<d_2>",), "e": ("<d_3>",)}, ("<d_2>", "<d_3>"))
  vocab = fake_vocab(table.reserved_tokens)
  rng = np.random.default_rng(0)
  embedding = rng.normal(size=(16, 4)).astype(np.float32)
  embedding[1] = 0.0  # EOS: no end component to carry over
  embedding[10] *= 2 / np.linalg.norm(embedding[10])  # old norms 2 and 4
  embedding[11] *= 4 / np.linalg.norm(embedding[11])
  vectors = {"c": np.array([3.0, 0, 0, 0]), "e": np.array([0, 1.0, 1.0, 0])}
  rows = warm_start.new_docid_rows(
    embedding, table, vocab, ("<d_2>", "<d_3>"), vectors
  )
  np.testing.assert_allclose(rows[12], [3, 0, 0, 0])
  np.testing.assert_allclose(
    rows[13], [0, 3 / np.sqrt(2), 3 / np.sqrt(2), 0], rtol=1e-6
  )
  np.testing.assert_array_equal(
    np.delete(rows, [12, 13], 0), np.delete(embedding, [12, 13], 0)
  )


def test_new_end_tokens_carry_the_end_component_of_the_old_ones():
  old = docids_base.DocidTable(
    "atomic", {"a": ("<d_0>",), "b": ("<d_1>",)}, ("<d_0>", "<d_1>"), {}
  )
  table = old.extend({"c": ("<d_2>",)}, ("<d_2>",))
  vocab = fake_vocab(table.reserved_tokens)
  embedding = np.zeros((16, 3), np.float32)
  embedding[1] = [0, 0, 10.0]  # EOS along u = e2
  embedding[10] = [1.0, 0, 1.0]  # old end tokens: v + 1 * u
  embedding[11] = [0, 1.0, 1.0]
  rows = warm_start.new_docid_rows(
    embedding, table, vocab, ("<d_2>",), {"c": np.array([0.0, 3.0, 0.0])}
  )
  # Scaled to the old rows' mean norm without their end component (1).
  np.testing.assert_allclose(rows[12], [0, 1.0, 1.0], rtol=1e-6)


def test_new_semantic_tokens_only_get_the_rule_over_new_documents():
  # Routed into the existing tree: "<1>" exists, the leaf position "<7>"
  # is new and shared by both new documents (mean of their vectors).
  old = docids_base.DocidTable(
    "semantic", {"a": ("<0> <0>",), "b": ("<1> <0>",)}, ("<0>", "<1>"), {}
  )
  table = old.extend({"c": ("<1> <7>",), "e": ("<0> <7>",)}, ("<7>",))
  vocab = fake_vocab(table.reserved_tokens)
  embedding = np.ones((16, 2), np.float32)
  rows = warm_start.new_docid_rows(
    embedding,
    table,
    vocab,
    ("<7>",),
    {"c": np.array([1.0, 0.0]), "e": np.array([0.0, 2.0])},
  )
  np.testing.assert_allclose(
    rows[12], np.sqrt(2) * np.array([1, 1]) / np.sqrt(2), rtol=1e-6
  )  # scale: |(1, 1)|
  np.testing.assert_array_equal(rows[[10, 11]], embedding[[10, 11]])


# ------------------------------------------------- a warm-started model --


def pretrained_model(vocab_size: int = 128) -> models.EncoderDecoderModel:
  """MiniLM (all layers frozen) under one 384-wide decoder layer."""
  encoder_dir = embed.default_model_dir()
  return models.EncoderDecoderModel(
    configs.bert_t5_config(
      decoder=network.T5Config(
        vocab_size=vocab_size,
        emb_dim=384,
        num_heads=6,
        head_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        mlp_dim=64,
        dropout_rate=0.0,
        logits_via_embedding=True,
      ),
      encoder_dir=encoder_dir,
    )
  )


def top_doc(searcher_or_retriever, query: str) -> str:
  if isinstance(searcher_or_retriever, serving.Retriever):
    return searcher_or_retriever.retrieve([query], 1)[0][0].doc_id
  return searcher_or_retriever.search([query])[0][0][0]


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory):
  """A run dir (atomic docids over OLD, warm start, no training)."""
  workdir = tmp_path_factory.mktemp("warm_run")
  corpus = documents(OLD)
  table = docids_lib.get_scheme("atomic").assign(corpus)
  index = pretrained.wordpiece_index(table, embed.default_model_dir())
  index_dir = os.path.join(workdir, "trained_index")
  index_lib.save_index(index, index_dir)
  index = index_lib.load_index(index_dir)
  model = models.fit_vocab(pretrained_model(), index.vocab.vocab_size)
  params = continual.initial_start(model, index, corpus, SETTINGS).params
  model_dir = os.path.join(workdir, "model")
  checkpoints.save(
    model_dir,
    1,
    {"params": params},
    extra_artifacts_dir=index_lib.current_version_dir(index_dir),
  )
  model_config.save_model_config(
    workdir, model.config, input_length=INPUT_LENGTH
  )
  return str(workdir)


def test_online_add_is_retrievable_at_once_and_after_restart(
  warm_run, tmp_path
):
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(warm_run, tmp_path / "run")
  model_dir = str(tmp_path / "run" / "model")
  r = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
  try:
    assert top_doc(r, "purring cat on the windowsill") == "cat"
    before = np.asarray(r.params["token_embedder"]["embedding"])
    added = r.add_documents(list(documents(NEW).values()))
    for doc_id, query in QUERIES.items():
      assert top_doc(r, query) == doc_id, (doc_id, r.retrieve([query], 5))
    assert top_doc(r, "purring cat on the windowsill") == "cat"
    after = np.asarray(r.params["token_embedder"]["embedding"])
    vocab = r.index.vocab
    new_ids = [vocab.docid_token_id(added[d][0]) for d in NEW]
    old_ids = [vocab.docid_token_id(t) for t in vocab.docid_tokens[: len(OLD)]]
    # Old and new end tokens share one component along the EOS row; the
    # rest of a new row has the old rows' mean norm.
    eos = before[vocab.eos_id] / np.linalg.norm(before[vocab.eos_id])
    shared = (before[old_ids].mean(axis=0) @ eos) * eos
    np.testing.assert_allclose(
      np.linalg.norm(after[new_ids] - shared, axis=1),
      np.linalg.norm(before[old_ids] - shared, axis=1).mean(),
      rtol=1e-4,
    )
    np.testing.assert_array_equal(
      np.delete(after, new_ids, 0), np.delete(before, new_ids, 0)
    )
  finally:
    r.close()
  index_dir = str(tmp_path / "run" / "index")
  assert set(serving.read_online_rows(index_dir)) == {added[d][0] for d in NEW}
  for lose_rows in (False, True):  # saved rows, or recomputed without them
    if lose_rows:
      os.remove(os.path.join(index_dir, serving.ONLINE_ROWS_FILE))
    again = serving.Retriever.from_checkpoint(model_dir, config=CONFIG)
    try:
      restored = np.asarray(again.params["token_embedder"]["embedding"])
      np.testing.assert_allclose(restored, after, atol=1e-5)
      for doc_id, query in QUERIES.items():
        assert top_doc(again, query) == doc_id
    finally:
      again.close()


def test_trie_only_update_is_retrievable_at_once(tmp_path):
  model_dir, index_dir = str(tmp_path / "model"), str(tmp_path / "index")
  old = documents(OLD)
  queries = {f"q_{d}": doc.text for d, doc in old.items()}
  dataset = beir.BeirDataset(
    old, queries, {"train": {f"q_{d}": {d: 1} for d in old}}
  )
  continual.build_initial_version(
    model_dir=model_dir,
    index_dir=index_dir,
    model=pretrained_model(),
    dataset=dataset,
    scheme="atomic",
    scheme_params={},
    vocab_size=0,
    train_steps=0,
    settings=SETTINGS,
    generator=generators.TextPseudoQueries(),
  )
  result = continual.update_index(
    model_dir=model_dir,
    index_dir=index_dir,
    model=pretrained_model(),
    new_documents=documents(NEW),
    strategy="trie_only",
    settings=SETTINGS,
  )
  assert result.gradient_updates == 0 and result.step == 1
  version = versions.load_version(model_dir)
  model = models.fit_vocab(pretrained_model(), version.index.vocab.vocab_size)
  searcher = retrieval.Searcher(
    model,
    version.params,
    version.index,
    retrieval.SearchConfig(
      beam_size=4, top_k=4, max_decode_len=version.index.max_docid_length()
    ),
    input_length=INPUT_LENGTH,
    batch_size=2,
  )
  for doc_id, query in {
    **QUERIES,
    "cat": "purring cat on the windowsill",
  }.items():
    assert top_doc(searcher, query) == doc_id
  before = versions.load_version(model_dir, step=0)
  jax.tree.map(
    np.testing.assert_array_equal,
    before.params["encoder"],
    version.params["encoder"],
  )
