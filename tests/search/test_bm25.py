"""Tests for gr/search/bm25.py on a tiny synthetic corpus."""

import math

import pytest

from gr.search import metrics
from gr.search import bm25
from gr.data import beir

_TEXTS = {
  "cats": ("", "Cats purr and chase mice around the house."),
  "dogs": ("", "Dogs bark loudly and fetch sticks in parks."),
  "fish": ("", "Fish swim silently in the cold river."),
  # Its title matches 'volcano' but only its text is indexed.
  "decoy": ("Volcano eruption", "Bread rises in a warm oven."),
  "lava": ("", "A volcano erupted and lava flowed downhill."),
}
CORPUS = {
  i: beir.Document(i, title, text) for i, (title, text) in _TEXTS.items()
}


def test_obvious_document_ranks_first():
  run = bm25.bm25_run(
    CORPUS,
    {"q1": "barking dog", "q2": "swimming fishes", "q3": "volcano eruption"},
  )
  assert metrics.ranked(run["q1"])[0][0] == "dogs"
  assert metrics.ranked(run["q2"])[0][0] == "fish"  # stemming: swimming->swim
  assert list(run["q3"]) == ["lava"]  # the decoy's title is not indexed


def test_zero_score_documents_are_left_out():
  run = bm25.bm25_run(CORPUS, {"stop": "the and in", "none": "zebra"})
  assert run == {"stop": {}, "none": {}}


def test_k_limits_the_ranking():
  run = bm25.bm25_run(CORPUS, {"q": "cats dogs fish volcano bread"}, k=2)
  assert len(run["q"]) == 2
  assert all(math.isfinite(s) and s > 0 for s in run["q"].values())


def test_empty_input_is_rejected():
  with pytest.raises(ValueError, match="non-empty"):
    bm25.bm25_run({}, {"q": "x"})


def test_cli_writes_run_and_prints_table(tmp_path, capsys):
  queries = {"q1": "barking dog", "q2": "river fish", "q3": "oven bread"}
  qrels = {"test": {"q1": {"dogs": 1}, "q2": {"fish": 1}, "q3": {"cats": 1}}}
  beir.write_beir(tmp_path / "data", CORPUS, queries, qrels)
  out = tmp_path / "runs" / "bm25.trec"
  bm25.main(["--data_dir", str(tmp_path / "data"), "--out", str(out)])
  run = metrics.read_trec_run(out)
  assert metrics.ranked(run["q1"])[0][0] == "dogs"
  printed = capsys.readouterr().out
  assert "Hits@1" in printed and "MRR@10" in printed
  # q3's relevant doc is not retrieved: Hits@1 = 2/3.
  assert "0.667" in printed
