"""Tests for gr/continual/period_plan.py: the plan over a growing corpus."""

import dataclasses

import numpy as np
import pytest

from gr.continual import period_plan
from gr.data import beir
from gr.docids import term_sets as term_sets_lib
from gr.index import lexicon

TEXTS = {
  "d0": "volcano lava erupted near the coast",
  "d1": "the election vote counted in parliament",
  "d2": "storm floods the coast road",
  "d3": "lava from the volcano reached the storm shelters",
}
DEV = {"dev": ({"q": "volcano"}, {"q": {"d0": 1}})}


@dataclasses.dataclass(frozen=True)
class FakeIndex:
  doc_ids: list
  vocab: object


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  from tests.support import tiny_bert
  from gr.index import wordpiece
  from gr.model import pretrained

  folder = tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("bert")))
  return wordpiece.WordPieceVocabulary(pretrained.tokenizer_path(folder))


def corpus():
  return {d: beir.Document(d, "", t) for d, t in TEXTS.items()}


@pytest.mark.parametrize("words", [False, True])
def test_later_documents_get_sets_from_d0_frozen_statistics(vocab, words):
  settings = period_plan.PlanSettings(
    weights=(1.0,), language="english", words=words
  )
  plan = period_plan.PeriodPlan(corpus(), ["d0", "d1", "d2"], settings, DEV)
  d0 = FakeIndex(["d0", "d1", "d2"], vocab)
  at_d0 = plan.term_sets(d0)
  built = lexicon.build_term_sets(d0, corpus(), language="english", words=words)
  np.testing.assert_array_equal(at_d0.terms, built.terms)
  np.testing.assert_array_equal(at_d0.impacts, built.impacts)

  # A later version: a new document, and the index in another order.
  later = plan.term_sets(FakeIndex(["d2", "d3", "d0", "d1"], vocab))
  assert later.stats is at_d0.stats and later.stats.num_docs == 3
  rows, rows_d0 = later.rows(), dict(zip(["d0", "d1", "d2"], at_d0.rows()))
  for doc_id, (terms, impacts) in zip(["d2", "d0", "d1"], [rows[0], *rows[2:]]):
    np.testing.assert_array_equal(terms, rows_d0[doc_id][0])
    np.testing.assert_array_equal(impacts, rows_d0[doc_id][1])
  fold = lexicon.folding(vocab, at_d0)
  expected = term_sets_lib.term_set(
    fold.text_terms(vocab, [TEXTS["d3"]])[0], at_d0.stats, 0
  )
  np.testing.assert_array_equal(rows[1][0], expected[0])
  np.testing.assert_allclose(rows[1][1], expected[1])
  # D3 shares 'volcano' and 'lava' with d0: the same term ids as d0's.
  assert len(set(rows[1][0]) & set(rows_d0["d0"][0])) >= 2
  # Statistics rebuilt over all four would differ (not what is used).
  grown = lexicon.build_term_sets(
    FakeIndex(["d2", "d3", "d0", "d1"], vocab),
    corpus(),
    language="english",
    words=words,
  )
  assert not np.allclose(grown.impacts[2], later.impacts[2])


def test_d0_queries_keep_queries_judged_in_d0_only():
  queries = {"a": "x", "b": "y", "c": "z", "e": "w"}
  qrels = {
    "a": {"d0": 1},
    "b": {"d0": 1, "d9": 1},  # a relevant document outside D0
    "c": {"d9": 1},
    "e": {"d1": 1, "d9": 0},  # judged irrelevant outside: kept
  }
  held = period_plan.d0_queries((queries, qrels), ["d0", "d1"])
  assert held == {
    "dev": ({"a": "x", "e": "w"}, {"a": qrels["a"], "e": qrels["e"]})
  }
  assert period_plan.d0_queries((queries, qrels), ["d5"]) == {}


class WeightedSearcher:
  """Ranks the relevant document first only at lexical weight 2."""

  lexical_weight = 0.0

  def run(self, queries):
    right = self.lexical_weight == 2.0
    return {
      q: {"d0": 2.0, "d1": 1.0} if right else {"d1": 2.0} for q in queries
    }


def test_the_weight_is_chosen_on_d0_dev_and_set(vocab):
  settings = period_plan.PlanSettings(weights=(1.0, 2.0, 4.0))
  plan = period_plan.PeriodPlan(corpus(), ["d0", "d1"], settings, DEV)
  searcher = WeightedSearcher()
  weight, table = plan.choose(searcher)
  assert weight == 2.0 and searcher.lexical_weight == 2.0
  assert set(table) == {"0.0", "1.0", "2.0", "4.0", "inf"}
  assert table["2.0"] == 1.0 and table["0.0"] == 0.0


def test_a_plan_needs_weights_and_dev_queries():
  with pytest.raises(ValueError, match="candidate weights"):
    period_plan.PeriodPlan(corpus(), ["d0"], period_plan.PlanSettings(), DEV)
  with pytest.raises(ValueError, match="'dev' queries of D0"):
    period_plan.PeriodPlan(
      corpus(), ["d0"], period_plan.PlanSettings(weights=(1.0,)), {}
    )
