r"""Latency of online add and delete (trie_only) and server start, by size.

  python scripts/bench_online.py --out=/tmp/bench_online.json \
    [--sizes=100000,1000000] [--updates=200] [--quick]

For each size n: a synthetic corpus of n documents with naive docids (digit
tokens, up to 7 digits + EOS at 1M), a tiny sentencepiece model and a tiny
untrained T5 (the model is not trained online: trie_only). The index is
saved once (set-up, timed as `full_write_s`: what a compaction costs), then:

  start:   load_index + encoding every docid + Retriever (bulk trie build,
           upload) + warm_up (compiling the one bucket), timed apart;
  add:     one first add and delete (timed apart: they compile the device
           scatter of their row counts, and at 10^k docids a naive docid one
           digit longer opens a trie level, which compiles the bucket
           again), then --updates single-document
           `add_documents` calls, each persisted
           (online documents log, index update log) and written into the
           device trie in place;
  delete:  --updates single `delete_document` calls of those documents.

Reports per size: start seconds, add/delete ms per document (mean, p50,
p99), whether a capacity grew (a recompile) during the timed updates, the
load average before and after. Target (issue 13): add <= 50 ms per
document at 1M docids.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from gr import bench_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OUT = flags.DEFINE_string('out', '/tmp/bench_online.json', 'JSON output.')
_SIZES = flags.DEFINE_list('sizes', ['100000', '1000000'], 'Corpus sizes.')
_UPDATES = flags.DEFINE_integer('updates', 200, 'Adds (then deletes) timed.')
_QUICK = flags.DEFINE_bool('quick', False, 'One 20k corpus, 20 updates.')


def synthetic_index(num_docs: int, work_dir: str):
  """Naive docids over `num_docs` documents and a 64-piece vocabulary."""
  from gr import docids  # pylint: disable=g-import-not-at-top
  from gr.index import artifact as index_lib  # pylint: disable=g-import-not-at-top
  from gr.data import beir  # pylint: disable=g-import-not-at-top

  corpus = {f'd{i}': beir.Document(f'd{i}', '', 'x') for i in range(num_docs)}
  table = docids.get_scheme('naive').assign(corpus)
  words = 'market election storm court vaccine budget trade energy film'
  texts = [
    ' '.join(np.random.default_rng(i).choice(words.split(), 8))
    for i in range(200)
  ]
  return index_lib.build_index(table, texts, work_dir, vocab_size=64)


def tiny_model(vocab_size: int):
  from gr.model import models  # pylint: disable=g-import-not-at-top
  from gr.model import network  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  model = models.EncoderDecoderModel(
    network.T5Config(
      vocab_size=-(-vocab_size // 128) * 128,
      emb_dim=32,
      num_heads=2,
      num_encoder_layers=1,
      num_decoder_layers=1,
      head_dim=16,
      mlp_dim=64,
      dropout_rate=0.0,
    )
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: jax.numpy.asarray(rng.normal(0, 0.3, s.shape), s.dtype),
    model.param_shapes(),
  )
  return model, params


def milliseconds(seconds: list[float]) -> dict:
  ms = np.array(seconds) * 1000
  return {
    'mean_ms': float(ms.mean()),
    'p50_ms': float(np.percentile(ms, 50)),
    'p99_ms': float(np.percentile(ms, 99)),
    'max_ms': float(ms.max()),
  }


def bench_size(num_docs: int, updates: int) -> dict:
  from gr.index import artifact as index_lib  # pylint: disable=g-import-not-at-top
  from gr.serve import retriever as serving  # pylint: disable=g-import-not-at-top
  from gr.data import beir  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix=f'bench_online_{num_docs}_')
  index = synthetic_index(num_docs, os.path.join(work, 'sp'))
  model, params = tiny_model(index.vocab.vocab_size)
  index_dir = os.path.join(work, 'index')
  start = time.perf_counter()
  index_lib.save_index(index, index_dir)
  full_write_s = time.perf_counter() - start
  del index

  start = time.perf_counter()
  loaded = index_lib.load_index(index_dir)
  load_s = time.perf_counter() - start
  start = time.perf_counter()
  loaded.docid_sequences()  # cached on the Index: the Retriever reuses it
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  retriever = serving.Retriever(
    model,
    params,
    loaded,
    input_length=16,
    config=serving.ServingConfig(max_k=10, buckets=(1,)),
    index_dir=index_dir,
  )
  init_s = time.perf_counter() - start
  start = time.perf_counter()
  retriever.warm_up()
  warm_up_s = time.perf_counter() - start

  new = [beir.Document(f'new{i}', '', 'fresh text') for i in range(updates)]
  start = time.perf_counter()
  retriever.add_documents([beir.Document('first', '', 'fresh text')])
  first_add_s = time.perf_counter() - start
  start = time.perf_counter()
  retriever.delete_document('first')
  first_delete_s = time.perf_counter() - start
  compiled = retriever.compiled_count()
  adds, deletes = [], []
  for doc in new:
    start = time.perf_counter()
    retriever.add_documents([doc])
    adds.append(time.perf_counter() - start)
  hits = retriever.retrieve(['fresh text'], 10)
  for doc in new:
    start = time.perf_counter()
    retriever.delete_document(doc.doc_id)
    deletes.append(time.perf_counter() - start)
  result = {
    'docids': num_docs,
    'full_write_s': full_write_s,
    'start': {
      'load_index_s': load_s,
      'encode_docids_s': encode_s,
      'retriever_init_s': init_s,
      'warm_up_s': warm_up_s,
      'total_s': load_s + encode_s + init_s + warm_up_s,
    },
    'first_add_ms': first_add_s * 1000,
    'first_delete_ms': first_delete_s * 1000,
    'add': milliseconds(adds),
    'delete': milliseconds(deletes),
    'recompiled_during_updates': retriever.compiled_count() > compiled,
    'retrieve_after_adds_ok': len(hits[0]) > 0,
    'updates': updates,
  }
  retriever.close()
  return result


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  sizes = [20000] if _QUICK.value else [int(s) for s in _SIZES.value]
  updates = 20 if _QUICK.value else _UPDATES.value
  before = bench_env.machine_load('before')
  runs = []
  for size in sizes:
    runs.append(bench_size(size, updates))
    print(json.dumps(runs[-1]), flush=True)
  result = {
    'device': str(jax.devices()[0]),
    'machine': platform.platform(),
    'commit': subprocess.run(
      ['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True, text=True
    ).stdout.strip(),
    'load': [before, bench_env.machine_load('after')],
    'sizes': runs,
  }
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=1)
  for run in runs:
    print(
      f"{run['docids']:>8} docids: start {run['start']['total_s']:.2f} s, "
      f"add {run['add']['mean_ms']:.2f} ms/doc (p99 "
      f"{run['add']['p99_ms']:.2f}), delete {run['delete']['mean_ms']:.2f} "
      f"ms/doc (p99 {run['delete']['p99_ms']:.2f})"
    )
  print(f'wrote {_OUT.value}', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
