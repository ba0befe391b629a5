"""Tests for the dynamic-corpus protocol in gr/continual/: DSI++ metrics,
period data, report files (the driver: tests/experiments/test_dynamic.py)."""

import math
import os

import numpy as np
import pytest

from gr.continual import periods as periods_lib
from gr.continual import dsi_metrics
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
