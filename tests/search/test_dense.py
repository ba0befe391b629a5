"""Dense baseline (gr/search/dense.py), its embedding cache (gr/model/embed.py)
and its row in gr/search/evaluation.py, with the real MiniLM on five short texts."""

import functools
import json
import logging
import os

import jax
import numpy as np
import pytest

from gr.model import embed
from gr.search import evaluation
from gr.search import metrics
from gr.search import dense
from gr.data import beir

_TEXTS = {
  "cats": ("Pets", "Cats purr and chase mice around the house."),
  "dogs": ("Pets", "Dogs bark loudly and fetch sticks in the park."),
  "fish": ("Rivers", "Salmon swim upstream in the cold river."),
  "oven": ("Volcano eruption", "Bread rises slowly in a warm oven."),
  "lava": ("Baking", "The volcano erupted and lava flowed downhill."),
}
CORPUS = {
  i: beir.Document(i, title, text) for i, (title, text) in _TEXTS.items()
}
QUERIES = {
  "q_dog": "a barking puppy",
  "q_fish": "fish in a stream",
  "q_lava": "molten rock from a mountain",
  "q_bread": "baking a loaf",
}
QRELS = {
  "q_dog": {"dogs": 1},
  "q_fish": {"fish": 1},
  "q_lava": {"lava": 1},
  "q_bread": {"oven": 1},
}


@pytest.fixture(scope="module")
def embedder():
  return embed.Embedder.load()


def _count_embed_calls(monkeypatch, embedder):
  calls = []
  real = embedder.embed

  def counting(texts, *args, **kwargs):
    calls.append(list(texts))
    return real(texts, *args, **kwargs)

  monkeypatch.setattr(embedder, "embed", counting)
  return calls


def _brute_force(doc_ids, docs, queries, query_ids, k):
  """Cosine of every pair in float64, ranked as trec_eval ranks."""
  run = {}
  for qid, q in zip(query_ids, queries.astype(np.float64)):
    scores = {
      d: float(q @ v / (np.linalg.norm(q) * np.linalg.norm(v)))
      for d, v in zip(doc_ids, docs.astype(np.float64))
    }
    run[qid] = metrics.ranked(scores)[:k]
  return run


def test_dense_run_equals_brute_force_cosine():
  rng = np.random.default_rng(0)
  doc_ids = [f"d{i}" for i in rng.permutation(40)]
  docs = rng.normal(size=(40, 8)) * rng.uniform(0.1, 5, size=(40, 1))
  queries = rng.normal(size=(300, 8)) * 3  # > one chunk of 256 queries
  query_ids = [f"q{i}" for i in range(300)]
  run = dense.dense_run(doc_ids, docs, queries, query_ids, k=7)
  expected = _brute_force(doc_ids, docs, queries, query_ids, k=7)
  assert list(run) == query_ids
  for qid in query_ids:
    assert list(run[qid]) == [d for d, _ in expected[qid]], qid
    np.testing.assert_allclose(
      list(run[qid].values()), [s for _, s in expected[qid]], atol=1e-5
    )
  everything = dense.dense_run(doc_ids, docs, queries[:1], ["q"], k=1000)
  assert len(everything["q"]) == 40


def test_ties_are_broken_as_trec_eval_breaks_them():
  doc_ids = ["a", "c", "b", "z"]
  docs = np.array([[2, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
  run = dense.dense_run(doc_ids, docs, np.array([[3.0, 0, 0]]), ["q"], k=3)
  assert list(run["q"]) == ["c", "a", "z"]  # 1, 1, then z (0) over b (0)
  assert run["q"] == {"c": 1.0, "a": 1.0, "z": 0.0}
  top1 = dense.dense_run(doc_ids, docs, np.array([[3.0, 0, 0]]), ["q"], k=1)
  assert top1 == {"q": {"c": 1.0}}
  assert dict(metrics.ranked(run["q"])) == run["q"]  # trec_eval order


def test_mismatched_shapes_are_rejected():
  with pytest.raises(ValueError, match="doc ids"):
    dense.dense_run(["a"], np.ones((2, 3)), np.ones((1, 3)), ["q"])
  with pytest.raises(ValueError, match="dims differ"):
    dense.dense_run(["a"], np.ones((1, 3)), np.ones((1, 4)), ["q"])


def test_document_embeddings_are_of_bodies_in_corpus_order(embedder, tmp_path):
  vectors = embed.document_embeddings(CORPUS, embedder, str(tmp_path))
  bodies = embedder.embed([d.text for d in CORPUS.values()])
  titles = embedder.embed([d.title for d in CORPUS.values()])
  assert vectors.shape == (5, 384)
  np.testing.assert_allclose(vectors, bodies, atol=1e-5)
  assert np.abs(vectors - titles).max() > 0.1


def test_cache_is_reused_only_for_the_same_texts_and_encoder(
  embedder, tmp_path, monkeypatch
):
  cache = str(tmp_path / "cache")
  calls = _count_embed_calls(monkeypatch, embedder)
  first = embed.document_embeddings(CORPUS, embedder, cache)
  again = embed.document_embeddings(CORPUS, embedder, cache)
  np.testing.assert_array_equal(first, again)
  assert len(calls) == 1
  retitled = {
    i: beir.Document(i, "another title", d.text) for i, d in CORPUS.items()
  }
  embed.document_embeddings(retitled, embedder, cache)  # bodies unchanged
  assert len(calls) == 1
  edited = dict(CORPUS, fish=beir.Document("fish", "", "Trout in a lake."))
  changed = embed.document_embeddings(edited, embedder, cache)
  assert len(calls) == 2
  assert np.abs(changed[2] - first[2]).max() > 0.1
  np.testing.assert_allclose(
    changed[[0, 1, 3, 4]], first[[0, 1, 3, 4]], atol=1e-5
  )
  shorter = embed.Embedder(
    embedder.config, embedder.params, embedder.tokenizer, max_length=128
  )
  short_calls = _count_embed_calls(monkeypatch, shorter)
  embed.document_embeddings(CORPUS, shorter, cache)  # another encoder
  assert len(short_calls) == 1
  assert len([f for f in os.listdir(cache) if f.endswith(".npy")]) == 3


def test_encoder_fingerprint_tracks_weights_and_max_length(embedder):
  base = embed.encoder_fingerprint(embedder)
  assert embed.encoder_fingerprint(embedder) == base
  shorter = embed.Embedder(
    embedder.config, embedder.params, embedder.tokenizer, max_length=128
  )
  assert embed.encoder_fingerprint(shorter) != base
  params = jax.tree_util.tree_map(lambda x: x, embedder.params)
  bias = params["layer_5"]["output"]["bias"]
  params["layer_5"]["output"]["bias"] = bias.at[0].add(1e-3)
  tweaked = embed.Embedder(
    embedder.config, params, embedder.tokenizer, embedder.max_length
  )
  assert embed.encoder_fingerprint(tweaked) != base


def test_embed_logs_progress_with_an_eta(embedder, caplog):
  with caplog.at_level(logging.INFO):
    embedder.embed([d.text for d in CORPUS.values()], batch_size=2, log_every=2)
  messages = [
    r.getMessage()
    for r in caplog.records
    if r.getMessage().startswith("embedded")
  ]
  # Batches of 2 rows: logged after batch 2 and after the last (batch 3).
  assert [m.split(",")[0] for m in messages] == [
    "embedded 4/5 texts",
    "embedded 5/5 texts",
  ]
  assert "ETA" in messages[0] and messages[-1].endswith("ETA 0.0 s")


def test_dense_baseline_finds_the_paraphrased_document(embedder, tmp_path):
  run = dense.dense_baseline(CORPUS, QUERIES, embedder, str(tmp_path), k=3)
  assert {q: metrics.ranked(r)[0][0] for q, r in run.items()} == {
    q: next(iter(judged)) for q, judged in QRELS.items()
  }
  assert all(len(r) == 3 for r in run.values())


class _FakeSearcher:
  """Answers every query with 'cats' (a wrong document for all of QRELS)."""

  batch_size = 2
  lexical_weight = 0.0  # no lexical plan

  def run(self, queries):
    return {q: {"cats": 1.0} for q in queries}


def test_evaluation_adds_a_dense_row(embedder, tmp_path):
  baseline = functools.partial(
    dense.dense_baseline, embedder=embedder, cache_dir=str(tmp_path / "emb")
  )
  kwargs = dict(name="titles.test", run_dir=str(tmp_path / "runs"))
  result = evaluation.evaluate_query_set(
    _FakeSearcher(), CORPUS, QUERIES, QRELS, dense=baseline, **kwargs
  )
  assert result["gr"]["Hits@1"] == 0.0
  assert result["dense"]["Hits@1"] == 1.0
  assert set(result["dense"]) == set(result["bm25"])
  dense_file = metrics.read_trec_run(
    tmp_path / "runs" / "titles.test.dense.trec"
  )
  assert metrics.ranked(dense_file["q_lava"])[0][0] == "lava"
  json.dumps(result)  # results.json stays plain data
  table = evaluation.format_results({"titles/test": result}).splitlines()
  assert [line.split()[1] for line in table[1:]] == ["gr", "bm25", "dense"]
  assert table[3].split()[2] == "1.000"

  plain = evaluation.evaluate_query_set(
    _FakeSearcher(), CORPUS, QUERIES, QRELS, **kwargs
  )
  assert set(plain) == {
    "queries",
    "gr",
    "bm25",
    "queries_per_sec",
    "batch_latency_ms",
  }
  assert "dense" not in evaluation.format_results({"titles/test": plain})


def test_cli_writes_run_and_prints_table(
  embedder, tmp_path, capsys, monkeypatch
):
  beir.write_beir(tmp_path / "data", CORPUS, QUERIES, {"test": QRELS})
  monkeypatch.setattr(embed.Embedder, "load", lambda *a, **k: embedder)
  out = tmp_path / "runs" / "dense.trec"
  dense.main(
    [
      "--data_dir",
      str(tmp_path / "data"),
      "--out",
      str(out),
      "--cache_dir",
      str(tmp_path / "emb"),
    ]
  )
  run = metrics.read_trec_run(out)
  assert metrics.ranked(run["q_dog"])[0][0] == "dogs"
  printed = capsys.readouterr().out
  assert "4 queries" in printed and "Hits@1" in printed
  assert "1.000" in printed
  assert any(f.startswith("docs-") for f in os.listdir(tmp_path / "emb"))
