"""Contrastive encoder tuning (gr/train/encoder_tuning.py): the in-batch
loss against a numpy reference, batches without repeated bodies, and a
tuned tiny BERT that learns a word mapping shared by every document, so
documents it never trained on are found better than at the start."""

import dataclasses

import jax
import numpy as np
import pytest

from gr.model import embed
from gr.train import encoder_tuning
from tests.support import synonym_corpus
from tests.support import tiny_bert

TUNING = encoder_tuning.EncoderTuning(
  steps=60, batch_size=8, learning_rate=3e-3, query_length=8
)


def _mrr(embedder, pairs, indices) -> float:
  """MRR@10 of the bodies for the queries at `indices`, exact cosine."""
  queries = embedder.embed([pairs[i][0] for i in indices])
  bodies = embedder.embed([body for _, body in pairs])
  scores = queries @ bodies.T
  gold = scores[np.arange(len(indices)), list(indices)]
  ranks = (scores > gold[:, None]).sum(1)
  return float(np.where(ranks < 10, 1 / (ranks + 1), 0).mean())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  folder = tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("bert")))
  start = embed.Embedder.load(folder, max_length=16)
  pairs = synonym_corpus.documents(60)
  params, losses = encoder_tuning.tune(start, pairs[:40], TUNING)
  return (
    start,
    embed.Embedder(start.config, params, start.tokenizer, 16),
    pairs,
    losses,
  )


def test_in_batch_loss_is_the_softmax_cross_entropy_of_the_diagonal():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((5, 3)).astype(np.float32)
  d = rng.standard_normal((5, 3)).astype(np.float32)
  logits = q @ d.T / 0.1
  log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -np.mean(np.diag(log_softmax))
  got = float(encoder_tuning.in_batch_loss(q, d, 0.1))
  assert got == pytest.approx(expected, rel=1e-5)


def test_a_batch_never_holds_a_body_twice():
  pairs = [(f"q{i}", f"body {i % 5}") for i in range(20)]
  batches = encoder_tuning._batches(
    pairs, encoder_tuning.EncoderTuning(batch_size=5)
  )
  for _ in range(6):
    bodies = [pairs[row][1] for row in next(batches)]
    assert len(bodies) == len(set(bodies)) == 5


def test_too_few_distinct_bodies_for_a_batch_is_an_error():
  pairs = [("a", "one"), ("b", "two"), ("c", "one")]
  with pytest.raises(ValueError, match="only 2 distinct bodies"):
    next(
      encoder_tuning._batches(pairs, encoder_tuning.EncoderTuning(batch_size=3))
    )


def test_tuning_learns_a_mapping_that_reaches_unseen_documents(tuned):
  """Queries and bodies share no word; the start is near chance. Trained on
  40 documents' pairs, the encoder finds the other 20 (never trained on)
  much better than at the start."""
  start, after, pairs, losses = tuned
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
  unseen = range(40, 60)
  assert _mrr(after, pairs, unseen) > _mrr(start, pairs, unseen) + 0.15


def test_zero_learning_rate_keeps_the_encoder(tuned):
  start, _, pairs, _ = tuned
  frozen, _ = encoder_tuning.tune(
    start, pairs[:40],
    encoder_tuning.EncoderTuning(steps=2, batch_size=8, learning_rate=0.0,
      query_length=8))  # fmt: skip
  np.testing.assert_array_equal(
    frozen["layer_0"]["output"]["kernel"],
    start.params["layer_0"]["output"]["kernel"],
  )


def test_a_lead_pseudo_query_is_one_of_the_first_sentences():
  rng = np.random.default_rng(0)
  body = "First one has five words. Second one has five words too. Third is also long enough here. Fourth sentence is never chosen now."
  for _ in range(10):
    lead = encoder_tuning.lead_pseudo_query(body, rng)
    assert lead in body and "Fourth" not in lead
  assert (
    encoder_tuning.lead_pseudo_query("Only one sentence of words here.", rng)
    is None
  )


def test_a_masked_copy_of_the_own_body_is_not_a_negative():
  """Docs = 3 positives + 3 negatives where negative 0 is query 1's own
  body: masked, the loss is the loss over the other columns."""
  rng = np.random.default_rng(1)
  q = rng.standard_normal((3, 4)).astype(np.float32)
  d = rng.standard_normal((6, 4)).astype(np.float32)
  d[3] = d[1]
  allowed = np.ones((3, 6), bool)
  allowed[1, 3] = False
  got = float(encoder_tuning.in_batch_loss(q, d, 0.5, allowed))
  logits = q @ d.T / 0.5
  expected = []
  for i in range(3):
    row = logits[i][allowed[i]]
    expected.append(np.log(np.exp(row).sum()) - logits[i, i])
  assert got == pytest.approx(np.mean(expected), rel=1e-5)


def test_tuning_with_hard_negatives_learns_too(tuned):
  """Each pair's negative is the body of a document sharing a concept:
  the tuned encoder still finds unseen documents better than the start."""
  start, _, pairs, _ = tuned
  train = pairs[:40]
  negatives = [train[(i + 1) % 40][1] for i in range(40)]
  params, losses = encoder_tuning.tune(
    start, train, dataclasses.replace(TUNING, hard_negatives=True), negatives
  )
  after = embed.Embedder(start.config, params, start.tokenizer, 16)
  assert (
    _mrr(after, pairs, range(40, 60)) > _mrr(start, pairs, range(40, 60)) + 0.15
  )


def test_max_passes_bounds_the_steps(tuned):
  bounded = encoder_tuning.EncoderTuning(
    steps=150, batch_size=32, max_passes=1.0
  )
  assert bounded.steps_for(365) == 12 and bounded.steps_for(4842) == 150
  assert encoder_tuning.EncoderTuning(steps=150).steps_for(10) == 150
  start, _, pairs, _ = tuned
  _, losses = encoder_tuning.tune(
    start, pairs[:40],
    dataclasses.replace(TUNING, steps=100, max_passes=0.5))  # fmt: skip
  assert len(losses) == 3  # ceil(0.5 * 40 / 8)


def test_tuning_only_the_top_layer_leaves_the_rest_as_it_was(tuned):
  """trainable_layers=1 of 2: layer_1 learns (and still reaches unseen
  documents); layer_0 and the embeddings are bit-identical, weight decay
  included."""
  start, _, pairs, _ = tuned
  params, _ = encoder_tuning.tune(
    start, pairs[:40], dataclasses.replace(TUNING, trainable_layers=1)
  )
  for frozen in ("layer_0", "word_embeddings", "embeddings_norm"):
    for got, want in zip(
      jax.tree.leaves(params[frozen]), jax.tree.leaves(start.params[frozen])
    ):
      np.testing.assert_array_equal(got, want)
  moved = params["layer_1"]["output"]["kernel"]
  assert not np.allclose(moved, start.params["layer_1"]["output"]["kernel"])
  after = embed.Embedder(start.config, params, start.tokenizer, 16)
  assert _mrr(after, pairs, range(40, 60)) > _mrr(start, pairs, range(40, 60))
