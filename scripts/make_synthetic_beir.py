r"""Writes a synthetic BEIR folder with planted known-item queries.

  python scripts/make_synthetic_beir.py --out=/tmp/syn1m --docs=1000000 \
      [--train_queries=10000 --dev_queries=100 --test_queries=1000 --dim=64]

The folder gets corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv
(the BEIR layout gr/data/beir.py reads), embeddings.npz (the user's
embeddings file: `ids` [N], `vectors` [N, dim], gr/data/embeddings_file.py)
and synthetic.json (the spec). Each query's document is the only one
holding the query's rare words (gr/data/synthetic.py). Then e.g.

  python scripts/build_docids.py --data_dir=/tmp/syn1m --scheme=rq \
      --embeddings_file=/tmp/syn1m/embeddings.npz --out=/tmp/syn1m_rq
"""

import time

from absl import app
from absl import flags

from gr import entry
from gr.data import synthetic

_OUT = flags.DEFINE_string('out', None, 'BEIR folder to write.', required=True)
_DOCS = flags.DEFINE_integer('docs', 10000, 'Documents N.')
_TRAIN = flags.DEFINE_integer('train_queries', 1000, 'Planted train queries.')
_DEV = flags.DEFINE_integer('dev_queries', 100, 'Planted dev queries.')
_TEST = flags.DEFINE_integer('test_queries', 1000, 'Planted test queries.')
_WORDS = flags.DEFINE_integer('words_per_doc', 30, 'Common words a body.')
_DIM = flags.DEFINE_integer('dim', 64, 'Embedding dimension D.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed: same flags, same files.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    spec = synthetic.SyntheticSpec(
      _DOCS.value,
      queries=(_TRAIN.value, _DEV.value, _TEST.value),
      words_per_doc=_WORDS.value,
      dim=_DIM.value,
      seed=_SEED.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  start = time.perf_counter()
  summary = synthetic.write_synthetic_beir(_OUT.value, spec)
  print(
    f'wrote {summary["num_docs"]} documents and {summary["planted"]} '
    f'planted queries to {_OUT.value} in {time.perf_counter() - start:.1f} s'
  )


if __name__ == '__main__':
  entry.run(main)
