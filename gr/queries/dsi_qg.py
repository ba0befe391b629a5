"""DSI-QG's generated queries: training pairs, a filter, and their quality.

DSI-QG (Zhuang et al. 2022) indexes each document by queries a doc2query
model writes from its body, keeping those a ranker judges relevant. Here:

* `training_pairs`: the body -> query pairs doc2query learns from: the
  train qrels of every query file of a BEIR folder (the news benchmark:
  titles and subtitles), never dev or test; `held_out_sets` their test
  splits;
* `bm25_filter`: keep a generated query only if its own document ranks in
  BM25's top k for it over the whole corpus (a lexical stand-in for
  DSI-QG's cross-encoder);
* `query_report`: how good the queries are, measured against what they
  imitate: word overlap with each document's held-out title against the
  overlap with a random other document's title (chance), and BM25 over the
  generated queries alone (each document represented only by its queries)
  as a retrieval signal on the held-out queries.
"""

import os
import random
from typing import Callable, Iterable, Mapping, Optional, Sequence

from gr.search import metrics
from gr.search import bm25
from gr.data import beir

PseudoQueries = Mapping[str, Sequence[str]]


def training_pairs(
  data_dir: str, query_files: Sequence[tuple[str, str]]
) -> beir.BeirDataset:
  """The corpus with the train (and dev) qrels of every (queries file,
  qrels dir) that exists; query ids must not repeat across files."""
  corpus, queries, qrels = None, {}, {"train": {}, "dev": {}}
  for queries_file, qrels_dir in query_files:
    if not os.path.exists(os.path.join(data_dir, queries_file)):
      continue
    dataset = beir.BeirDataset.load(
      data_dir, queries_file=queries_file, qrels_dir=qrels_dir
    )
    corpus = corpus or dataset.corpus
    for split in qrels:
      for qid, docs in dataset.qrels.get(split, {}).items():
        if qid in queries and queries[qid] != dataset.queries[qid]:
          raise ValueError(
            f"{data_dir}/{queries_file}: query id {qid!r} "
            "also names another query in an earlier file"
          )
        queries[qid] = dataset.queries[qid]
        qrels[split][qid] = docs
  if corpus is None:
    raise FileNotFoundError(f"{data_dir}: none of {list(query_files)} exists")
  return beir.BeirDataset(
    corpus, queries, {s: q for s, q in qrels.items() if q}
  )


def held_out_sets(
  data_dir: str, query_files: Sequence[tuple[str, str]]
) -> dict[str, tuple[dict[str, str], dict[str, dict[str, int]]]]:
  """{name: (queries, qrels)}: the test split of each (queries file, qrels
  dir) that has one, named e.g. "queries/test", "subtitles/test"."""
  sets = {}
  for queries_file, qrels_dir in query_files:
    if not os.path.exists(os.path.join(data_dir, qrels_dir, "test.tsv")):
      continue
    dataset = beir.BeirDataset.load(
      data_dir, queries_file=queries_file, qrels_dir=qrels_dir, splits=["test"]
    )
    name = os.path.dirname(queries_file) or "queries"
    sets[f"{name}/test"] = (dataset.queries, dataset.qrels["test"])
  return sets


Ranker = Callable[[Mapping[str, str]], Mapping[str, Mapping[str, float]]]


def rank_filter(rank: Ranker, queries: PseudoQueries) -> dict[str, list[str]]:
  """The generated queries whose own document is in `rank`'s run for them.

  Args:
    rank: {query_id: text} -> {query_id: {doc_id: score}}, its top k per
      query (BM25: `bm25_ranker`; the current GR model: `model_ranker`).
    queries: {doc_id: generated queries}.
  """
  flat = {
    f"{d}\x00{i}": q for d, qs in queries.items() for i, q in enumerate(qs)
  }
  run = rank(flat) if flat else {}
  kept: dict[str, list[str]] = {}
  for key, query in flat.items():
    doc_id = key.split("\x00")[0]
    if doc_id in run.get(key, {}):
      kept.setdefault(doc_id, []).append(query)
  return kept


def bm25_ranker(corpus: Mapping[str, beir.Document], top_k: int) -> Ranker:
  """BM25's top `top_k` over `corpus` (a lexical stand-in for DSI-QG's
  cross-encoder)."""
  return lambda texts: bm25.bm25_run(corpus, texts, k=top_k)


def model_ranker(retriever, top_k: int) -> Ranker:
  """A trained GR model's top `top_k` (a gr.serve.retriever.Retriever)."""

  def rank(texts: Mapping[str, str]) -> dict[str, dict[str, float]]:
    ids = list(texts)
    hits = retriever.retrieve([texts[q] for q in ids], top_k)
    return {q: {h.doc_id: h.score for h in row} for q, row in zip(ids, hits)}

  return rank


def bm25_filter(
  corpus: Mapping[str, beir.Document], queries: PseudoQueries, top_k: int
) -> dict[str, list[str]]:
  """The generated queries whose own document is in BM25's top `top_k`."""
  return rank_filter(bm25_ranker(corpus, top_k), queries)


def query_report(
  queries: PseudoQueries,
  dataset: beir.BeirDataset,
  held_out: Mapping[str, tuple[Mapping[str, str], beir.Qrels]],
  seed: int = 0,
) -> dict:
  """Quality of generated queries against held-out query sets.

  Args:
    queries: {doc_id: generated queries}.
    dataset: the corpus.
    held_out: {name: (queries, qrels)}, e.g. the test titles; each query
      is the reference text of the documents it is relevant to.
    seed: picks the random other document of the chance overlap.

  Returns:
    {name: {"overlap", "chance_overlap", "documents", "bm25_generated":
    metrics, "bm25_bodies": metrics}} plus "queries_per_doc".
  """
  rng = random.Random(seed)
  generated_corpus = {
    d: beir.Document(d, "", " ".join(qs)) for d, qs in queries.items() if qs
  }
  report = {
    "queries_per_doc": sum(map(len, queries.values()))
    / max(len(dataset.corpus), 1)
  }
  for name, (texts, qrels) in held_out.items():
    reference = {d: texts[q] for q, docs in qrels.items() for d in docs}
    judged = [d for d in reference if d in queries]
    shuffled = {
      d: reference[rng.choice([o for o in reference if o != d])] for d in judged
    }
    report[name] = {
      "documents": len(judged),
      "overlap": word_overlap(queries, reference, judged),
      "chance_overlap": word_overlap(queries, shuffled, judged),
      "bm25_generated": metrics.evaluate_run(
        qrels, bm25.bm25_run(generated_corpus, texts), hits_ks=(1, 10)
      ),
      "bm25_bodies": metrics.evaluate_run(
        qrels, bm25.bm25_run(dataset.corpus, texts), hits_ks=(1, 10)
      ),
    }
  return report


def _words(text: str) -> set[str]:
  return {w.strip(".,:;!?\"'()").lower() for w in text.split()} - {""}


def word_overlap(
  queries: Mapping[str, Sequence[str]],
  references: Mapping[str, str],
  doc_ids: Optional[Iterable[str]] = None,
) -> float:
  """Fraction of generated-query words (lower-cased) found in the reference.

  E.g. references = titles: a doc2query model trained on body -> title
  pairs shows how title-like its queries are; train documents (whose
  titles it saw) against test documents (whose titles it never saw).
  """
  found = total = 0
  for doc_id in queries if doc_ids is None else doc_ids:
    reference = _words(references.get(doc_id, ""))
    for query in queries.get(doc_id, ()):
      words = _words(query)
      found += len(words & reference)
      total += len(words)
  return found / max(total, 1)
