"""The lexical plan over a growing corpus (the dynamic experiment).

Term-set docids (gr/docids/term_sets.py) need corpus statistics. Here they
follow the service's rule: frozen at indexing time. D0's bodies give the
statistics (and, with whole words, the word table) when version 0 is
built. Every later document gets its set from its own body and those
frozen statistics, with no training, as an online add does
(gr/serve/served_plan.py). The plan's weight beta is chosen once, on
version 0, with D0's dev queries (never test, never a later period's
queries), and kept for every update after it.

  plan = PeriodPlan(corpus, d0_doc_ids, weights=(1.0, 2.0), dev=dev_sets)
  sets = plan.term_sets(version.index)   # [N, M] rows in the index's order
  weight, table = plan.choose(searcher)  # once, on version 0
"""

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from gr.data import beir
from gr.docids import term_sets as term_sets_lib
from gr.index import lexicon
from gr.search import evaluation
from gr.search import metrics

QuerySets = Mapping[str, tuple[Mapping[str, str], metrics.Qrels]]


@dataclasses.dataclass(frozen=True)
class PlanSettings:
  """What the dynamic experiment's plan is (gin binds it).

  weights: the candidates besides 0 (the model alone) and inf (the term
  sets alone); empty = no plan. language / words / max_terms: the term
  folding, as run_experiment's term_language / term_words /
  term_set_size. selection_split: where beta is chosen (D0's queries of
  that split).
  """

  weights: Sequence[float] = ()
  language: str = ""
  words: bool = False
  max_terms: int = 0
  selection_split: str = "dev"


class PeriodPlan:
  """Term sets of any version's documents from D0's frozen statistics,
  and the weight chosen on D0's held-out queries."""

  def __init__(
    self,
    corpus: Mapping[str, beir.Document],
    d0_doc_ids: Sequence[str],
    settings: PlanSettings,
    dev: QuerySets,
  ):
    if not settings.weights:
      raise ValueError("PeriodPlan needs candidate weights")
    if not dev:
      raise ValueError(
        f"no {settings.selection_split!r} queries of D0 to choose the "
        "lexical weight on"
      )
    self.corpus, self.settings, self.dev = corpus, settings, dev
    self.d0_doc_ids = list(d0_doc_ids)
    self._base: Optional[term_sets_lib.TermSets] = None
    self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def _frozen(self, vocab) -> term_sets_lib.TermSets:
    """D0's term sets, built once (the statistics every later set uses)."""
    if self._base is None:
      d0 = _D0Index(self.d0_doc_ids, vocab)
      self._base = lexicon.build_term_sets(
        d0,
        self.corpus,
        max_terms=self.settings.max_terms,
        language=self.settings.language,
        words=self.settings.words,
      )
      self._rows = dict(zip(self.d0_doc_ids, self._base.rows()))
    return self._base

  def term_sets(self, index) -> term_sets_lib.TermSets:
    """The term sets of `index`'s documents, rows in its doc order [N, M]."""
    base = self._frozen(index.vocab)
    new = [d for d in index.doc_ids if d not in self._rows]
    if new:
      fold = lexicon.folding(index.vocab, base)
      texts = [self.corpus[d].text for d in new]
      for doc_id, terms in zip(new, fold.text_terms(index.vocab, texts)):
        self._rows[doc_id] = term_sets_lib.term_set(
          terms, base.stats, base.max_terms
        )
    return base.with_rows([self._rows[d] for d in index.doc_ids])

  def choose(self, searcher) -> tuple[float, dict[str, float]]:
    """(weight, {weight: mean MRR@10}) on D0's held-out queries; the
    searcher is left at the chosen weight."""
    candidates = [0.0, *self.settings.weights, float("inf")]
    weight, table = evaluation.select_lexical_weight(
      searcher, self.dev, candidates
    )
    searcher.lexical_weight = weight
    return weight, table


@dataclasses.dataclass(frozen=True)
class _D0Index:
  """The two things build_term_sets reads of an index."""

  doc_ids: list[str]
  vocab: object


def d0_queries(
  held_out: tuple[Mapping[str, str], metrics.Qrels],
  d0_doc_ids: Sequence[str],
) -> QuerySets:
  """{"dev": (queries, qrels)} of the held-out queries judged in D0 only
  (a query with a relevant document outside D0 is left out: D0's index
  cannot find it)."""
  queries, qrels = held_out
  ids = set(d0_doc_ids)
  kept = {
    q: docs
    for q, docs in qrels.items()
    if docs and all(d in ids for d, s in docs.items() if s > 0)
  }
  if not kept:
    return {}
  return {"dev": ({q: queries[q] for q in kept}, kept)}
