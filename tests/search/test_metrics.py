"""Tests for gr/search/metrics.py against pytrec_eval and hand-checked cases."""

from hypothesis import given, settings, strategies as st
import pytest
import pytrec_eval

from gr.search import metrics

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 2}, "q3": {"z": 1}}


def test_hand_checked_values():
  run = {
    "q1": {"x": 3.0, "a": 2.0, "y": 1.0},  # relevant at rank 2
    "q2": {"c": 5.0, "x": 4.0},  # 1 of 2 relevant, at rank 1
    # q3 missing from the run: counts as 0 everywhere.
  }
  got = metrics.evaluate_run(QRELS, run, hits_ks=(1, 2), recall_ks=(2,))
  assert got == pytest.approx(
    {
      "Hits@1": 1 / 3,
      "Hits@2": 2 / 3,
      "MRR@10": (1 / 2 + 1) / 3,
      "Recall@2": (1 + 0.5) / 3,
    }
  )


def test_missing_and_empty_queries_count_as_zero():
  per_query = metrics.per_query_metrics(QRELS, {"q1": {"a": 1.0}, "q2": {}})
  assert per_query["q1"] == {
    "Hits@1": 1,
    "Hits@10": 1,
    "MRR@10": 1,
    "Recall@100": 1,
  }
  assert (
    per_query["q2"]
    == per_query["q3"]
    == {"Hits@1": 0, "Hits@10": 0, "MRR@10": 0, "Recall@100": 0}
  )
  assert metrics.evaluate_run(QRELS, {"q1": {"a": 1.0}})["Hits@1"] == 1 / 3


def test_run_queries_outside_qrels_are_ignored():
  run = {"q1": {"a": 1.0}, "other": {"a": 1.0}}
  assert set(metrics.per_query_metrics(QRELS, run)) == {"q1", "q2", "q3"}


def test_ties_follow_trec_eval_docid_descending():
  # All tied: trec_eval ranks c, b, a; so 'a' is at rank 3.
  run = {"q1": {"a": 1.0, "b": 1.0, "c": 1.0}}
  assert metrics.ranked(run["q1"]) == [("c", 1.0), ("b", 1.0), ("a", 1.0)]
  per_query = metrics.per_query_metrics({"q1": {"a": 1}}, run, hits_ks=(2, 3))
  assert per_query["q1"]["Hits@2"] == 0 and per_query["q1"]["Hits@3"] == 1
  assert per_query["q1"]["MRR@10"] == pytest.approx(1 / 3)


def test_mrr_is_cut_at_k_but_recall_is_not():
  # The relevant doc is at rank 11.
  run = {"q1": {f"d{i:02d}": 100.0 - i for i in range(1, 12)}}
  qrels = {"q1": {"d11": 1}}
  got = metrics.evaluate_run(qrels, run)
  assert got["MRR@10"] == 0 and got["Hits@10"] == 0 and got["Recall@100"] == 1
  assert metrics.evaluate_run(qrels, run, mrr_k=11)["MRR@11"] == (
    pytest.approx(1 / 11)
  )


def test_graded_relevance_zero_is_not_relevant():
  run = {"q1": {"a": 2.0, "b": 1.0}}
  got = metrics.evaluate_run({"q1": {"a": 0, "b": 1}}, run)
  assert got["Hits@1"] == 0 and got["MRR@10"] == 0.5


def test_non_finite_scores_are_rejected():
  with pytest.raises(ValueError, match="'q1' doc 'a'"):
    metrics.evaluate_run(QRELS, {"q1": {"a": float("nan")}})


_doc = st.sampled_from([f"d{i}" for i in range(15)])
_run = st.dictionaries(
  st.sampled_from(["q1", "q2", "q3"]),
  st.dictionaries(_doc, st.integers(0, 5).map(float), min_size=1, max_size=15),
  min_size=3,
)
_qrels = st.dictionaries(
  st.sampled_from(["q1", "q2", "q3"]),
  st.dictionaries(_doc, st.integers(0, 2), min_size=1, max_size=4),
  min_size=3,
)


@settings(max_examples=60, deadline=None)
@given(qrels=_qrels, run=_run)
def test_matches_pytrec_eval_when_every_query_is_answered(qrels, run):
  """Peer oracle: pytrec_eval with its own measures (recip_rank uncut here).

  Scores are small integers so ties are frequent.
  """
  ref = pytrec_eval.RelevanceEvaluator(
    qrels, {"success.1,5", "recall.10", "recip_rank"}
  ).evaluate(run)
  got = metrics.per_query_metrics(
    qrels, run, hits_ks=(1, 5), mrr_k=1000, recall_ks=(10,)
  )
  for qid in qrels:
    assert got[qid] == pytest.approx(
      {
        "Hits@1": ref[qid]["success_1"],
        "Hits@5": ref[qid]["success_5"],
        "MRR@1000": ref[qid]["recip_rank"],
        "Recall@10": ref[qid]["recall_10"],
      }
    )


@settings(max_examples=30, deadline=None)
@given(run=_run)
def test_trec_run_round_trip_and_ranks(tmp_path_factory, run):
  path = tmp_path_factory.mktemp("run") / "r.trec"
  metrics.write_trec_run(path, run, tag="test")
  assert metrics.read_trec_run(path) == run
  rows = [line.split() for line in path.read_text().splitlines()]
  for qid, docs in run.items():
    mine = [(row[2], int(row[3])) for row in rows if row[0] == qid]
    expected = [d for d, _ in metrics.ranked(docs)]
    assert mine == [(d, r) for r, d in enumerate(expected, start=1)]


def test_read_trec_run_errors(tmp_path):
  path = tmp_path / "bad.trec"
  path.write_text("q1 Q0 a 1 1.0 t\nq1 Q0 a 2 0.5 t\n")
  with pytest.raises(ValueError, match="bad.trec:2: duplicate doc 'a'"):
    metrics.read_trec_run(path)
  path.write_text("q1 Q0 a 1 1.0\n")
  with pytest.raises(ValueError, match="bad.trec:1: expected 6 columns"):
    metrics.read_trec_run(path)
