"""Tests for gr/continual/dynamic.py: DSI++ metrics, period data, report files."""

import math
import os

import numpy as np
import pytest

from gr.continual import periods as periods_lib
from gr.continual import dsi_metrics
from gr.continual import training
from gr.continual import strategies
from gr.continual import dynamic
from gr.continual import dynamic_report
from gr.data import beir
from gr.data import news

NAN = float("nan")
# a[n][i]: performance on D_i's queries after step n.
MATRIX = np.array([[0.8, NAN, NAN], [0.6, 0.9, NAN], [0.5, 0.7, 0.4]])


def test_average_performance_by_hand():
  assert dsi_metrics.average_performance(MATRIX, 0) == pytest.approx(0.8)
  assert dsi_metrics.average_performance(MATRIX, 1) == pytest.approx(0.75)
  assert dsi_metrics.average_performance(MATRIX, 2) == pytest.approx(1.6 / 3)


def test_forgetting_by_hand():
  assert dsi_metrics.forgetting(MATRIX, 0) == 0.0
  assert dsi_metrics.forgetting(MATRIX, 1) == pytest.approx(0.2)
  # D0: max(0.8, 0.6) - 0.5 = 0.3; D1: 0.9 - 0.7 = 0.2.
  assert dsi_metrics.forgetting(MATRIX, 2) == pytest.approx(0.25)


def test_forgetting_uses_best_earlier_step_and_can_be_negative():
  a = np.array([[0.2, NAN, NAN], [0.6, 0.5, NAN], [0.7, 0.5, 0.1]])
  # D0: best earlier is 0.6 (step 1), now 0.7 -> -0.1; D1: 0.5 - 0.5 = 0.
  assert dsi_metrics.forgetting(a, 2) == pytest.approx(-0.05)


def test_learning_accuracy_by_hand():
  assert dsi_metrics.learning_accuracy(MATRIX, 0) == pytest.approx(0.8)
  assert dsi_metrics.learning_accuracy(MATRIX, 1) == pytest.approx(0.85)
  assert dsi_metrics.learning_accuracy(MATRIX, 2) == pytest.approx(0.7)


def test_continual_metrics_lists_every_step():
  values = dsi_metrics.continual_metrics(MATRIX)
  np.testing.assert_allclose(values["A"], [0.8, 0.75, 1.6 / 3])
  np.testing.assert_allclose(values["F"], [0.0, 0.2, 0.25])
  np.testing.assert_allclose(values["LA"], [0.8, 0.85, 0.7])


def test_performance_matrix_fills_lower_triangle():
  rows = [[{"Hits@10": 0.8}], [{"Hits@10": 0.6}, {"Hits@10": 0.9}]]
  a = dsi_metrics.performance_matrix(rows, "Hits@10")
  assert a[0, 0] == 0.8 and a[1, 1] == 0.9 and math.isnan(a[0, 1])


def _periods():
  return [
    news.Period(
      "D0", "2017-01-01", "2017-01-02", tuple(str(i) for i in range(20))
    ),
    news.Period(
      "D1", "2017-01-03", "2017-01-03", tuple(str(i) for i in range(20, 30))
    ),
  ]


def test_sample_periods_fraction_cap_and_seed():
  sampled = periods_lib.sample_periods(
    _periods(), docs_fraction=0.5, max_docs_per_period=8, seed=1
  )
  assert [len(ids) for _, ids in sampled] == [8, 5]
  assert set(sampled[1][1]) <= {str(i) for i in range(20, 30)}
  assert sampled == periods_lib.sample_periods(
    _periods(), docs_fraction=0.5, max_docs_per_period=8, seed=1
  )
  with pytest.raises(ValueError, match="docs_fraction"):
    periods_lib.sample_periods(
      _periods(), docs_fraction=0.0, max_docs_per_period=0, seed=0
    )


def _corpus(ids):
  return {d: beir.Document(d, f"title {d}", f"body of {d}") for d in ids}


def test_period_data_keeps_queries_of_its_documents_only():
  corpus = _corpus(["a", "b", "c"])
  queries = {"q1": "about a", "q2": "about c"}
  qrels = {"q1": {"a": 1}, "q2": {"c": 1}}
  periods = periods_lib.period_data(
    corpus, [("D0", ["a", "b"]), ("D1", ["c"])], queries, qrels
  )
  assert periods[0].qrels == {"q1": {"a": 1}}
  assert periods[1].queries == {"q2": "about c"}
  assert list(periods[0].corpus) == ["a", "b"]


def test_evaluate_periods_hits_by_hand():
  periods = periods_lib.period_data(
    _corpus(["a", "b", "c"]),
    [("D0", ["a", "b"]), ("D1", ["c"])],
    {"q1": "x", "q2": "y", "q3": "z"},
    {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}},
  )
  run = {
    "q1": {"a": 2.0, "b": 1.0},
    "q2": {"a": 2.0, "b": 1.0},
    "q3": {"a": 1.0},
  }
  d0, d1 = periods_lib.evaluate_periods(run, periods)
  assert d0["Hits@1"] == pytest.approx(0.5)
  assert d0["Hits@10"] == pytest.approx(1.0)
  assert d1["Hits@10"] == 0.0


def test_bm25_rows_grow_with_the_corpus():
  corpus = {
    "a": beir.Document("a", "", "volcano eruption lava ash"),
    "b": beir.Document("b", "", "football match goal striker"),
    "c": beir.Document("c", "", "election vote parliament party"),
  }
  periods = periods_lib.period_data(
    corpus,
    [("D0", ["a", "b"]), ("D1", ["c"])],
    {"q1": "lava volcano", "q2": "parliament election"},
    {"q1": {"a": 1}, "q2": {"c": 1}},
  )
  rows = periods_lib.bm25_rows(periods)
  assert [len(r) for r in rows] == [1, 2]
  assert rows[1][1]["Hits@1"] == 1.0 and rows[0][0]["Hits@1"] == 1.0


def _fake_results():
  def summary(a, updates):
    return {
      "steps": [{"gradient_updates": u, "seconds": 1.0} for u in updates],
      **{
        m: {
          "matrix": dynamic_report.nan_to_none(a),
          **dsi_metrics.continual_metrics(a),
        }
        for m in dynamic_report.METRICS
      },
    }

  return {
    "periods": [{"name": f"D{i}", "docs": 2, "queries": 1} for i in range(3)],
    "bm25": summary(MATRIX, [0, 0, 0]),
    "cells": {
      "naive/new_only": summary(MATRIX, [100, 10, 10]),
      "text/retrain": summary(MATRIX, [100, 120, 140]),
    },
  }


def test_summary_rows_and_table():
  rows = dynamic_report.summary_rows(_fake_results())
  assert len(rows) == 9
  last = [r for r in rows if r["strategy"] == "retrain" and r["step"] == 2][0]
  assert last["cumulative_updates"] == 360
  assert last["A_H10"] == pytest.approx(1.6 / 3)
  assert last["D0_H10"] == 0.5 and last["new_H10"] == 0.4
  table = dynamic_report.format_table(rows, 2)
  assert table.count("\n") == 4 and "| text | retrain |" in table


def test_write_report_files(tmp_path):
  dynamic_report.write_report(_fake_results(), str(tmp_path))
  for name in (
    "results.json",
    "results.csv",
    "results.md",
    "d0_hits10.png",
    "new_docs_hits10.png",
    "updates_vs_A.png",
  ):
    assert os.path.getsize(tmp_path / name) > 0, name
  header = (tmp_path / "results.csv").read_text().splitlines()[0]
  assert header.startswith("scheme,strategy,step,updates")


# ------------------------------------------- the whole run, end to end --

TOPICS = (
  "volcano lava ash eruption crater",
  "football goal striker match",
  "election vote parliament party",
  "storm rain flood coast",
  "market shares bank profit",
  "film actor festival award",
  "school teacher pupils exam",
  "hospital doctor patients ward",
  "river bridge road traffic",
  "science space rocket moon",
)


def _write_toy_news(folder) -> None:
  """A BEIR + temporal.json folder: D0 of 10 documents, D1..D4 of 2 each;
  each document has a train query and a test query."""
  rng = np.random.default_rng(0)
  docs, queries, train, test, periods = [], {}, {}, {}, []
  sizes = (10, 2, 2, 2, 2)
  for p, size in enumerate(sizes):
    ids = []
    for _ in range(size):
      i = len(docs)
      words = TOPICS[i % len(TOPICS)].split() + list(
        rng.choice("alpha beta gamma delta north south east west".split(), 4)
      )
      doc_id = f"n{i}"
      docs.append(beir.Document(doc_id, f"title {i}", " ".join(words)))
      queries[f"tr{i}"] = " ".join(words[:3])
      queries[f"te{i}"] = " ".join(words[1:4])
      train[f"tr{i}"] = {doc_id: 1}
      test[f"te{i}"] = {doc_id: 1}
      ids.append(doc_id)
    periods.append(
      news.Period(f"D{p}", f"2020-0{p + 1}", f"2020-0{p + 1}", tuple(ids))
    )
  beir.write_beir(str(folder), docs, queries, {"train": train, "test": test})
  news.write_temporal(os.path.join(folder, news.TEMPORAL_FILE), periods)


def test_run_dynamic_experiment_end_to_end(tmp_path, monkeypatch):
  """Tiny BERT, atomic docids, warm start: trie_only, experience replay
  with a budget, generative replay + SAM from a (random) vector generator,
  retrain; two seeds. Checks costs, the replay budget, SAM at D0, the
  generative memory's storage and the report."""
  import jax
  from tests.support import tiny_bert
  from gr.queries import query_generators
  from gr.model import models
  from gr.model import pretrained
  from gr.search import retrieval
  from gr.train import data as data_lib
  from gr.train import optimizer as optimizer_lib
  from gr.model import warm_start
  from gr.index import wordpiece

  data_dir, workdir = tmp_path / "news", tmp_path / "work"
  _write_toy_news(data_dir)
  bert_dir = tiny_bert.write_tiny_bert(str(tmp_path / "bert"))
  model = tiny_bert.frozen_model(bert_dir)
  vocab = wordpiece.WordPieceVocabulary(pretrained.tokenizer_path(bert_dir))
  memory_model = models.fit_vocab(model, vocab.vocab_size)
  memory_generator = query_generators.VectorQueryGenerator(
    memory_model,
    warm_start.pretrained_params(
      memory_model,
      warm_start.load_encoder(bert_dir)[1],
      jax.random.PRNGKey(0),
      input_length=16,
      target_length=6,
      warm_start=False,
    ),
    vocab,
    query_generators.GenerationConfig(
      num_queries=1, max_query_len=6, batch_size=8
    ),
  )
  sam_radii, batch_sizes = [], []
  real_train, real_concat = (
    training.train_params,
    data_lib.concatenated_batches,
  )

  def recording_train(model, mixture, **kwargs):
    kind = "update" if ".update_" in mixture else "initial"
    sam_radii.append((kind, kwargs["sam_rho"]))
    return real_train(model, mixture, **kwargs)

  def recording_concat(*iterators):
    for batch in real_concat(*iterators):
      batch_sizes.append(len(batch["encoder_input_tokens"]))
      yield batch

  def recording_parts(*iterators):
    return recording_concat(*[_sizes(it) for it in iterators])

  part_sizes = []

  def _sizes(iterator):
    for batch in iterator:
      part_sizes.append(len(batch["encoder_input_tokens"]))
      yield batch

  monkeypatch.setattr(training, "train_params", recording_train)
  monkeypatch.setattr(data_lib, "concatenated_batches", recording_parts)
  settings = strategies.TrainSettings(
    batch_size=8,
    input_length=16,
    log_every=1000,
    optimizer=optimizer_lib.OptimizerConfig(learning_rate=1e-3),
  )
  results = dynamic.run_dynamic_experiment(
    data_dir=str(data_dir),
    workdir=str(workdir),
    model=model,
    schemes=("atomic",),
    strategies=(
      "trie_only",
      "experience_replay",
      "generative_replay_sam",
      "retrain",
    ),
    strategy_overrides={
      "experience_replay": {"replay_per_batch": 3},
      "generative_replay_sam": {"replay_per_batch": 3},
    },
    initial_steps=2,
    update_steps=2,
    settings=settings,
    search=retrieval.SearchConfig(beam_size=4, top_k=4),
    eval_splits=("test",),
    memory_generator=memory_generator,
    memorised_sample=4,
    seeds=(0, 1),
    strategy_seeds={"retrain": 1},
  )

  cells = results["cells"]
  assert set(cells) == {
    f"atomic/{s}"
    for s in (
      "trie_only",
      "experience_replay",
      "generative_replay_sam",
      "retrain",
    )
  }
  updates = {
    name.split("/")[1]: [s["gradient_updates"] for s in c["steps"]]
    for name, c in cells.items()
  }
  assert updates["trie_only"] == [2, 0, 0, 0, 0]
  assert updates["experience_replay"] == [2, 2, 2, 2, 2]
  assert updates["retrain"][1:] == [3, 3, 4, 4]  # ceil(2 * docs / 10)
  assert {name: c["seeds"] for name, c in cells.items()} == {
    "atomic/trie_only": 2,
    "atomic/experience_replay": 2,
    "atomic/generative_replay_sam": 2,
    "atomic/retrain": 1,  # strategy_seeds
  }
  assert not os.path.exists(workdir / "seed1" / "atomic" / "retrain")
  # SAM indexed D0 of the SAM cell (and its updates); the others plain.
  assert sam_radii.count(("initial", 0.05)) == 2  # D0 of each seed
  assert sam_radii.count(("update", 0.05)) == 2 * 4  # 2 seeds x 4 updates
  assert ("update", 0.0) in sam_radii  # experience replay
  assert os.path.isdir(workdir / "seed0" / "atomic" / "initial_sam0.05")
  # The budget: 3 replayed + 5 new examples in every budgeted batch.
  assert batch_sizes and set(batch_sizes) == {8}
  assert set(part_sizes) == {3, 5}
  # The generative memory keeps ids and vectors, no bodies.
  experience = cells["atomic/experience_replay"]["storage"]["memory_bytes"]
  generative = cells["atomic/generative_replay_sam"]["storage"]["memory_bytes"]
  assert generative < experience
  for cell in cells.values():
    assert all(0.0 <= m <= 1.0 for m in cell["memorised_d0"])
    matrix = np.array(cell["Hits@10"]["matrix"], dtype=float)
    assert matrix.shape == (5, 5) and not np.isnan(np.diag(matrix)).any()
  assert "±" in (workdir / "results.md").read_text()
  # Run again: every cell is read back, none retrained.
  sam_radii.clear()
  again = dynamic.run_dynamic_experiment(
    data_dir=str(data_dir),
    workdir=str(workdir),
    model=model,
    schemes=("atomic",),
    strategies=("trie_only", "retrain"),
    initial_steps=2,
    update_steps=2,
    settings=settings,
    search=retrieval.SearchConfig(beam_size=4, top_k=4),
    eval_splits=("test",),
    memorised_sample=4,
    seeds=(0, 1),
    strategy_seeds={"retrain": 1},
  )
  assert sam_radii == []
  assert (
    again["cells"]["atomic/retrain"]["Hits@10"]["A"]
    == cells["atomic/retrain"]["Hits@10"]["A"]
  )
