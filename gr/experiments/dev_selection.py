"""What a run chooses on its dev split: the lexical plan's weight, and the
checkpoint (early stopping).

Never on the eval (test) split. Where a folder has no dev split the train
queries are used (a folder with neither is an error naming it).

Early stopping: every saved checkpoint and step 0 (the warm start) is
scored on dev, each with its own best plan weight; the step with the best
mean dev MRR@10 wins (ties to the earlier step). The learning curve keeps,
per step, the dev table and, for the record only, the eval split's metrics
at that step's weight.
"""

import dataclasses
import logging
import os
from typing import Callable, Sequence

from gr.data import beir
from gr.search import evaluation
from gr.search import metrics
from gr.search import retrieval


def subset(dataset: beir.BeirDataset, max_docs: int) -> beir.BeirDataset:
  """The first `max_docs` documents and the queries judged entirely
  inside them."""
  if not max_docs or max_docs >= len(dataset.corpus):
    return dataset
  return dataset.restricted_to(
    list(dataset.corpus)[:max_docs], whole_queries=True
  )


def query_set_data(data_dir, query_sets, split: str, max_docs: int):
  """Yields (query set, its BeirDataset) for each query set whose file is
  in `data_dir` and that has `split` qrels."""
  for query_set in query_sets:
    if not os.path.exists(os.path.join(data_dir, query_set.queries_file)):
      continue
    dataset = subset(
      beir.BeirDataset.load(
        data_dir,
        queries_file=query_set.queries_file,
        qrels_dir=query_set.qrels_dir,
      ),
      max_docs,
    )
    if dataset.qrels.get(split):
      yield query_set, dataset


def held_out_queries(data_dir, query_sets, split: str, max_docs: int) -> dict:
  """{query set name: (queries, qrels of `split`)} where the split exists."""
  return {
    query_set.name: (dataset.queries, dataset.qrels[split])
    for query_set, dataset in query_set_data(
      data_dir, query_sets, split, max_docs
    )
  }


@dataclasses.dataclass(frozen=True)
class LexicalSelection:
  """Where and among what the lexical plan's weight is chosen; no
  weights: no plan (only the model alone, weight 0, is scored).

  weights: candidate weights of the lexical plan (term-set docids,
  gr/docids/term_sets.py); they, 0 (the model alone) and inf (the term
  sets alone) compete, and the one with the best mean MRR@10 on `split`
  (the train queries where a folder has no such split; never the eval
  split) is used.
  """

  data_dir: str
  query_sets: Sequence[evaluation.QuerySet]
  weights: Sequence[float]
  split: str
  eval_split: str
  max_docs: int

  def choose(self, searcher: retrieval.Searcher) -> dict:
    """Sets the searcher's weight to the best on the held-out split;
    returns {"split", "chosen", "MRR@10": {weight: mean MRR@10}}."""
    split = self.split
    held_out = held_out_queries(
      self.data_dir, self.query_sets, split, self.max_docs
    )
    if not held_out:
      split = "train"
      held_out = held_out_queries(
        self.data_dir, self.query_sets, split, self.max_docs
      )
    if split == self.eval_split or not held_out:
      raise ValueError(
        f"{self.data_dir}: no {split!r} queries to choose on (the "
        f"{self.eval_split!r} split is never used for that)"
      )
    candidates = [0.0, *self.weights, float("inf")] if self.weights else [0.0]
    chosen, table = evaluation.select_lexical_weight(
      searcher, held_out, candidates
    )
    searcher.lexical_weight = chosen
    logging.info("lexical weight %s (mean %s MRR@10 %s)", chosen, split, table)
    return {"split": split, "chosen": chosen, "MRR@10": table}

  def eval_metrics(self, searcher: retrieval.Searcher) -> dict:
    """{query set: metrics} on the eval split at the searcher's weight."""
    return {
      f"{name}/{self.eval_split}": metrics.evaluate_run(
        qrels,
        searcher.run({q: queries[q] for q in qrels}),
        **evaluation.METRIC_KWARGS,
      )
      for name, (queries, qrels) in held_out_queries(
        self.data_dir, self.query_sets, self.eval_split, self.max_docs
      ).items()
    }


def learning_curve(
  selection: LexicalSelection,
  steps: Sequence[int],
  searcher_at: Callable[[int], retrieval.Searcher],
) -> list[dict]:
  """[{"step", "dev": choose()'s record, "eval": eval_metrics}] per step,
  each searched at its own dev-chosen weight."""
  curve = []
  for step in steps:
    searcher = searcher_at(step)
    dev = selection.choose(searcher)
    curve.append(
      {"step": step, "dev": dev, "eval": selection.eval_metrics(searcher)}
    )
    logging.info(
      "step %d: dev MRR@10 %.4f (weight %s)",
      step, dev["MRR@10"][str(dev["chosen"])], dev["chosen"],
    )  # fmt: skip
  return curve


def best_step(curve: Sequence[dict]) -> int:
  """The step with the best dev MRR@10 at its chosen weight (ties: the
  earlier step)."""
  if not curve:
    raise ValueError("best_step needs a non-empty learning curve")
  scores = [
    (p["dev"]["MRR@10"][str(p["dev"]["chosen"])], -p["step"]) for p in curve
  ]
  return -max(scores)[1]
