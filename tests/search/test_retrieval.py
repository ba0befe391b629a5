"""Tests for gr/search/retrieval.py: Searcher against the exact-ranking oracle.

Every document has 3 docids (multi scheme); a search for all 12 documents
decodes 3 * 12 beams, as many as there are docids, so it is exhaustive and
must equal the exact ranking under either aggregation.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr.index import vocab as vocab_lib
from gr import batching
from gr.decode import aggregate
from gr.index import artifact as index_lib
from gr.index import lexicon
from gr.decode import model_decoder
from gr.decode import plan as plan_lib
from gr.model import lexical as lexical_lib
from gr.model import models
from gr.model import network
from gr import partitioning
from gr.search import exact as exact_lib
from gr.search import retrieval
from gr.data.beir import Document
from gr.experiments import run as experiment
from gr.docids import get_scheme

WORDS = (
  "river stone cloud ember frost grove harbor island jungle kettle "
  "lantern meadow nectar orchard pepper quartz"
).split()
# Short docids (an untrained model gives long ones almost no probability), so
# that adding a document's docid probabilities changes its score.
PARTS = (
  {"scheme": "naive"},
  {"scheme": "text", "method": "prefix", "num_words": 1},
  {"scheme": "text", "method": "tfidf", "num_words": 1},
)


def _corpus() -> dict[str, Document]:
  return {
    f"d{i}": Document(
      f"d{i}", "", " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(8))
    )
    for i in range(12)
  }


@pytest.fixture(scope="module")
def searchers(tmp_path_factory):
  """{aggregation: Searcher} over one index and model."""
  corpus = _corpus()
  table = get_scheme("multi", parts=PARTS).assign(corpus)
  texts = index_lib.training_texts(corpus, {}) * 5
  index = index_lib.build_index(
    table, texts, str(tmp_path_factory.mktemp("idx")), vocab_size=80
  )
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(vocab_size=-(-index.vocab.vocab_size // 128) * 128)
  )
  params = model.init_params(
    jax.random.PRNGKey(0), input_length=16, target_length=8
  )
  config = retrieval.SearchConfig(
    beam_size=len(corpus),
    top_k=len(corpus),
    max_decode_len=index.max_docid_length(),
  )
  return {
    aggregation: retrieval.Searcher(
      model,
      params,
      index,
      dataclasses.replace(config, aggregation=aggregation),
      input_length=16,
      batch_size=4,
    )
    for aggregation in ("max", "logsumexp")
  }


@pytest.fixture(scope="module")
def searcher(searchers):
  return searchers["max"]


QUERIES = ["river stone", "frost grove harbor", "pepper"]


def test_searcher_fits_docids_per_doc_to_the_index(searcher):
  assert searcher.config.docids_per_doc == 3
  assert retrieval.docids_per_document(searcher.index) == 3


@pytest.mark.parametrize("aggregation", ["max", "logsumexp"])
def test_beam_search_with_full_beam_equals_exact_ranking(
  searchers, aggregation
):
  searcher = searchers[aggregation]
  beam = searcher.search(QUERIES)
  exact = exact_lib.exact_ranking(
    searcher, QUERIES, top_k=len(searcher.index.doc_ids)
  )
  for b, e in zip(beam, exact):
    assert [d for d, _ in b] == [d for d, _ in e]
    assert len(b) == len(searcher.index.doc_ids)  # distinct documents
    np.testing.assert_allclose([s for _, s in b], [s for _, s in e], atol=1e-4)


@pytest.mark.parametrize("aggregation", ["max", "logsumexp"])
@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_sparse_output_search_equals_the_restricted_exact_ranking(
  searchers, aggregation, weight
):
  """With the sparse output layer the oracle renormalises each step over
  the trie's allowed tokens, as the search does: a full beam finds the
  oracle's documents in its order and with its scores."""
  searcher = _with_term_sets(searchers[aggregation], weight, sparse_output=True)
  top_k = len(searcher.index.doc_ids)
  beam = searcher.search(QUERIES)
  exact = exact_lib.exact_ranking(searcher, QUERIES, top_k=top_k)
  full = exact_lib.exact_ranking(
    _with_term_sets(searchers[aggregation], weight), QUERIES, top_k=top_k
  )
  for b, e, f in zip(beam, exact, full):
    assert [d for d, _ in b] == [d for d, _ in e]
    np.testing.assert_allclose([s for _, s in b], [s for _, s in e], atol=1e-4)
    assert not np.allclose(
      sorted(s for _, s in e), sorted(s for _, s in f), atol=1e-3
    )  # not the full-vocabulary scores


def _with_term_sets(searcher, weight, language="", words=False, **config):
  """`searcher`'s model and index with the corpus's term sets as a plan
  (terms folded in `language`, '' = pieces; words: a word of several
  pieces is one term)."""
  return retrieval.Searcher(
    searcher.model,
    searcher.params,
    searcher.index,
    dataclasses.replace(searcher.config, **config),
    input_length=searcher.input_length,
    batch_size=searcher.batch_size,
    term_sets=lexicon.build_term_sets(
      searcher.index, _corpus(), language=language, words=words
    ),
    lexical_weight=weight,
  )


@pytest.fixture(scope="module")
def planned(searchers):
  """A Searcher with a lexical plan (weight 2) and an exhaustive beam."""
  return _with_term_sets(searchers["logsumexp"], 2.0)


@pytest.mark.parametrize(
  "language, words", [("", False), ("english", False), ("english", True)]
)
def test_plan_document_scores_equal_the_numpy_oracle(
  searchers, language, words
):
  planned = _with_term_sets(searchers["logsumexp"], 2.0, language, words)
  assert planned.term_sets.words == words  # the corpus has split words
  tokens = vocab_lib.encode_texts(planned.index.vocab, QUERIES, 16)
  got = np.asarray(planned.plan.document_scores(jnp.asarray(tokens)))
  for row, query in zip(got, tokens):
    want = exact_lib.exact_lexical_scores(
      planned.term_sets, planned.index.vocab, query
    )
    np.testing.assert_allclose(row, want, rtol=1e-5)
    assert want.max() > 0  # the queries share terms with documents


@pytest.mark.parametrize("sparse_output", [False, True])
@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_step_zero_once_per_query_finds_what_once_per_beam_finds(
  searchers, sparse_output, weight
):
  """SearchConfig.first_step runs step 0 once per query, not once per beam
  (every beam holds BOS then): a narrow beam finds the same documents with
  the same scores, with the plan's look-ahead and without."""
  found = {
    first_step: _with_term_sets(
      searchers["max"],
      weight,
      sparse_output=sparse_output,
      first_step=first_step,
      beam_size=3,
      top_k=3,
    ).search(QUERIES)
    for first_step in (True, False)
  }
  for once, per_beam in zip(found[True], found[False]):
    assert [d for d, _ in once] == [d for d, _ in per_beam]
    np.testing.assert_allclose(
      [s for _, s in once], [s for _, s in per_beam], atol=1e-5
    )


def test_beam_search_with_a_plan_equals_the_fused_exact_ranking(
  planned, searchers
):
  top_k = len(planned.index.doc_ids)
  beam = planned.search(QUERIES)
  exact = exact_lib.exact_ranking(planned, QUERIES, top_k=top_k)
  plain = exact_lib.exact_ranking(searchers["logsumexp"], QUERIES, top_k=top_k)
  tokens = vocab_lib.encode_texts(planned.index.vocab, QUERIES, 16)
  for b, e, p, query in zip(beam, exact, plain, tokens):
    assert [d for d, _ in b] == [d for d, _ in e]
    np.testing.assert_allclose([s for _, s in b], [s for _, s in e], atol=1e-4)
    lexical = exact_lib.exact_lexical_scores(
      planned.term_sets, planned.index.vocab, query
    )
    position = {d: i for i, d in enumerate(planned.index.doc_ids)}
    fused = {d: s + 2.0 * lexical[position[d]] for d, s in p}
    np.testing.assert_allclose(
      [s for _, s in e], [fused[d] for d, _ in e], atol=1e-4
    )
  assert [d for d, _ in beam[0]] != [d for d, _ in plain[0]]  # it matters


def test_a_dominant_plan_guides_a_narrow_beam_to_the_lexical_best(searchers):
  searcher = _with_term_sets(searchers["max"], 1e3, beam_size=2, top_k=3)
  tokens = vocab_lib.encode_texts(searcher.index.vocab, QUERIES, 16)
  for ranking, query in zip(searcher.search(QUERIES), tokens):
    lexical = exact_lib.exact_lexical_scores(
      searcher.term_sets, searcher.index.vocab, query
    )
    position = {d: i for i, d in enumerate(searcher.index.doc_ids)}
    found = sorted((lexical[position[d]] for d, _ in ranking), reverse=True)
    np.testing.assert_allclose(found, np.sort(lexical)[::-1][:3], rtol=1e-5)


def test_an_unguided_plan_with_a_full_beam_is_the_fused_exact_ranking(
  planned,
):
  """Without the look-ahead the lexical score comes only at EOS; with every
  docid in the beam the totals, and so the ranking, are the same."""
  searcher = _with_term_sets(planned, 2.0, plan_guidance=False)
  assert not searcher.plan.guided
  exact = exact_lib.exact_ranking(searcher, QUERIES, top_k=5)
  for b, e in zip(searcher.search(QUERIES), exact):
    assert [d for d, _ in b][:5] == [d for d, _ in e]
    np.testing.assert_allclose(
      [s for _, s in b][:5], [s for _, s in e], atol=1e-4
    )


def test_a_narrow_unguided_beam_misses_what_guidance_finds(searchers):
  """Beam 2, a dominant plan: guided, the beams reach the lexical best
  (test above); unguided, they are the model's, reranked."""
  searcher = _with_term_sets(
    searchers["max"], 1e3, beam_size=2, top_k=3, plan_guidance=False
  )
  tokens = vocab_lib.encode_texts(searcher.index.vocab, QUERIES, 16)
  position = {d: i for i, d in enumerate(searcher.index.doc_ids)}
  missed = 0
  for ranking, query in zip(searcher.search(QUERIES), tokens):
    lexical = exact_lib.exact_lexical_scores(
      searcher.term_sets, searcher.index.vocab, query
    )
    best = np.sort(lexical)[::-1][:3]
    found = sorted((lexical[position[d]] for d, _ in ranking), reverse=True)
    missed += not np.allclose(found, best[: len(found)], rtol=1e-5)
  assert missed > 0


def test_lexical_only_search_ranks_by_the_term_sets(planned):
  searcher = _with_term_sets(planned, np.inf, top_k=5)
  beam = searcher.search(QUERIES)
  exact = exact_lib.exact_ranking(searcher, QUERIES, top_k=5)
  for b, e in zip(beam, exact):
    np.testing.assert_allclose([s for _, s in b], [s for _, s in e], rtol=1e-5)
    assert all(s > 0 for _, s in b)
  planned.lexical_weight = 2.0  # weights change without a new Searcher
  with pytest.raises(ValueError, match="lexical_weight"):
    planned.lexical_weight = -1.0


def test_a_plan_needs_term_sets(searcher):
  with pytest.raises(ValueError, match="term sets"):
    retrieval.Searcher(
      searcher.model,
      searcher.params,
      searcher.index,
      searcher.config,
      lexical_weight=1.0,
    )


def _docid_oracle(searcher, query):
  """Brute force: {doc_id: [log-prob of each of its docids]}."""
  sequences, values = searcher.index.docid_sequences()
  targets = np.zeros((len(sequences), searcher.config.max_decode_len), np.int32)
  for row, sequence in enumerate(sequences):
    targets[row, : len(sequence)] = sequence
  tokens = vocab_lib.encode_texts(
    searcher.index.vocab, [query], searcher.input_length
  )[0]
  scores = retrieval.make_score_fn(searcher.model)(
    searcher.params, tokens, targets
  )
  per_doc = {}
  for value, score in zip(values, np.asarray(scores, np.float64)):
    per_doc.setdefault(searcher.index.doc_ids[value], []).append(score)
  return per_doc


def test_exact_ranking_merges_docids_by_the_aggregation(searchers):
  per_doc = _docid_oracle(searchers["max"], QUERIES[0])
  merged = {
    "max": {d: max(s) for d, s in per_doc.items()},
    "logsumexp": {d: float(np.logaddexp.reduce(s)) for d, s in per_doc.items()},
  }
  for aggregation, searcher in searchers.items():
    (ranking,) = exact_lib.exact_ranking(searcher, QUERIES[:1], top_k=5)
    want = sorted(merged[aggregation].items(), key=lambda x: -x[1])[:5]
    assert [d for d, _ in ranking] == [d for d, _ in want]
    np.testing.assert_allclose(
      [s for _, s in ranking], [s for _, s in want], atol=1e-4
    )
  gaps = [merged["logsumexp"][d] - merged["max"][d] for d in per_doc]
  assert max(gaps) > 1e-2  # the two aggregations are told apart


def test_every_result_is_an_indexed_document_once(searcher):
  rankings = searcher.search(["meadow nectar"] * 5)  # > batch_size: 2 chunks
  assert len(rankings) == 5
  for ranking in rankings:
    ids = [d for d, _ in ranking]
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(searcher.index.doc_ids)
    scores = [s for _, s in ranking]
    assert scores == sorted(scores, reverse=True)
  assert rankings[0] == rankings[4]


def test_encode_queries_trims_and_terminates(searcher):
  tokens = vocab_lib.encode_texts(
    searcher.index.vocab, [" ".join(WORDS * 3), "river"], 16
  )
  assert tokens.shape == (2, 16)
  assert tokens[0, -1] == 1  # EOS kept after trimming
  assert (tokens[1] > 0).sum() == len(searcher.index.vocab.encode("river")) + 1


def _uncached_search_fn(model, config):
  """The search as it was: cross-attention K/V projected at every step."""
  beams, _ = aggregate.document_search_sizes(
    config.beam_size, config.top_k, config.docids_per_doc
  )

  @jax.jit
  def search(params, encoder_tokens, trie_arrays):
    batch = encoder_tokens.shape[0]
    encoded = jnp.repeat(model.encode(params, encoder_tokens), beams, axis=0)
    tokens = jnp.repeat(encoder_tokens, beams, axis=0)

    def tokens_to_logits(decoder_tokens, cache, step):
      del step
      return model.decode_step(params, cache, encoded, tokens, decoder_tokens)

    return aggregate.constrained_document_search(
      tokens_to_logits,
      model.init_cache(params, batch, config.max_decode_len),
      batch,
      trie_arrays,
      beam_size=config.beam_size,
      max_decode_len=config.max_decode_len,
      top_k=config.top_k,
      docids_per_doc=config.docids_per_doc,
      aggregation=config.aggregation,
    )

  return search


@pytest.mark.parametrize("beam_size", [3, 12])
def test_cached_cross_attention_keeps_the_beams(searcher, beam_size):
  """Searcher projects cross-attention K/V once per query: same documents,
  docids and scores as projecting them at every step."""
  config = dataclasses.replace(
    searcher.config, beam_size=beam_size, top_k=beam_size
  )
  tokens = vocab_lib.encode_texts(
    searcher.index.vocab, QUERIES + ["meadow"], 16
  )
  args = (searcher.params, tokens, searcher.trie_arrays)
  cached = retrieval.make_search_fn(searcher.model, config)(*args)
  uncached = _uncached_search_fn(searcher.model, config)(*args)
  np.testing.assert_array_equal(cached.documents, uncached.documents)
  np.testing.assert_array_equal(cached.docids, uncached.docids)
  np.testing.assert_allclose(
    cached.scores, uncached.scores, rtol=1e-6, atol=1e-6
  )


def _dense_restricted_search_fn(model, config):
  """The reference of sparse_output: full logits, masked to the trie and
  renormalised ([N, V] at every step)."""
  beams, _ = aggregate.document_search_sizes(
    config.beam_size, config.top_k, config.docids_per_doc
  )

  @jax.jit
  def search(params, encoder_tokens, trie_arrays):
    batch = encoder_tokens.shape[0]
    encoded = jnp.repeat(model.encode(params, encoder_tokens), beams, axis=0)
    tokens = jnp.repeat(encoder_tokens, beams, axis=0)
    return aggregate.constrained_document_search(
      model_decoder.step_fn(model, params, encoded, tokens),
      model.init_cache(params, batch, config.max_decode_len),
      batch,
      trie_arrays,
      beam_size=config.beam_size,
      max_decode_len=config.max_decode_len,
      top_k=config.top_k,
      docids_per_doc=config.docids_per_doc,
      aggregation=config.aggregation,
      dense_mask=True,
      sparse_output=True,
    )

  return search


@pytest.mark.parametrize("beam_size", [2, 12])
def test_sparse_output_equals_the_dense_restricted_scores(searcher, beam_size):
  config = dataclasses.replace(
    searcher.config, beam_size=beam_size, top_k=beam_size, sparse_output=True
  )
  tokens = vocab_lib.encode_texts(
    searcher.index.vocab, QUERIES + ["meadow"], 16
  )
  args = (searcher.params, tokens, searcher.trie_arrays)
  sparse = retrieval.make_search_fn(searcher.model, config)(*args)
  dense = _dense_restricted_search_fn(searcher.model, config)(*args)
  np.testing.assert_array_equal(sparse.documents, dense.documents)
  np.testing.assert_array_equal(sparse.docids, dense.docids)
  np.testing.assert_allclose(sparse.scores, dense.scores, rtol=1e-5, atol=1e-5)
  full = retrieval.make_search_fn(
    searcher.model, dataclasses.replace(config, sparse_output=False)
  )(*args)
  assert not np.allclose(sparse.scores, full.scores, atol=1e-3)
  if beam_size == len(searcher.index.doc_ids):  # every docid found
    docid_scores = np.asarray(sparse.docid_scores, np.float64)
    np.testing.assert_allclose(  # a distribution over the trie's docids
      np.logaddexp.reduce(docid_scores.reshape(len(tokens), -1), axis=1),
      0.0,
      atol=1e-4,
    )


def test_searcher_with_sparse_output(searcher):
  config = dataclasses.replace(searcher.config, sparse_output=True)
  sparse = retrieval.Searcher(
    searcher.model,
    searcher.params,
    searcher.index,
    config,
    input_length=16,
    batch_size=4,
  )
  rankings = sparse.search(QUERIES)
  assert [len(r) for r in rankings] == [len(searcher.index.doc_ids)] * 3
  for ranking in rankings:
    assert all(s <= 1e-6 for _, s in ranking)


# ------------------------------------------------------------------ mesh --

MESHES = {"data8": dict(data=8, model=1), "data4_model2": dict(data=4, model=2)}


@pytest.fixture(scope="module", params=sorted(MESHES))
def mesh(request):
  return partitioning.make_mesh(**MESHES[request.param])


def _on_mesh(searcher, mesh, **overrides):
  return retrieval.Searcher(
    searcher.model,
    searcher.params,
    searcher.index,
    dataclasses.replace(searcher.config, **overrides),
    input_length=searcher.input_length,
    batch_size=3,  # rounded up to the 'data' axis: 4 or 8 rows
    mesh=mesh,
  )


@pytest.mark.parametrize(
  "aggregation, beam_size", [("max", 3), ("logsumexp", 12)]
)
def test_searcher_on_a_mesh_equals_one_device(
  searchers, aggregation, beam_size
):
  """5 queries: two batches of 4 (the last padded), each split over 'data'
  = 4, the params over 'model' = 2."""
  queries = QUERIES + ["meadow", "island kettle"]
  searcher = searchers[aggregation]
  overrides = dict(beam_size=beam_size, top_k=beam_size)
  single = retrieval.Searcher(
    searcher.model,
    searcher.params,
    searcher.index,
    dataclasses.replace(searcher.config, **overrides),
    input_length=16,
    batch_size=4,
  )
  sharded = _on_mesh(
    searcher, partitioning.make_mesh(data=4, model=2), **overrides
  )
  assert sharded.batch_size == 4
  want, got = single.search(queries), sharded.search(queries)
  assert len(got) == len(queries)
  for w, g in zip(want, got):
    assert [d for d, _ in g] == [d for d, _ in w]
    np.testing.assert_allclose(
      [s for _, s in g], [s for _, s in w], rtol=1e-5, atol=1e-5
    )


def test_params_on_a_mesh_follow_the_training_rules(searcher):
  mesh = partitioning.make_mesh(data=4, model=2)
  sharded = _on_mesh(searcher, mesh)
  embedding = sharded.params["token_embedder"]["embedding"]  # [vocab, embed]
  assert embedding.sharding.spec == jax.sharding.PartitionSpec("model", None)
  tokens = vocab_lib.encode_texts(searcher.index.vocab, QUERIES, 16)
  found = sharded._search(  # pylint: disable=protected-access
    sharded.params, batching.pad_rows(tokens, 4), sharded.trie_arrays
  )
  assert found.documents.sharding.spec[0] == "data"


def test_exact_ranking_on_a_mesh_equals_one_device(searchers, mesh):
  searcher = searchers["logsumexp"]
  sharded = _on_mesh(searcher, mesh)
  top_k = len(searcher.index.doc_ids)
  # 36 docids in batches of 10, rounded up to 16 (a multiple of 'data'):
  # the last chunk is padded
  want = exact_lib.exact_ranking(searcher, QUERIES, top_k=top_k, batch_size=10)
  got = exact_lib.exact_ranking(sharded, QUERIES, top_k=top_k, batch_size=10)
  for w, g in zip(want, got):
    assert [d for d, _ in g] == [d for d, _ in w]
    np.testing.assert_allclose(
      [s for _, s in g], [s for _, s in w], rtol=1e-5, atol=1e-5
    )


def test_first_token_bias_is_the_best_plan_score_beneath_each_token(planned):
  tokens = vocab_lib.encode_texts(planned.index.vocab, QUERIES, 16)
  vocab_size = planned.model.config.vocab_size
  bias = np.asarray(
    plan_lib.first_token_bias(
      planned.plan, planned.trie_arrays, jnp.asarray(tokens), vocab_size
    )
  )
  assert bias.shape == (len(QUERIES), vocab_size)
  sequences, values = planned.index.docid_sequences()
  for row, query in zip(bias, tokens):
    lexical = exact_lib.exact_lexical_scores(
      planned.term_sets, planned.index.vocab, query
    )
    want = np.zeros(vocab_size)
    for sequence, document in zip(sequences, values):
      want[sequence[0]] = max(want[sequence[0]], 2.0 * lexical[document])
    np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
    assert row.max() > 0


def _training_batch(searcher, size: int) -> dict:
  """A teacher-forced batch: query "river" to the first `size` docids."""
  targets = batching.pad_sequences(
    searcher.index.docid_sequences()[0][:size], 8
  )
  return {
    "encoder_input_tokens": vocab_lib.encode_texts(
      searcher.index.vocab, ["river"] * size, 16
    ),
    "decoder_target_tokens": targets,
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_loss_weights": (targets > 0).astype(np.int32),
  }


def test_the_loss_learns_on_top_of_a_first_token_bias(searcher):
  model, params = searcher.model, searcher.params
  batch = _training_batch(searcher, 4)
  targets = batch["decoder_target_tokens"]
  plain, _ = model.loss_fn(params, batch, None)
  bias = np.zeros((4, model.config.vocab_size), np.float32)
  bias[np.arange(4), targets[:, 0]] = 30.0  # the plan already knows
  helped, _ = model.loss_fn(params, {**batch, "decoder_first_bias": bias}, None)
  assert float(helped) < float(plain) - 1.0


def test_the_plan_bias_transform_runs_under_the_training_transfer_guard(
  planned,
):
  tokens = vocab_lib.encode_texts(planned.index.vocab, QUERIES, 16)
  transform = experiment.plan_bias_transform(planned, None)
  with jax.transfer_guard("disallow"):
    batch = transform({"encoder_input_tokens": tokens})
  want = plan_lib.first_token_bias(
    planned.plan,
    planned.trie_arrays,
    jnp.asarray(tokens),
    planned.model.config.vocab_size,
  )
  np.testing.assert_allclose(batch["decoder_first_bias"], want)
  planned.lexical_weight = np.inf  # no finite plan: no bias
  assert experiment.plan_bias_transform(planned, None) is None
  planned.lexical_weight = 2.0


def test_the_z_loss_ignores_the_first_token_bias(searcher):
  model, params = searcher.model, searcher.params
  batch = _training_batch(searcher, 2)
  bias = np.full((2, model.config.vocab_size), 50.0, np.float32)
  _, plain = model.loss_fn(params, batch, None)
  _, shifted = model.loss_fn(
    params, {**batch, "decoder_first_bias": bias}, None
  )
  # A constant bias changes no probability, and the model's logZ is kept.
  np.testing.assert_allclose(shifted["z_loss"], plain["z_loss"], rtol=1e-5)
  np.testing.assert_allclose(
    shifted["cross_entropy"], plain["cross_entropy"], rtol=1e-4
  )


def _head(searcher, seed=0):
  """A non-trivial term-weight head for the searcher's encoder width."""
  width = searcher.model.encode(
    searcher.params, jnp.ones((1, 2), jnp.int32)
  ).shape[-1]
  kernel = jax.random.normal(jax.random.PRNGKey(seed), (width,)) * 0.3
  return lexical_lib.TermWeightHead(kernel, jnp.asarray(0.2, jnp.float32))


def _expanded_head(searcher, seed=0, gate=0.5):
  """`_head` with an `Expansion` of random pieces and projection, adding
  4 terms per query at weight gate * pooled."""
  head = _head(searcher, seed)
  width = head.kernel.shape[0]
  count = searcher.lexical_index.term_of.shape[0]  # the vocabulary's pieces
  keys = jax.random.split(jax.random.PRNGKey(seed + 7))
  pieces = jax.random.normal(keys[0], (count, width))
  projection = jax.random.normal(keys[1], (width, width)) / np.sqrt(width)
  expansion = lexical_lib.Expansion(
    pieces=pieces,
    projection=projection,
    bias=jnp.asarray(0.0),
    gate=jnp.asarray(gate),
    width=4,
  )
  return head.replace(expansion=expansion)


def test_an_expansion_adds_terms_the_query_lacks(searchers):
  """The added terms are other than the query's own and term 0, weigh
  >= 0, and the device scores with them equal the numpy oracle's."""
  planned = _with_term_sets(searchers["logsumexp"], 2.0)
  planned.term_weight_head = _expanded_head(planned)
  without = _with_term_sets(searchers["logsumexp"], 2.0)
  without.term_weight_head = _head(planned)
  tokens = jnp.asarray(vocab_lib.encode_texts(planned.index.vocab, QUERIES, 16))
  states = planned.model.encode(planned.params, tokens)
  got = np.asarray(planned.plan.document_scores(tokens, states))
  own = np.asarray(lexical_lib.query_terms(planned.lexical_index, tokens))
  for row, query, query_terms in zip(got, np.asarray(tokens), own):
    weights, added = exact_lib.query_head_weights(planned, query)
    assert added is not None and len(added[0]) == 4
    assert not set(added[0]) & (set(query_terms) | {0})
    assert (added[1] > 0).all()
    want = exact_lib.exact_lexical_scores(
      planned.term_sets, planned.index.vocab, query, weights, added
    )
    np.testing.assert_allclose(row, want, rtol=1e-5)
  assert not np.allclose(
    got, without.plan.document_scores(tokens, states), rtol=1e-3
  )


def test_a_term_weight_head_weighs_each_query_token(searchers):
  """Device scores with a head equal the numpy oracle given the same
  token weights, and differ from the unweighted plan's."""
  planned = _with_term_sets(searchers["logsumexp"], 2.0)
  plain = planned.plan
  planned.term_weight_head = _head(planned)
  tokens = jnp.asarray(vocab_lib.encode_texts(planned.index.vocab, QUERIES, 16))
  states = planned.model.encode(planned.params, tokens)
  got = np.asarray(planned.plan.document_scores(tokens, states))
  for row, query in zip(got, np.asarray(tokens)):
    want = exact_lib.exact_lexical_scores(
      planned.term_sets,
      planned.index.vocab,
      query,
      *exact_lib.query_head_weights(planned, query),
    )
    np.testing.assert_allclose(row, want, rtol=1e-5)
  assert not np.allclose(got, plain.document_scores(tokens), rtol=1e-3)
  with pytest.raises(ValueError, match="needs the states"):
    planned.plan.document_scores(tokens)


@pytest.mark.parametrize("expanded", [False, True])
def test_beam_search_with_a_head_equals_the_fused_exact_ranking(
  searchers, expanded
):
  planned = _with_term_sets(searchers["logsumexp"], 2.0)
  planned.term_weight_head = (
    _expanded_head(planned, seed=1) if expanded else _head(planned, seed=1)
  )
  top_k = len(planned.index.doc_ids)
  beam = planned.search(QUERIES)
  exact = exact_lib.exact_ranking(planned, QUERIES, top_k=top_k)
  for b, e in zip(beam, exact):
    assert [d for d, _ in b] == [d for d, _ in e]
    np.testing.assert_allclose([s for _, s in b], [s for _, s in e], atol=1e-4)
  planned.lexical_weight = float("inf")  # the term sets alone, weighted
  lexical = planned.search(QUERIES)
  oracle = exact_lib.exact_ranking(planned, QUERIES, top_k=top_k)
  for b, e in zip(lexical, oracle):
    assert [d for d, _ in b] == [d for d, _ in e][: len(b)]


@pytest.mark.parametrize("expanded", [False, True])
def test_a_zero_head_searches_as_no_head(planned, searchers, expanded):
  """Zeros, and a zero-gate expansion (the start), change nothing."""
  zero = _with_term_sets(searchers["logsumexp"], 2.0)
  expansion = _expanded_head(zero, gate=0.0).expansion if expanded else None
  zero.term_weight_head = lexical_lib.TermWeightHead.zeros(
    _head(zero).kernel.shape[0], expansion
  )
  for a, b in zip(zero.search(QUERIES), planned.search(QUERIES)):
    assert [d for d, _ in a] == [d for d, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


@pytest.mark.parametrize(
  "longest, max_length, bucket",
  [(0, 128, 16), (3, 128, 16), (17, 128, 32), (128, 128, 128),
   (90, 100, 100), (5, 8, 8), (600, 1024, 1024)],
)  # fmt: skip
def test_a_batch_is_cut_to_the_smallest_length_bucket(
  longest, max_length, bucket
):
  tokens = np.zeros((3, max_length), np.int32)
  tokens[1, :longest] = 7
  assert bucket in retrieval.input_lengths(max_length)  # what a server compiles
  assert retrieval.input_bucket(tokens, max_length) == bucket
  cut = retrieval.cut_to_bucket(tokens)
  assert cut.shape == (3, bucket)
  np.testing.assert_array_equal(cut, tokens[:, :bucket])
