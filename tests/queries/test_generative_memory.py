"""Tests for gr/queries/generative_memory.py and doc2query's vector source.

A tiny random BERT (tests/support/tiny_bert.py) under a one-layer decoder: the
generator is untrained, so the tests check plumbing (shapes, seeding,
what the decoder is given), not query quality.
"""

import jax
import numpy as np
import pytest

from gr.continual import strategies
from gr.continual import generators
from tests.support import tiny_bert
from gr.queries import query_generators
from gr.queries import generative_memory as memory_lib
from gr.model import models
from gr.model import pretrained
from gr.train import optimizer as optimizer_lib
from gr.model import warm_start
from gr.index import wordpiece


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  return tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="module")
def vocab(bert_dir):
  return wordpiece.WordPieceVocabulary(pretrained.tokenizer_path(bert_dir))


@pytest.fixture(scope="module")
def model(bert_dir, vocab):
  """Tiny BERT, every layer frozen, under a 1-layer decoder of its width."""

  return models.fit_vocab(tiny_bert.frozen_model(bert_dir), vocab.vocab_size)


@pytest.fixture(scope="module")
def params(model, bert_dir):
  return warm_start.pretrained_params(
    model,
    warm_start.load_encoder(bert_dir)[1],
    jax.random.PRNGKey(0),
    input_length=16,
    target_length=8,
    warm_start=False,
  )


def test_with_vector_sources_replaces_every_kth_row_by_its_vector():
  rng = np.random.default_rng(0)
  tokens = np.array([[5, 6, 7, 0], [8, 9, 0, 0], [3, 4, 5, 6], [2, 0, 0, 0]])
  states = rng.normal(size=(4, 4, 3)).astype(np.float16)
  batch = {
    "encoder_input_tokens": tokens,
    "encoder_frozen_states": states,
    "decoder_target_tokens": np.ones((4, 2), np.int32),
  }
  out = memory_lib.with_vector_sources(batch, every=2)
  for row in (0, 2):  # untouched
    np.testing.assert_array_equal(out["encoder_input_tokens"][row], tokens[row])
    np.testing.assert_array_equal(
      out["encoder_frozen_states"][row], states[row]
    )
  for row, length in ((1, 2), (3, 1)):
    np.testing.assert_array_equal(
      out["encoder_input_tokens"][row], [memory_lib.SOURCE_ID, 0, 0, 0]
    )
    mean = states[row, :length].astype(np.float32).mean(0)
    np.testing.assert_allclose(
      out["encoder_frozen_states"][row, 0],
      mean / np.linalg.norm(mean),
      atol=2e-3,
    )
    assert not out["encoder_frozen_states"][row, 1:].any()
  np.testing.assert_array_equal(
    out["decoder_target_tokens"], batch["decoder_target_tokens"]
  )
  assert batch["encoder_input_tokens"][1, 1] == 9  # the input is not edited


def test_vectors_round_trip_as_float16(tmp_path):
  vectors = {"a": np.array([0.6, 0.8]), "b": np.array([1.0, 0.0])}
  path = str(tmp_path / memory_lib.VECTORS_FILE)
  memory_lib.save_vectors(path, vectors)
  loaded = memory_lib.load_vectors(path)
  assert list(loaded) == ["a", "b"]
  np.testing.assert_allclose(loaded["a"], vectors["a"], atol=1e-3)
  assert memory_lib.load_vectors(str(tmp_path / "absent.npz")) == {}
  with pytest.raises(KeyError, match="no stored vector"):
    memory_lib.vectors_of(loaded, ["a", "zzz"])


def test_vector_generator_decoder_sees_only_the_vector(model, params, vocab):
  """Samples depend on the vector (not on other rows of the batch), repeat
  for the same draw and change with the draw."""
  config = query_generators.GenerationConfig(
    num_queries=3, max_query_len=6, batch_size=4, top_k=50, seed=0
  )
  generator = query_generators.VectorQueryGenerator(
    model, params, vocab, config
  )
  rng = np.random.default_rng(0)
  vectors = {
    f"d{i}": v / np.linalg.norm(v)
    for i, v in enumerate(rng.normal(size=(6, tiny_bert.HIDDEN)))
  }
  first = generator.generate_vectors(vectors, draw=0)
  assert set(first) == set(vectors)
  assert all(1 <= len(q) <= 3 for q in first.values())
  alone = generator.generate_vectors({"d4": vectors["d4"]}, draw=0)
  assert alone["d4"] == first["d4"]
  assert generator.generate_vectors(vectors, draw=0) == first
  assert generator.generate_vectors(vectors, draw=1) != first
  text_ids = set(vocab.text_token_ids().tolist())
  for queries in first.values():
    for query in queries:
      assert set(vocab.pieces(query)) <= text_ids  # no [CLS], docid, ...


def test_text_token_ids_leave_out_specials(vocab):
  ids = set(vocab.text_token_ids().tolist())
  for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"):
    assert vocab._tokenizer.token_to_id(special) not in ids  # pylint: disable=protected-access
  assert vocab.pieces("storm")[0] in ids


# ------------------------------------------- continual updates, no bodies --

OLD = {
  f"old{i}": f"{topic} report number {i}"
  for i, topic in enumerate(
    (
      "volcano lava eruption",
      "football striker goal",
      "parliament vote",
      "storm flood coast",
      "bank shares profit",
      "film festival award",
    )
  )
}
NEW = {"new0": "rocket launch moon mission", "new1": "hospital doctors ward"}


def _documents(texts):
  from gr.data import beir

  return {d: beir.Document(d, f"title of {d}", t) for d, t in texts.items()}


def _files_text(folder) -> bytes:
  import os

  data = b""
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        data += f.read()
  return data


def test_generative_memory_checkpoint_holds_no_old_bodies(
  model, params, vocab, tmp_path
):
  import os
  from gr.train import checkpoints
  from gr.continual import update as continual
  from gr.continual import versions
  from gr.data import beir

  settings = strategies.TrainSettings(
    batch_size=8,
    input_length=16,
    log_every=1000,
    optimizer=optimizer_lib.OptimizerConfig(learning_rate=1e-3),
  )
  old = _documents(OLD)
  dataset = beir.BeirDataset(
    old,
    {f"q{d}": " ".join(t.split()[:2]) for d, t in OLD.items()},
    {"train": {f"q{d}": {d: 1} for d in OLD}},
  )
  model_dir, index_dir = str(tmp_path / "model"), str(tmp_path / "index")
  continual.build_initial_version(
    model_dir=model_dir,
    index_dir=index_dir,
    model=model,
    dataset=dataset,
    scheme="atomic",
    scheme_params={},
    vocab_size=0,
    train_steps=0,
    settings=settings,
    generator=generators.TextPseudoQueries(),
  )
  initial = versions.load_version(model_dir)
  assert set(initial.vectors) == set(OLD) and versions.has_bodies(
    initial.memory
  )
  generator = query_generators.VectorQueryGenerator(
    model,
    params,
    vocab,
    query_generators.GenerationConfig(
      num_queries=1, max_query_len=6, batch_size=4
    ),
  )
  for step, new in enumerate((["new0"], ["new1"])):
    continual.update_index(
      model_dir=model_dir,
      index_dir=index_dir,
      model=model,
      new_documents=_documents({d: NEW[d] for d in new}),
      strategy="generative_replay",
      replay_per_batch=2,
      train_steps=2,
      settings=settings,
      memory_generator=generator,
    )
    version = versions.load_version(model_dir)
    artifact = checkpoints.load_artifact(model_dir)
    memory_dir = os.path.join(artifact, versions.MEMORY_DIR)
    assert not os.path.exists(os.path.join(memory_dir, "corpus.jsonl"))
    stored = _files_text(artifact.parent.parent)
    for text in list(OLD.values()) + [NEW[d] for d in new]:
      assert text.encode() not in stored, text
    assert set(version.memory.corpus) == set(OLD) | set(list(NEW)[: step + 1])
    assert set(version.vectors) == set(version.memory.corpus)
    assert not versions.has_bodies(version.memory)
    assert version.memory.qrels["train"] == initial.memory.qrels["train"]
  with pytest.raises(ValueError, match="experience replay needs the old"):
    continual.update_index(
      model_dir=model_dir,
      index_dir=index_dir,
      model=model,
      new_documents=_documents({"new2": "river bridge traffic"}),
      strategy="experience_replay",
      train_steps=1,
      settings=settings,
    )
