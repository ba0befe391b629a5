"""Tests for gr/queries/dsi_qg.py: training pairs, the filters, the quality report."""

import pytest

from gr.queries import dsi_qg
from gr.data import beir
from gr.serve.retriever import Hit

CORPUS = {
  "a": beir.Document("a", "Volcano erupts", "lava and ash from the volcano"),
  "b": beir.Document("b", "Striker scores", "the striker scored a late goal"),
  "c": beir.Document("c", "Vote tonight", "parliament votes on the budget"),
}


def _write(folder):
  beir.write_beir(
    str(folder),
    CORPUS,
    {"t1": "Volcano erupts", "t2": "Striker scores", "t3": "Vote tonight"},
    {"train": {"t1": {"a": 1}, "t2": {"b": 1}}, "test": {"t3": {"c": 1}}},
  )
  beir.write_queries(str(folder / "sub" / "queries.jsonl"), {"s1": "ash"})
  beir.write_qrels(
    str(folder / "sub" / "qrels" / "train.tsv"), {"s1": {"a": 1}}
  )


def test_training_pairs_join_train_qrels_of_every_file_never_test(tmp_path):
  _write(tmp_path)
  pairs = dsi_qg.training_pairs(
    str(tmp_path),
    [
      ("queries.jsonl", "qrels"),
      ("sub/queries.jsonl", "sub/qrels"),
      ("absent.jsonl", "absent"),
    ],
  )
  assert pairs.qrels["train"] == {
    "t1": {"a": 1},
    "t2": {"b": 1},
    "s1": {"a": 1},
  }
  assert "test" not in pairs.qrels and "t3" not in pairs.queries
  with pytest.raises(FileNotFoundError, match="none of"):
    dsi_qg.training_pairs(str(tmp_path), [("absent.jsonl", "absent")])


def test_held_out_sets_are_the_test_splits_that_exist(tmp_path):
  _write(tmp_path)
  sets = dsi_qg.held_out_sets(
    str(tmp_path),
    [("queries.jsonl", "qrels"), ("sub/queries.jsonl", "sub/qrels")],
  )
  assert list(sets) == ["queries/test"]  # sub/ has no test split
  queries, qrels = sets["queries/test"]
  assert qrels == {"t3": {"c": 1}} and queries["t3"] == "Vote tonight"


def test_rank_filter_keeps_queries_whose_own_document_is_ranked():
  queries = {"a": ["lava ash", "goal"], "b": ["striker goal"]}

  def rank(texts):  # a ranker that only knows one query
    return {
      q: ({"a": 1.0} if t == "lava ash" else {"a": 0.5})
      for q, t in texts.items()
    }

  assert dsi_qg.rank_filter(rank, queries) == {"a": ["lava ash", "goal"]}


def test_bm25_filter_is_lexical():
  queries = {"a": ["volcano lava", "late goal"], "c": ["budget votes"]}
  kept = dsi_qg.bm25_filter(CORPUS, queries, top_k=1)
  assert kept == {"a": ["volcano lava"], "c": ["budget votes"]}


def test_model_ranker_maps_hits_to_a_run():
  class Retriever:
    def retrieve(self, texts, k):
      return [[Hit("b", "<b>", -0.1), Hit("a", "<a>", -2.0)][:k] for _ in texts]

  rank = dsi_qg.model_ranker(Retriever(), top_k=1)
  assert rank({"q": "anything"}) == {"q": {"b": -0.1}}
  assert dsi_qg.rank_filter(rank, {"a": ["x"], "b": ["y"]}) == {"b": ["y"]}


def test_query_report_overlap_against_chance():
  dataset = beir.BeirDataset(CORPUS, {}, {})
  queries = {"a": ["volcano erupts today"], "b": ["striker scores"]}
  held_out = {
    "titles": (
      {"t1": "Volcano erupts", "t2": "Striker scores"},
      {"t1": {"a": 1}, "t2": {"b": 1}},
    )
  }
  report = dsi_qg.query_report(queries, dataset, held_out)["titles"]
  assert report["documents"] == 2
  assert report["overlap"] == pytest.approx(4 / 5)  # "today" is not
  assert report["chance_overlap"] == 0.0  # each vs the other's title
  assert report["bm25_generated"]["Hits@1"] == 1.0
