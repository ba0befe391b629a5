"""Tests for gr/queries/doc2query.py: a tiny doc2query model learns a copy task.

Toy data: documents are 5-7 distinct words from a 24-word alphabet, each
document's one train query is its first 3 words, and its title is 3 other
words that are not in its body. A model that has learnt the task copies the
first 3 words of whatever text it is given, so it also shows where its input
came from: if the generator read titles, title words would come out.
"""

import dataclasses
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gr.queries import dsi_qg
from gr.queries import query_sampling
from gr.queries import query_generators
from gr.queries import doc2query
from gr.model import family
from gr.model import models
from gr.model import network
from gr import partitioning
from gr.decode import sampling
from gr.train import optimizer as optimizer_lib
from gr.index import vocab as vocab_lib
from gr.data import beir

WORDS = (
  "alpha bravo charlie delta echo foxtrot golf hotel india juliet "
  "kilo lima mike november oscar papa quebec romeo sierra tango "
  "uniform victor whiskey yankee"
).split()
NUM_TRAIN = 2000
NUM_HELD_OUT = 48
INPUT_LENGTH = 12
MAX_QUERY_LEN = 6


def _toy_dataset() -> beir.BeirDataset:
  rng = random.Random(0)
  corpus, queries, qrels = {}, {}, {"train": {}}
  for i in range(NUM_TRAIN + NUM_HELD_OUT):
    body = rng.sample(WORDS, rng.randint(5, 7))
    title = rng.sample([w for w in WORDS if w not in body], 3)
    corpus[f"d{i}"] = beir.Document(f"d{i}", " ".join(title), " ".join(body))
    if i < NUM_TRAIN:
      queries[f"q{i}"] = " ".join(body[:3])
      qrels["train"][f"q{i}"] = {f"d{i}": 1}
  return beir.BeirDataset(corpus, queries, qrels)


DATASET = _toy_dataset()
HELD_OUT = {
  f"d{i}": DATASET.corpus[f"d{i}"]
  for i in range(NUM_TRAIN, NUM_TRAIN + NUM_HELD_OUT)
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(vocab, model, params, model_dir) after 400 steps on the copy task."""
  root = tmp_path_factory.mktemp("d2q")
  vocab = family.corpus_sentencepiece(
    DATASET, str(root / "vocab"), vocab_size=60
  )
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(vocab_size=128, dropout_rate=0.0)
  )
  model, params = doc2query.train_doc2query(
    model=model,
    dataset=DATASET,
    vocab=vocab,
    model_dir=str(root / "model"),
    name="test_d2q_copy",
    train_steps=400,
    batch_size=32,
    input_length=INPUT_LENGTH,
    max_query_len=MAX_QUERY_LEN,
    optimizer=optimizer_lib.OptimizerConfig(learning_rate=3e-3),
    log_every=100,
  )
  return vocab, model, params, str(root / "model")


@pytest.fixture(scope="module")
def generator(trained):
  vocab, model, params, _ = trained
  return query_generators.Doc2QueryGenerator(
    model,
    params,
    vocab,
    query_generators.GenerationConfig(
      num_queries=4,
      input_length=INPUT_LENGTH,
      max_query_len=MAX_QUERY_LEN,
      batch_size=16,
      top_k=3,
      seed=0,
    ),
  )


def _first_three(doc) -> str:
  return " ".join(doc.text.split()[:3])


def test_learns_first_three_words_of_unseen_documents(generator):
  queries = generator.generate(HELD_OUT)
  assert set(queries) == set(HELD_OUT)
  exact = [q == _first_three(HELD_OUT[d]) for d in queries for q in queries[d]]
  docs_hit = [_first_three(HELD_OUT[d]) in queries[d] for d in queries]
  # Chance of an exact 3-word guess is 1 / 24**3 ~ 7e-5.
  assert np.mean(exact) > 0.1, queries
  assert np.mean(docs_hit) > 0.3


def test_generator_reads_bodies_only(generator, monkeypatch):
  seen = []
  real = generator.generate_tokens

  def spy(texts, doc_ids):
    seen.extend(texts)
    return real(texts, doc_ids)

  monkeypatch.setattr(generator, "generate_tokens", spy)
  generator.generate(HELD_OUT)
  assert seen == [doc.text for doc in HELD_OUT.values()]


def _title_and_stray_words(queries, documents):
  """(generated words that are title words, words in neither body nor title).

  Both are words the body does not hold; a model that never reads the title
  has no reason to prefer the 3 title words over the ~15 other stray ones.
  """
  title_count = stray_count = 0
  for doc_id, doc_queries in queries.items():
    doc = documents[doc_id]
    title, body = set(doc.title.split()), set(doc.text.split())
    for query in doc_queries:
      words = set(query.split()) - body
      title_count += len(words & title)
      stray_count += len(words - title)
  return title_count, stray_count


def _title_preference_pvalue(queries, documents) -> float:
  """P(this many title words or more | title words no likelier than stray).

  A document leaves 17 to 19 words out of its body, 3 of them title words.
  """
  title, stray = _title_and_stray_words(queries, documents)
  if not title + stray:
    return 1.0
  return stats.binomtest(
    title, title + stray, 3 / 17, alternative="greater"
  ).pvalue


def test_title_words_are_no_likelier_than_any_stray_word(generator):
  assert _title_preference_pvalue(generator.generate(HELD_OUT), HELD_OUT) > 1e-3
  # Control: with the title leading the text, the copying model emits title
  # words far more than stray ones, so the check above can fail.
  leaked = {
    d: beir.Document(d, doc.title, f"{doc.title} {doc.text}")
    for d, doc in HELD_OUT.items()
  }
  assert _title_preference_pvalue(generator.generate(leaked), HELD_OUT) < 1e-6


def test_generate_queries_matches_generator_and_follows_the_seed(
  trained, generator
):
  vocab, model, params, _ = trained
  config = generator.config
  same = query_generators.generate_queries(
    model, params, vocab, HELD_OUT, config
  )
  assert same == generator.generate(HELD_OUT)
  other = query_generators.generate_queries(
    model, params, vocab, HELD_OUT, dataclasses.replace(config, seed=1)
  )
  assert other != same


def test_seeded_and_independent_of_batch_company(generator):
  docs = list(HELD_OUT.values())
  together = generator.generate(docs[:20])
  compiled = generator._generate._cache_size()  # pylint: disable=protected-access
  alone = generator.generate([docs[7]])
  assert alone[docs[7].doc_id] == together[docs[7].doc_id]
  assert generator.generate(docs[:20]) == together
  # No new compilation for other document counts (the last batch is padded).
  assert generator._generate._cache_size() == compiled  # pylint: disable=protected-access


def test_from_checkpoint_restores_the_trained_params(trained, generator):
  vocab, model, params, model_dir = trained
  loaded = query_generators.Doc2QueryGenerator.from_checkpoint(
    model, vocab, model_dir, generator.config
  )
  jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
  assert set(loaded.generate(HELD_OUT)) == set(HELD_OUT)


def test_sampled_ids_are_text_pieces_or_eos(generator):
  docs = list(HELD_OUT.values())[:16]
  ids, log_probs = generator.generate_tokens(
    [d.text for d in docs], [d.doc_id for d in docs]
  )
  assert ids.shape == (16, 4, MAX_QUERY_LEN)
  assert log_probs.shape == (16, 4)
  assert np.all(np.isfinite(log_probs)) and np.all(log_probs <= 0)
  vocab = generator.vocab
  assert np.all(
    (ids == 0)
    | (ids == vocab_lib.EOS_ID)
    | ((ids > vocab_lib.UNK_ID) & (ids < vocab.sp_size))
  )


def test_text_tokens_excludes_pad_unk_docid_and_padding_rows(trained):
  vocab = vocab_lib.Vocabulary(trained[0].sp_model_path, ("<d_0>", "<d_1>"))
  allowed = query_sampling.text_tokens(vocab, 128)
  assert allowed[vocab_lib.EOS_ID] and allowed[vocab_lib.UNK_ID + 1]
  assert not allowed[vocab_lib.PAD_ID] and not allowed[vocab_lib.UNK_ID]
  assert not allowed[vocab.docid_token_id("<d_0>")]
  assert not allowed[vocab.vocab_size :].any()
  assert allowed.sum() == vocab.sp_size - 2


def test_empty_bodies_get_no_entry(generator):
  docs = [beir.Document("empty", "some title", "  "), HELD_OUT["d2000"]]
  out = generator.generate(docs)
  assert list(out) == ["d2000"]
  assert generator.generate([]) == {}


def test_decode_queries_cuts_at_eos_and_dedups(trained):
  vocab = trained[0]
  alpha, bravo = vocab.encode("alpha"), vocab.encode("bravo")
  rows = [alpha + [1] + bravo, alpha + [1, 0, 0], bravo + [0], [1] + alpha]
  width = max(map(len, rows))
  sequences = np.array([r + [0] * (width - len(r)) for r in rows])
  assert query_sampling.decode_queries(vocab, sequences) == ["alpha", "bravo"]


def test_doc2query_task_reads_bodies_and_train_queries(trained):
  import seqio  # pylint: disable=g-import-not-at-top

  name = doc2query.register_doc2query_task("test_d2q_copy", DATASET, trained[0])
  example = next(
    seqio.get_mixture_or_task(name)
    .get_dataset({"inputs": 32, "targets": 8}, split="train", shuffle=False)
    .as_numpy_iterator()
  )
  doc = DATASET.corpus[example["doc_id"].decode()]
  assert example["inputs_pretokenized"].decode() == doc.text
  assert example["targets_pretokenized"].decode() == _first_three(doc)


def test_dataset_without_train_pairs_is_an_error(trained):
  empty = beir.BeirDataset(DATASET.corpus, {}, {"test": {}})
  with pytest.raises(ValueError, match="no train qrels"):
    doc2query.register_doc2query_task("test_d2q_empty", empty, trained[0])


def test_word_overlap():
  queries = {"a": ["Red fox", "blue"], "b": ["green"]}
  titles = {"a": "The red FOX jumps", "b": "nothing"}
  assert dsi_qg.word_overlap(queries, titles) == pytest.approx(2 / 4)
  assert dsi_qg.word_overlap(queries, titles, ["a"]) == pytest.approx(2 / 3)


# ------------------------------------- cached K/V and mesh (untrained) --

UNTRAINED_CONFIG = query_generators.GenerationConfig(
  num_queries=3,
  input_length=INPUT_LENGTH,
  max_query_len=MAX_QUERY_LEN,
  batch_size=3,
  top_k=20,
  seed=0,
)
SOME_DOCS = list(HELD_OUT.values())[:5]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
  """(vocab, model, params) of a random tiny T5: plumbing, not quality."""
  vocab = family.corpus_sentencepiece(
    DATASET, str(tmp_path_factory.mktemp("vocab")), vocab_size=60
  )
  model = models.fit_vocab(
    models.EncoderDecoderModel(network.T5Config.tiny(vocab_size=128)),
    vocab.vocab_size,
  )
  params = model.init_params(
    jax.random.PRNGKey(1), input_length=INPUT_LENGTH, target_length=6
  )
  return vocab, model, params


def _uncached_generate(model, config):
  """Generation as it was: the encoder states repeated per sample and
  cross-attention K/V projected from them at every step."""
  n, length = config.num_queries, config.max_query_len

  @jax.jit
  def generate(params, encoder_tokens, doc_seeds, allowed):
    rows = encoder_tokens.shape[0] * n
    encoded = jnp.repeat(model.encode(params, encoder_tokens), n, axis=0)
    source = jnp.repeat(encoder_tokens, n, axis=0)

    def tokens_to_logits(decoder_tokens, cache, step):
      del step
      return model.decode_step(params, cache, encoded, source, decoder_tokens)

    sequences, log_probs = sampling.sample(
      tokens_to_logits,
      model.init_cache(params, rows, length),
      rows,
      max_decode_len=length,
      rng=query_sampling._sample_keys(doc_seeds, n),  # pylint: disable=protected-access
      temperature=config.temperature,
      top_k=config.top_k,
      top_p=config.top_p,
      eos_id=vocab_lib.EOS_ID,
      logits_processor=query_sampling.AllowedTokens(allowed),
    )
    return sequences.reshape(-1, n, length), log_probs.reshape(-1, n)

  return generate


def _bodies_and_ids(docs):
  return [d.text for d in docs], [d.doc_id for d in docs]


def test_cached_cross_attention_keeps_the_samples(untrained):
  """Same seeds -> the same tokens as projecting K/V at every step."""
  vocab, model, params = untrained
  generator = query_generators.Doc2QueryGenerator(
    model, params, vocab, UNTRAINED_CONFIG
  )
  texts, doc_ids = _bodies_and_ids(SOME_DOCS[:3])
  ids, log_probs = generator.generate_tokens(texts, doc_ids)
  want_ids, want_log_probs = _uncached_generate(model, UNTRAINED_CONFIG)(
    params,
    vocab_lib.encode_texts(vocab, texts, INPUT_LENGTH),
    query_sampling.document_seeds(UNTRAINED_CONFIG.seed, doc_ids),
    jnp.asarray(query_sampling.text_tokens(vocab, model.config.vocab_size)),
  )
  assert len(np.unique(ids)) > 5  # samples, not all EOS
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(log_probs, want_log_probs, rtol=1e-5, atol=1e-5)


def test_generation_on_a_mesh_equals_one_device(untrained):
  """5 documents in batches of 3 -> 4 (the 'data' axis), the last padded;
  the params split over 'model' = 2."""
  vocab, model, params = untrained
  single = query_generators.Doc2QueryGenerator(
    model, params, vocab, UNTRAINED_CONFIG
  )
  sharded = query_generators.Doc2QueryGenerator(
    model,
    params,
    vocab,
    UNTRAINED_CONFIG,
    mesh=partitioning.make_mesh(data=4, model=2),
  )
  assert sharded.batch_size == 4
  texts, doc_ids = _bodies_and_ids(SOME_DOCS)
  want_ids, want_log_probs = single.generate_tokens(texts, doc_ids)
  ids, log_probs = sharded.generate_tokens(texts, doc_ids)
  assert ids.shape == (5, 3, MAX_QUERY_LEN)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(log_probs, want_log_probs, rtol=1e-5, atol=1e-5)


def test_vector_generation_on_a_mesh_equals_one_device(untrained):
  """The generative-memory path (one vector per document) on 'data' = 8."""
  vocab, model, params = untrained
  rng = np.random.default_rng(0)
  vectors = {f"d{i}": v for i, v in enumerate(rng.normal(size=(5, 64)))}
  single = query_generators.VectorQueryGenerator(
    model, params, vocab, UNTRAINED_CONFIG
  )
  sharded = query_generators.VectorQueryGenerator(
    model, params, vocab, UNTRAINED_CONFIG, mesh=partitioning.make_mesh()
  )
  assert sharded.batch_size == 8
  want = single.generate_vectors(vectors, draw=1)
  assert sum(len(q) for q in want.values()) > 5
  assert sharded.generate_vectors(vectors, draw=1) == want
