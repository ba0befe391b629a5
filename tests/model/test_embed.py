"""MiniLM encoder in Flax (gr/model/embed.py) against sentence-transformers."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
import sentence_transformers

from gr.model import embed

SENTENCES = [
  "Hello world",
  "The central bank raised interest rates by a quarter point on Wednesday.",
  "A cat sat on the mat.",
  "Ünïcødé tëxt — naïve café, Zürich; emoji 🚀 and 日本語のテキスト",
  "Привет, как дела?",
  "",
  "   spaces   and\ttabs\nand newlines   ",
  "word " * 400,  # > 256 tokens: truncated.
  " ".join(f"token{i}" for i in range(300)),
  "Short.",
  "1234567890 $%^&*() <html> tags </html>",
]


@pytest.fixture(scope="module")
def embedder():
  return embed.Embedder.load()


@pytest.fixture(scope="module")
def vectors(embedder):
  return embedder.embed(SENTENCES, batch_size=16)


def test_matches_sentence_transformers(vectors):
  peer = sentence_transformers.SentenceTransformer(
    embed.default_model_dir(), device="cpu"
  )
  assert peer.max_seq_length == 256
  expected = peer.encode(SENTENCES, normalize_embeddings=True)
  cosine = (vectors * expected).sum(axis=1)
  assert vectors.shape == (len(SENTENCES), 384)
  assert cosine.min() >= 0.999, cosine


def test_unit_norm_truncation_and_batch_invariance(embedder, vectors):
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  assert len(embedder.tokenizer.encode(SENTENCES[7]).ids) == 256
  # Different batch sizes mean different padding and bucket lengths.
  small = embedder.embed(SENTENCES, batch_size=4)
  np.testing.assert_allclose(small, vectors, atol=2e-5)
  assert embedder.embed([], batch_size=4).shape == (0, 384)


def test_sharded_over_a_data_mesh_gives_the_same_vectors(embedder, vectors):
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = embed.Embedder(
    embedder.config,
    embedder.params,
    embedder.tokenizer,
    embedder.max_length,
    mesh=mesh,
  )
  np.testing.assert_allclose(
    sharded.embed(SENTENCES, batch_size=16), vectors, atol=2e-5
  )
  with pytest.raises(ValueError, match="multiple"):
    sharded.embed(SENTENCES, batch_size=12)


def test_cache_is_reused_only_for_the_same_texts(tmp_path):
  calls = []

  def fake_embed(texts):
    calls.append(list(texts))
    return np.arange(len(texts) * 2, dtype=np.float32).reshape(-1, 2)

  path = str(tmp_path / "cache" / "emb.npy")
  first = embed.embed_with_cache(["a", "b"], path, fake_embed)
  second = embed.embed_with_cache(["a", "b"], path, fake_embed)
  np.testing.assert_array_equal(first, second)
  assert len(calls) == 1
  embed.embed_with_cache(["a", "c"], path, fake_embed)
  assert len(calls) == 2
