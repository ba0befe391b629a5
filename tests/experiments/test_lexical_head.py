"""The plan's term-weight head trained on top of a frozen model
(gr/experiments/lexical_head.py): the listwise loss, the dev choice that
keeps step 0 when nothing helps, the rerank sets against the exact oracle,
the saved file, and run_experiment's use of it."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

import jax

from gr.experiments import lexical_head
from gr.experiments import rerank_sets
from gr.model import lexical as lexical_lib


def _toy_set(relevant_token: int, queries: int = 8) -> lexical_head.RerankSet:
  """Each query has two term tokens (terms 1 and 2) with states e0 and
  e1; candidate 0 (document 0) matches the first (impact 1), candidate 1
  (document 1) the second (impact 1.2); the model ties them. The relevant
  candidate is the one `relevant_token` (0 or 1) matches."""
  states = np.tile(np.eye(2, 4, dtype=np.float32), (queries, 1, 1))
  contributions = np.tile(
    np.array([[1.0, 0.0], [0.0, 1.2]], np.float32), (queries, 1, 1)
  )  # [Q, Li=2, K=2]
  relevant = np.zeros((queries, 2), bool)
  relevant[:, relevant_token] = True
  return lexical_head.RerankSet(
    states=states,
    tokens=np.tile(np.array([[1, 2]], np.int32), (queries, 1)),
    terms=np.tile(np.array([[1, 2]], np.int32), (queries, 1)),
    contributions=contributions,
    documents=np.tile(np.array([[0, 1]], np.int32), (queries, 1)),
    model=np.zeros((queries, 2), np.float32),
    relevant=relevant,
  )


CONFIG = lexical_head.HeadTraining(
  steps=60, learning_rate=0.1, l2=1e-3, eval_every=10
)


def test_the_head_learns_which_tokens_matter():
  """BM25 (the zero head) ranks the wrong candidate first; training
  weighs the first token up and dev MRR rises to 1."""
  toy = _toy_set(relevant_token=0)
  head, curve = lexical_head.train_head(
    toy, toy, 1.0, CONFIG, record=_toy_set(relevant_token=1)
  )
  assert curve[0]["step"] == 0 and curve[0]["dev MRR@10"] == 0.5
  # The eval split's record moves the other way and is never chosen on.
  assert curve[-1]["eval MRR@10"] == 0.5 and curve[0]["eval MRR@10"] == 1.0
  assert lexical_head.rerank_mrr(head, toy, 1.0) == 1.0
  assert float(head.kernel[0]) > float(head.kernel[1])
  assert curve[-1]["train loss"] < curve[0]["train loss"]


def test_dev_keeps_the_zero_head_when_training_does_not_help():
  """Train says token 0 matters, dev says token 1: every trained step is
  worse on dev, so the zero head (step 0) is returned."""
  head, curve = lexical_head.train_head(
    _toy_set(relevant_token=0), _toy_set(relevant_token=1), 1.0, CONFIG
  )
  assert max(p["dev MRR@10"] for p in curve[1:]) < curve[0]["dev MRR@10"]
  np.testing.assert_array_equal(np.asarray(head.kernel), 0.0)
  assert float(head.bias) == 0.0


def test_queries_without_a_relevant_candidate_add_no_loss():
  toy = _toy_set(relevant_token=0)
  none = toy.replace(relevant=np.zeros_like(toy.relevant))
  zero = lexical_lib.TermWeightHead.zeros(4)
  assert float(lexical_head.listwise_loss(zero, none, 1.0, 0.0)) == 0.0
  assert lexical_head.rerank_mrr(zero, none, 1.0) == 0.0


def test_rerank_scores_are_the_exact_oracles(planned_searcher):
  """With the zero head, a rerank set's fused scores equal the exact
  ranking's score of every candidate; relevant documents not found are
  added for training only."""
  from gr.search import exact as exact_lib
  from gr.search import retrieval

  searcher, queries, qrels = planned_searcher
  rerank = rerank_sets.rerank_set(searcher, queries, qrels, add_relevant=True)
  zero = lexical_lib.TermWeightHead.zeros(rerank.states.shape[-1])
  fused = np.asarray(
    lexical_head.fused_scores(zero, rerank, searcher.lexical_weight)
  )
  qids = list(qrels)
  exact = exact_lib.exact_ranking(
    searcher, [queries[q] for q in qids], top_k=len(searcher.index.doc_ids)
  )
  found, _ = searcher.search_tokens(
    retrieval.vocab_lib.encode_texts(
      searcher.index.vocab, [queries[q] for q in qids], searcher.input_length
    )
  )
  for q, (row, ranking) in enumerate(zip(found, exact)):
    score_of = dict(ranking)
    docs = [searcher.index.doc_ids[d] for d in row if d >= 0]
    np.testing.assert_allclose(
      fused[q, : len(docs)], [score_of[d] for d in docs], atol=1e-3
    )
    assert rerank.relevant[q].sum() == 1  # the judged document is in


def _toy_space() -> rerank_sets.TermSpace:
  """Pieces 0-5 are terms 0-5; document 0's set is {1: 1.0}, document 1's
  {2: 1.0, 4: 1.0} (sorted by term, padded with int32 max)."""
  pad = np.iinfo(np.int32).max
  return rerank_sets.TermSpace(
    term_of=jnp.arange(6, dtype=jnp.int32),
    continuation=jnp.zeros(6, bool),
    set_terms=jnp.asarray([[1, pad], [2, 4]], jnp.int32),
    set_impacts=jnp.asarray([[1.0, 0.0], [1.0, 1.0]], jnp.float32),
    num_terms=6,
  )


def _expanding_start(seed: int = 0) -> lexical_lib.TermWeightHead:
  pieces = jax.random.normal(jax.random.PRNGKey(seed), (6, 4))
  return lexical_lib.TermWeightHead.zeros(
    4, lexical_lib.Expansion.start(pieces, width=2)
  )


def test_an_expansion_learns_a_term_the_query_lacks():
  """Query terms 1 and 2 tie the candidates (impact 1 each, with the
  first's raised to 1.2); the relevant document 1 also holds term 4, which
  no query has. Step 0 (gate 0) is the no-expansion head's; training
  opens the gate and adds term 4, and dev MRR reaches 1."""
  toy = _toy_set(relevant_token=1)
  toy = toy.replace(
    contributions=np.tile(
      np.array([[1.2, 0.0], [0.0, 1.0]], np.float32), (8, 1, 1)
    )
  )
  space = _toy_space()
  start = _expanding_start()
  config = lexical_head.HeadTraining(
    steps=80, learning_rate=0.1, l2=0.0, eval_every=10
  )
  head, curve = lexical_head.train_head(
    toy, toy, 1.0, config, None, start, space
  )
  _, no_expansion = lexical_head.train_head(toy, toy, 1.0, config)
  assert curve[0] == no_expansion[0] and curve[0]["dev MRR@10"] == 0.5
  assert lexical_head.rerank_mrr(head, toy, 1.0, space) == 1.0
  assert float(head.expansion.gate) > 0
  added, values = head.expansion.select(
    jnp.asarray(toy.states[:1]),
    jnp.asarray(toy.tokens[:1] > 0),
    jnp.asarray(toy.terms[:1]),
    space,
  )
  assert 4 in set(np.asarray(added)[0][np.asarray(values)[0] > 0])
  assert not {1, 2} & set(np.asarray(added)[0])  # the query's own: copied


def test_term_space_impacts_look_up_any_term():
  space = _toy_space()
  documents = jnp.asarray([[0, 1, -1]])
  got = np.asarray(space.impacts(documents, jnp.asarray([[4, 1, 3]])))
  np.testing.assert_array_equal(
    got[0], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
  )


def test_a_saved_expansion_loads_and_a_bad_one_names_itself(tmp_path):
  head = _expanding_start(seed=3)
  head = head.replace(expansion=head.expansion.replace(gate=jnp.asarray(0.7)))
  lexical_lib.save_head(str(tmp_path), head)
  loaded = lexical_lib.load_head(str(tmp_path))
  for got, want in zip(
    jax.tree.leaves(loaded.expansion), jax.tree.leaves(head.expansion)
  ):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert loaded.expansion.width == 2
  negative = head.replace(
    expansion=head.expansion.replace(gate=jnp.asarray(-1.0))
  )
  lexical_lib.save_head(str(tmp_path), negative)
  with pytest.raises(ValueError, match="gate >= 0"):
    lexical_lib.load_head(str(tmp_path))


def test_a_saved_head_loads_and_a_bad_file_names_itself(tmp_path):
  head = lexical_lib.TermWeightHead(
    jnp.asarray([0.5, -1.0, 2.0]), jnp.asarray(0.25)
  )
  lexical_lib.save_head(str(tmp_path), head)
  loaded = lexical_lib.load_head(str(tmp_path))
  np.testing.assert_array_equal(np.asarray(loaded.kernel), [0.5, -1.0, 2.0])
  assert float(loaded.bias) == 0.25
  assert lexical_lib.load_head(str(tmp_path / "none")) is None
  path = tmp_path / lexical_lib.HEAD_FILE
  path.write_bytes(b"not a numpy file")
  with pytest.raises(ValueError, match=lexical_lib.HEAD_FILE):
    lexical_lib.load_head(str(tmp_path))


@pytest.fixture(scope="module")
def planned_searcher(tmp_path_factory):
  """A tiny atomic index with term sets, a plan at weight 1, and its train
  queries (one judged document each)."""
  from gr.data import beir
  from gr.docids import get_scheme
  from gr.index import artifact as index_lib
  from gr.index import lexicon
  from gr.model import models
  from gr.model import network
  from gr.search import retrieval
  import jax

  words = [f"w{i}" for i in range(40)]
  corpus = {
    f"d{i}": beir.Document(
      f"d{i}", "", " ".join(words[(i * 5 + j) % 40] for j in range(8))
    )
    for i in range(10)
  }
  table = get_scheme("atomic").assign(corpus)
  index = index_lib.build_index(
    table,
    index_lib.training_texts(corpus, {}) * 3,
    str(tmp_path_factory.mktemp("idx")),
    vocab_size=120,
  )
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(vocab_size=-(-index.vocab.vocab_size // 128) * 128)
  )
  params = model.init_params(
    jax.random.PRNGKey(0), input_length=16, target_length=4
  )
  searcher = retrieval.Searcher(
    model,
    params,
    index,
    retrieval.SearchConfig(beam_size=4, top_k=4),
    input_length=16,
    term_sets=lexicon.build_term_sets(index, corpus),
    lexical_weight=1.0,
  )
  queries = {
    f"q{i}": " ".join(corpus[f"d{i}"].text.split()[2:5]) for i in range(10)
  }
  qrels = {f"q{i}": {f"d{(i * 3) % 10}": 1} for i in range(10)}
  return searcher, queries, qrels


def test_run_experiment_keeps_or_installs_the_head(tmp_path):
  """run_experiment with term_weight_head: the record has a curve from
  step 0; a head that beat step 0 on dev is saved and the weight file
  holds the weight chosen with it; otherwise nothing is saved."""
  from gr.decode import plan as plan_lib
  from tests.experiments.test_experiment import _synthetic_beir
  from tests.support import tiny_experiments

  data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "work")
  _synthetic_beir(data_dir)
  out = tiny_experiments.run_tiny_planned(
    data_dir,
    workdir,
    term_weight_head=lexical_head.HeadTraining(steps=20, eval_every=5),
  )
  record = out["term_weight_head"]
  assert [p["step"] for p in record["curve"]] == [0, 5, 10, 15, 20]
  assert all("eval MRR@10" in p for p in record["curve"])
  best = max(record["curve"], key=lambda p: (p["dev MRR@10"], -p["step"]))
  assert record["chosen_step"] == best["step"]
  saved = lexical_lib.load_head(workdir)
  if record["chosen_step"] == 0:
    assert saved is None and record["selection"] is None
  else:
    assert saved is not None
    assert plan_lib.load_weight(workdir) == record["selection"]["chosen"]
    assert out["lexical_weight"]["chosen"] == record["selection"]["chosen"]
  assert os.path.exists(os.path.join(workdir, "results.json"))


def test_a_sample_of_queries_keeps_each_sets_share():
  by_name = {
    "a": ({}, {f"a{i}": {"d": 1} for i in range(30)}),
    "b": ({}, {f"b{i}": {"d": 1} for i in range(10)}),
  }
  sampled = rerank_sets.sampled(by_name, 20)
  assert len(sampled["a"][1]) == 15 and len(sampled["b"][1]) == 5
  assert set(sampled["a"][1]) <= set(by_name["a"][1])
  assert rerank_sets.sampled(by_name, 20) == sampled  # a fixed sample
  assert rerank_sets.sampled(by_name, 40) is by_name


def test_piece_vectors_are_the_encoders_input_embeddings():
  """A BERT encoder's word embeddings (cut to the vocabulary's pieces),
  else the shared token embedder's; too few rows is an error."""
  words = np.arange(24, dtype=np.float32).reshape(6, 4)
  shared = -np.ones((8, 4), np.float32)
  bert = {"encoder": {"word_embeddings": {"embedding": words}},
          "token_embedder": {"embedding": shared}}  # fmt: skip
  np.testing.assert_array_equal(
    lexical_head.piece_vectors({"params": bert}, 5, 4), words[:5]
  )
  t5 = {"encoder": {}, "token_embedder": {"embedding": shared}}
  np.testing.assert_array_equal(lexical_head.piece_vectors(t5, 8, 4), shared)
  with pytest.raises(ValueError, match="cannot give 9 pieces"):
    lexical_head.piece_vectors(t5, 9, 4)


def _ragged_set(seed: int = 0) -> lexical_head.RerankSet:
  """12 queries over 40 token slots: 8 of 3 tokens, 4 of 20 (groups 16
  and 32), 3 candidates each, random states, terms and impacts."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((12, 40), np.int32)
  tokens[:8, :3] = rng.integers(1, 50, (8, 3))
  tokens[8:, :20] = rng.integers(1, 50, (4, 20))
  terms = np.where(tokens > 0, tokens % 7, 0).astype(np.int32)
  contributions = rng.random((12, 40, 3)).astype(np.float32)
  contributions *= (terms > 0)[..., None]
  relevant = np.zeros((12, 3), bool)
  relevant[np.arange(12), rng.integers(0, 3, 12)] = True
  return lexical_head.RerankSet(
    states=rng.normal(size=(12, 40, 4)).astype(np.float32),
    tokens=tokens,
    terms=terms,
    contributions=contributions,
    documents=np.tile(np.arange(3, dtype=np.int32), (12, 1)),
    model=rng.normal(size=(12, 3)).astype(np.float32),
    relevant=relevant,
  )


def test_length_groups_cut_batches_without_changing_scores():
  ragged = _ragged_set()
  groups = rerank_sets.length_groups(ragged)
  assert [(n, list(rows)) for n, rows in groups] == [
    (16, list(range(8))),
    (32, list(range(8, 12))),
  ]
  head = lexical_lib.TermWeightHead(
    jnp.asarray([0.5, -0.3, 0.2, 0.1]), jnp.asarray(0.1)
  )
  # MRR@10 over the whole padded set, scored at once.
  scores = np.asarray(lexical_head.fused_scores(head, ragged, 1.5))
  best = np.where(ragged.relevant, scores, -np.inf).max(axis=1)
  want = np.mean(1.0 / ((scores > best[:, None]).sum(axis=1) + 1))
  got = lexical_head.rerank_mrr(head, ragged, 1.5, batch_size=5)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_batches_take_each_group_whole_each_pass():
  groups = rerank_sets.length_groups(_ragged_set())
  batches = lexical_head._batches(groups, batch_size=4)
  seen = {16: [], 32: []}
  for _ in range(40):
    length, rows = next(batches)
    assert len(rows) == 4 and set(rows) <= set(dict(groups)[length])
    seen[length].append(rows)
  for length, rows in groups:  # every pass covers the group once
    per_pass = len(rows) // 4
    drawn = np.concatenate(seen[length][: per_pass * 2])
    assert sorted(drawn) == sorted(list(rows) * 2)


def test_lead_queries_judge_each_document_to_its_own_lead(tmp_path):
  from gr.data import beir
  from gr.experiments import dev_selection
  from gr.search import evaluation

  body = "First sentence has five words. Second one also has five words."
  corpus = {
    "a": beir.Document("a", "", body),
    "b": beir.Document("b", "", "Only one sentence here and no more"),
  }
  beir.write_beir(str(tmp_path), corpus, {"q": "x"}, {"train": {"q": {"a": 1}}})
  selection = dev_selection.LexicalSelection(
    str(tmp_path), (evaluation.QuerySet("q"),), (1.0,), "dev", "test", 0
  )
  queries, qrels = lexical_head.lead_queries(selection)
  assert qrels == {"lead:a": {"a": 1}}  # b has one sentence: no lead
  assert queries["lead:a"] in body
