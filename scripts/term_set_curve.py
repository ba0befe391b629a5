r"""Term-set docids alone against bm25s, as a curve over the set size m.

  python scripts/term_set_curve.py [--data_dir=data/news]
      [--sizes=16,32,64,128,0] [--words] [--out=docs/results/news/term_sets.json]

Builds each document's term set in the MiniLM WordPiece vocabulary (the
demo's, gr/index/lexicon.py) with its top-m terms by BM25 impact (0 = every
term), scores each query by the sum of its term occurrences times the
impacts (gr/search/exact.py `exact_lexical_scores`, the step-0 lexical part of the
model), and prints Hits@1 / Hits@10 / MRR@10 per query set and split next
to bm25s (stemmed, English stopwords) on the same queries. Writes JSON.
"""

import os

from absl import app
from absl import flags
import numpy as np

from gr import atomic_io
from gr.data import beir
from gr.docids import get_scheme
from gr.index import lexicon
from gr.index import vocab as vocab_lib
from gr.model import embed
from gr.model import pretrained
from gr.search import bm25
from gr.search import metrics
from gr.search import exact as exact_lib

_DATA_DIR = flags.DEFINE_string('data_dir', 'data/news', 'A BEIR folder.')
_SIZES = flags.DEFINE_list('sizes', ['16', '32', '64', '128', '0'], 'm.')
_LANGUAGE = flags.DEFINE_string(
  'language', 'english', "Fold whole-word pieces to stems ('' = pieces)."
)
_WORDS = flags.DEFINE_bool(
  'words', False, 'A word of several pieces is one term (its stem).'
)
_OUT = flags.DEFINE_string('out', '', 'JSON output (optional).')
QUERY_SETS = (('titles', 'queries.jsonl', 'qrels'),
              ('subtitles', 'subtitles/queries.jsonl', 'subtitles/qrels'))  # fmt: skip
METRICS = ('Hits@1', 'Hits@10', 'MRR@10')


def lexical_run(index, sets, queries):
  """{qid: {doc_id: score}} top 100 by the term sets alone."""
  tokens = vocab_lib.encode_texts(index.vocab, list(queries.values()), 128)
  run = {}
  for qid, row in zip(queries, tokens):
    scores = exact_lib.exact_lexical_scores(sets, index.vocab, row)
    top = np.argsort(-scores, kind='stable')[:100]
    run[qid] = {index.doc_ids[d]: float(scores[d]) for d in top if scores[d]}
  return run


def main(argv):
  del argv
  data_dir = _DATA_DIR.value
  corpus = beir.BeirDataset.load(data_dir).corpus
  table = get_scheme('atomic').assign(corpus)
  index = pretrained.wordpiece_index(table, embed.default_model_dir())
  query_sets = {}
  for name, queries_file, qrels_dir in QUERY_SETS:
    if not os.path.exists(os.path.join(data_dir, queries_file)):
      continue
    data = beir.BeirDataset.load(
      data_dir, queries_file=queries_file, qrels_dir=qrels_dir
    )
    for split in ('dev', 'test'):
      if data.qrels.get(split):
        qrels = data.qrels[split]
        query_sets[f'{name}/{split}'] = (
          {q: data.queries[q] for q in qrels},
          qrels,
        )
  results = {'bm25': {}, 'term_sets': {}}
  for key, (queries, qrels) in query_sets.items():
    run = bm25.bm25_run(corpus, queries, k=100)
    results['bm25'][key] = metrics.evaluate_run(qrels, run)
  for size in map(int, _SIZES.value):
    sets = lexicon.build_term_sets(
      index, corpus, max_terms=size, language=_LANGUAGE.value,
      words=_WORDS.value,
    )  # fmt: skip
    row = results['term_sets'][str(size or 'all')] = {}
    for key, (queries, qrels) in query_sets.items():
      row[key] = metrics.evaluate_run(qrels, lexical_run(index, sets, queries))
  print(f"{'m':>6} " + ''.join(f'{k:>22}' for k in query_sets))
  for name, row in [('bm25s', results['bm25'])] + [
    (f'm={m}', r) for m, r in results['term_sets'].items()
  ]:
    print(
      f'{name:>6} '
      + ''.join(
        f"{'/'.join(f'{row[k][n]:.3f}' for n in METRICS):>22}"
        for k in query_sets
      )
    )
  if _OUT.value:
    atomic_io.write_json(_OUT.value, results, indent=1)


if __name__ == '__main__':
  app.run(main)
