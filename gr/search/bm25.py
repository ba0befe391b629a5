"""BM25 baseline over a BEIR folder (bm25s, English stemming and stopwords).

  python -m gr.search.bm25 --data_dir data/news [--queries_file
      subtitles/queries.jsonl --qrels_dir subtitles/qrels] [--split test]
      [--out runs/bm25_test.trec]

Only `Document.text` is indexed (never the title). Writes a TREC run and
prints Hits@1, Hits@10, MRR@10 and Recall@100 (gr.search.metrics semantics).
"""

import argparse
import os
import sys
from typing import Callable, Mapping, Sequence

import bm25s
import Stemmer

from gr.search import metrics
from gr.data import beir

_STOPWORDS = "en"
_STEMMER_LANGUAGE = "english"


def _tokenize(texts: Sequence[str], stemmer, return_ids: bool):
  return bm25s.tokenize(
    list(texts),
    stopwords=_STOPWORDS,
    stemmer=stemmer,
    return_ids=return_ids,
    show_progress=False,
  )


def bm25_run(
  corpus: Mapping[str, beir.Document], queries: Mapping[str, str], k: int = 100
) -> metrics.Run:
  """Top-`k` BM25 results per query: {query_id: {doc_id: score}}.

  Documents that share no term with a query (score 0) are left out, so a
  query of only stopwords gets an empty ranking.
  """
  if not corpus or not queries:
    raise ValueError("bm25_run needs a non-empty corpus and query set")
  doc_ids = list(corpus)
  stemmer = Stemmer.Stemmer(_STEMMER_LANGUAGE)
  index = bm25s.BM25()
  index.index(
    _tokenize([corpus[d].text for d in doc_ids], stemmer, True),
    show_progress=False,
  )
  query_ids = list(queries)
  query_tokens = _tokenize([queries[q] for q in query_ids], stemmer, False)
  top, scores = index.retrieve(
    query_tokens, k=min(k, len(doc_ids)), show_progress=False
  )  # --> [queries, k] each
  return {
    qid: {doc_ids[d]: float(s) for d, s in zip(row, row_scores) if s > 0}
    for qid, row, row_scores in zip(query_ids, top, scores)
  }


def _qrels_for(dataset: beir.BeirDataset, split: str) -> beir.Qrels:
  """The qrels of `split`, or the union of all splits for 'all'."""
  if split != "all":
    return dataset.qrels[split]
  merged: beir.Qrels = {}
  for qrels in dataset.qrels.values():
    for qid, judged in qrels.items():
      merged.setdefault(qid, {}).update(judged)
  return merged


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """A fixed-width table: one row per system, one column per metric."""
  names = list(next(iter(rows.values())))
  width = max(len(r) for r in rows) + 2
  lines = ["".ljust(width) + "".join(n.rjust(11) for n in names)]
  for row_name, values in rows.items():
    lines.append(
      row_name.ljust(width) + "".join(f"{values[n]:11.3f}" for n in names)
    )
  return "\n".join(lines)


def baseline_main(
  argv: Sequence[str] | None,
  *,
  name: str,
  description: str,
  make_run: Callable[[argparse.Namespace, Mapping, Mapping], Mapping],
  add_arguments: Callable[[argparse.ArgumentParser], None] = lambda _: None,
) -> None:
  """A baseline's command line (`python -m gr.search.bm25` and .dense): its
  run on one split of a BEIR folder, an optional TREC file and the metrics.

  make_run(args, corpus, queries) -> run; add_arguments adds the
  baseline's own flags (before --out).
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--queries_file", default="queries.jsonl")
  parser.add_argument("--qrels_dir", default="qrels")
  parser.add_argument(
    "--split", default="test", help="a qrels split, or 'all' for every split"
  )
  parser.add_argument("--k", type=int, default=100)
  add_arguments(parser)
  parser.add_argument("--out", default=None, help="TREC run file to write")
  args = parser.parse_args(argv)
  dataset = beir.BeirDataset.load(
    args.data_dir, queries_file=args.queries_file, qrels_dir=args.qrels_dir
  )
  if args.split != "all" and args.split not in dataset.qrels:
    sys.exit(f"no qrels split {args.split!r}; have {sorted(dataset.qrels)}")
  qrels = _qrels_for(dataset, args.split)
  run = make_run(args, dataset.corpus, {q: dataset.queries[q] for q in qrels})
  if args.out:
    metrics.write_trec_run(args.out, run, tag=name)
  scores = metrics.evaluate_run(qrels, run)
  title = f"{name} {os.path.basename(os.path.normpath(args.data_dir))}"
  print(
    f"{len(qrels)} queries ({args.queries_file}, split {args.split}), "
    f"{len(dataset.corpus)} documents"
  )
  print(format_table({title: scores}))


def main(argv: Sequence[str] | None = None) -> None:
  baseline_main(
    argv,
    name="bm25",
    description="BM25 baseline on a BEIR folder",
    make_run=lambda args, corpus, queries: bm25_run(corpus, queries, k=args.k),
  )


if __name__ == "__main__":
  main()
