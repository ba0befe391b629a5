"""gr/model/family.py: one plug-in per kind of model, looked up in one place."""

import jax
import numpy as np
import pytest

from tests.support import tiny_bert
from gr.docids import get_scheme
from gr.data.beir import Document
from gr.model import configs
from gr.model import family
from gr.model import models
from gr.model import network
from gr.model import pretrained
from gr.model import pretrained_t5
from gr.model import warm_start

DOCS = {
  f"d{i}": Document(f"d{i}", "", f"body number {i} about topic {i % 3}")
  for i in range(6)
}


@pytest.fixture(scope="module")
def bert_model(tmp_path_factory):
  folder = tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("bert")))
  return tiny_bert.frozen_model(folder)


def test_each_kind_of_model_has_its_family(bert_model):
  scratch = models.EncoderDecoderModel(network.T5Config.tiny(128))
  hf_t5 = pretrained_t5.pretrained_t5_model(t5_dir="/no/such/folder")
  assert family.family_of(scratch) is family.SCRATCH_T5
  assert family.family_of(hf_t5) is family.PRETRAINED_T5  # config unread
  assert family.family_of(hf_t5.with_vocab_size(256)) is family.PRETRAINED_T5
  assert family.family_of(bert_model) is family.BERT_T5
  assert family.family_of(bert_model.with_vocab_size(30592)) is family.BERT_T5
  assert set(family.FAMILIES) == {"scratch_t5", "pretrained_t5", "bert_t5"}


def test_a_scratch_t5_starts_at_random_and_keeps_new_rows():
  model = models.EncoderDecoderModel(network.T5Config.tiny(128))
  fam = family.family_of(model)
  assert fam.encoder_dir(model) is None and not fam.warm_starts_rows
  start = fam.warm_start(
    model, None, DOCS, seed=0, input_length=8, target_length=4
  )
  assert start.params is None and start.vectors == {}
  params = {"token_embedder": {"embedding": np.ones((4, 2))}}
  assert fam.new_docid_rows(model, params, None, ["<d_1>"], {}) is params
  assert fam.document_vectors(model, params, None, DOCS, 8) == {}
  assert fam.encoder_states(model, params, []) is None
  assert fam.saved_config(model) == configs.config_record(model.config)
  assert "t5_config" in fam.saved_config(model)


def test_a_bert_family_warm_start_gives_vectors_rows_and_a_cache(bert_model):
  table = get_scheme("atomic").assign(DOCS)
  fam = family.family_of(bert_model)
  index = fam.build_index(bert_model, table, None, "", vocab_size=0, seed=0)
  model = models.fit_vocab(bert_model, index.vocab.vocab_size)
  assert fam.encoder_dir(model) == model.config.encoder_dir
  start = fam.warm_start(
    model,
    index,
    DOCS,
    seed=0,
    input_length=16,
    target_length=index.max_docid_length(),
  )
  assert sorted(start.vectors) == sorted(DOCS)
  rows = pretrained.document_rows(index, DOCS, 16)
  direct = pretrained.pooled_vectors(model, start.base_params, rows)
  np.testing.assert_allclose(  # fp16 cached states vs fp32 recomputed
    start.vector_matrix(index.doc_ids), direct, atol=2e-2
  )
  # An atomic token's row is its document's vector (+ the end component).
  embedding = np.asarray(start.params["token_embedder"]["embedding"])
  row = embedding[index.vocab.docid_token_id(table.docids_of["d0"][0])]
  end = warm_start.END_WEIGHT * warm_start.end_direction(row.shape[0])
  np.testing.assert_allclose(row - end, start.vectors["d0"], atol=1e-5)
  assert family.training_transform(model, start.states) is not None
  assert "bert_t5_config" in fam.saved_config(model)
  mask = fam.trainable_mask(model, start.params)
  assert not any(jax.tree.leaves(mask["encoder"]))  # all layers frozen
  assert all(jax.tree.leaves(mask["decoder"]))


def test_a_warm_start_with_nothing_to_train_takes_the_dense_vectors(
  bert_model, tmp_path
):
  """No training rows: no frozen-layer cache; the bodies' vectors are the
  embedder's (cached under cache_dir by encoder), equal to the model's."""
  table = get_scheme("atomic").assign(DOCS)
  fam = family.family_of(bert_model)
  index = fam.build_index(bert_model, table, None, "", vocab_size=0, seed=0)
  model = models.fit_vocab(bert_model, index.vocab.vocab_size)
  start = fam.warm_start(model, index, DOCS, seed=0, input_length=16,
    target_length=index.max_docid_length(), cache_dir=str(tmp_path))  # fmt: skip
  assert start.states is None
  assert [p.name.split("-")[0] for p in tmp_path.glob("*.npy")] == ["docs"]
  rows = pretrained.document_rows(index, DOCS, 16)
  direct = pretrained.pooled_vectors(model, start.base_params, rows)
  np.testing.assert_allclose(
    start.vector_matrix(index.doc_ids), direct, atol=1e-4
  )
  trained = fam.warm_start(model, index, DOCS, seed=0, input_length=16,
    target_length=index.max_docid_length(), cache_dir=str(tmp_path),
    cache_rows=lambda: [rows[0][:4]])  # fmt: skip
  assert trained.states is not None
