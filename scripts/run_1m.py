r"""N documents end to end on one machine, wall time and peak RSS per phase.

  python scripts/run_1m.py --docs=1000000 --workdir=/tmp/one_million \
      [--output=docs/results/one_million/scale_1000000.json]

Issue 21 item 5. The phases, in one process, in order (each is what
run_experiment and the service do, called piece by piece so that each can
be measured):

  generate      the synthetic BEIR folder with planted known-item queries
                and the user's embeddings file (gr/data/synthetic.py);
                skipped when the folder already holds the same spec
  load          BeirDataset.load of the folder
  docids        RQ codes over the embeddings file's vectors
                (indexing.assign_docids(embeddings_file=...))
  vocab_index   sentencepiece on bodies + train queries, the index saved
  tasks         the indexing + retrieval tasks, streamed from TFRecord
                shards above 50,000 documents (run.docid_tasks)
  train         --steps steps of gin/models/t5_tiny.gin, one checkpoint
  evaluate      constrained beam search on the --eval_queries test queries
  bm25          the BM25 baseline on the same queries (--bm25)
  serve_load    Retriever.from_checkpoint + warm_up (the served index)
  serve_search  the same test queries through the served index
  online_adds   --adds single-document add_documents calls, each persisted,
                then their own queries searched

Peak RSS of a phase is the process's VmHWM after the phase, with the mark
reset (/proc/self/clear_refs = 5) before it: the most memory the process
held during that phase. The JSON is rewritten (atomically) after every
phase, so a run cut short keeps the phases it finished.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_DOCS = flags.DEFINE_integer('docs', 10000, 'Corpus size N.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder.', required=True)
_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'BEIR folder (default <workdir>/data).'
)
_OUTPUT = flags.DEFINE_string('output', None, 'JSON (default docs/results/).')
_STEPS = flags.DEFINE_integer('steps', 200, 'Training steps.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Training batch size.')
_EVAL = flags.DEFINE_integer('eval_queries', 1000, 'Planted test queries.')
_ADDS = flags.DEFINE_integer('adds', 1000, 'Online single-document adds.')
_BM25 = flags.DEFINE_bool('bm25', True, 'Run the BM25 baseline phase.')
_LEVELS = flags.DEFINE_integer('rq_levels', 4, 'RQ levels L.')
_CODES = flags.DEFINE_integer('rq_codebook', 64, 'RQ codebook size K.')
_KMEANS_ITERS = flags.DEFINE_integer('kmeans_iters', 20, 'Lloyd iterations.')
_VOCAB = flags.DEFINE_integer('vocab_size', 8000, 'Sentencepiece pieces.')
_INPUT_LENGTH = 64


def vm_kb(field: str) -> int:
  """A /proc/self/status field in kB (VmHWM: peak RSS, VmRSS: RSS now)."""
  with open('/proc/self/status') as f:
    return int(re.search(rf'{field}:\s+(\d+)', f.read()).group(1))


def load() -> float:
  return os.getloadavg()[0]


class Phases:
  """Times phases and their peak RSS; writes the record after each."""

  def __init__(self, output: str, record: dict):
    self.output, self.record = output, record
    self.record['phases'] = {}

  @contextlib.contextmanager
  def phase(self, name: str, **facts):
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # Resets VmHWM to the current RSS.
    entry = {'load_before': load(), 'rss_before_mb': vm_kb('VmRSS') / 1024}
    start = time.perf_counter()
    print(f'[{time.strftime("%H:%M:%S")}] {name} ...', flush=True)
    yield entry
    entry.update(
      wall_s=round(time.perf_counter() - start, 2),
      peak_rss_mb=round(vm_kb('VmHWM') / 1024, 1),
      rss_after_mb=round(vm_kb('VmRSS') / 1024, 1),
      load_after=load(),
      **facts,
    )
    self.record['phases'][name] = entry
    print(f'  {name}: {json.dumps(entry)}', flush=True)
    self.save()

  def save(self):
    from gr import atomic_io  # pylint: disable=g-import-not-at-top

    self.record['peak_rss_mb'] = max(
      (p['peak_rss_mb'] for p in self.record['phases'].values()), default=0
    )
    atomic_io.write_json(self.output, self.record, indent=1)


def generate(data_dir: str, docs: int, eval_queries: int) -> dict:
  """The synthetic folder (reused when its synthetic.json matches)."""
  from gr.data import synthetic  # pylint: disable=g-import-not-at-top

  spec = synthetic.SyntheticSpec(
    docs, queries=(min(10_000, docs // 10), 100, eval_queries)
  )
  summary_path = os.path.join(data_dir, 'synthetic.json')
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    summary['queries'] = tuple(summary['queries'])
    if summary == {
      **dataclasses.asdict(spec),
      'planted': sum(spec.queries),
    }:
      return {'reused': True, **summary}
  return {'reused': False, **synthetic.write_synthetic_beir(data_dir, spec)}


def tiny_model():
  """gin/models/t5_tiny.gin's MODEL, dropout off."""
  import gin  # pylint: disable=g-import-not-at-top
  import gr.experiments.configurables  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  gin.parse_config_files_and_bindings(
    [os.path.join(REPO, 'gin/models/t5_tiny.gin')], ['DROPOUT_RATE = 0.0']
  )
  return gin.query_parameter('%MODEL').scoped_configurable_fn()


def build_index(phases: Phases, dataset, data_dir: str, index_dir: str):
  """Phases docids and vocab_index; returns the loaded index."""
  from gr.index import artifact as index_lib  # pylint: disable=g-import-not-at-top
  from gr.model import family as family_lib  # pylint: disable=g-import-not-at-top
  from gr.train import indexing  # pylint: disable=g-import-not-at-top

  params = {
    'levels': _LEVELS.value,
    'codebook_size': _CODES.value,
    'kmeans_iters': _KMEANS_ITERS.value,
  }
  with phases.phase('docids', scheme='rq', scheme_params=params) as entry:
    table = indexing.assign_docids(
      dataset.corpus, 'rq', params, None, _INPUT_LENGTH, None,
      os.path.join(data_dir, 'embeddings.npz'),
    )  # fmt: skip
    lengths = [len(d[0].split()) for d in table.docids_of.values()]
    entry['docid_tokens_max'] = max(lengths)
    entry['docid_tokens_mean'] = round(float(np.mean(lengths)), 3)
    entry['reserved_tokens'] = len(table.reserved_tokens)
  with phases.phase('vocab_index') as entry:
    model = tiny_model()
    index = family_lib.family_of(model).build_index(
      model, table, dataset, os.path.join(index_dir, 'work'),
      vocab_size=_VOCAB.value, seed=0,
    )  # fmt: skip
    del table
    index_lib.save_index(index, index_dir)
    index = index_lib.load_index(index_dir)
    entry['vocab_size'] = index.vocab.vocab_size
  return model, index


def train(phases: Phases, model, index, mixture: str, workdir: str, data_dir):
  """Phase train: the tiny model's params after --steps steps."""
  from gr.index import artifact as index_lib  # pylint: disable=g-import-not-at-top
  from gr.model import model_config  # pylint: disable=g-import-not-at-top
  from gr.model import models  # pylint: disable=g-import-not-at-top
  from gr.train import loop  # pylint: disable=g-import-not-at-top
  from gr.train import optimizer  # pylint: disable=g-import-not-at-top

  model = models.fit_vocab(model, index.vocab.vocab_size)
  model_config.save_model_config(
    workdir, model.config, input_length=_INPUT_LENGTH,
    corpus_path=os.path.join(data_dir, 'corpus.jsonl'),
  )  # fmt: skip
  opt = optimizer.OptimizerConfig(
    learning_rate=1e-3, schedule='cosine', warmup_steps=20
  )
  with phases.phase('train', steps=_STEPS.value, batch_size=_BATCH.value):
    state = loop.train(
      model=model, mixture_or_task_name=mixture, train_steps=_STEPS.value,
      batch_size=_BATCH.value, model_dir=os.path.join(workdir, 'model'),
      input_length=_INPUT_LENGTH, target_length=index.max_docid_length(),
      optimizer=opt, checkpoint_every=_STEPS.value, keep_checkpoints=1,
      log_every=50, artifact_dir=index_lib.current_version_dir(
        os.path.join(workdir, 'index')),
    )  # fmt: skip
  return model, state.params


def evaluate(phases: Phases, model, params, index, dataset) -> dict:
  """Phases evaluate and bm25 on the first --eval_queries test queries."""
  from gr.search import bm25  # pylint: disable=g-import-not-at-top
  from gr.search import evaluation  # pylint: disable=g-import-not-at-top
  from gr.search import metrics  # pylint: disable=g-import-not-at-top
  from gr.search import retrieval  # pylint: disable=g-import-not-at-top

  qrels = dict(list(dataset.qrels['test'].items())[: _EVAL.value])
  queries = {q: dataset.queries[q] for q in qrels}
  with phases.phase('evaluate', queries=len(queries)) as entry:
    searcher = retrieval.Searcher(
      model, params, index,
      retrieval.retrieval_config(
        retrieval.SearchConfig(beam_size=10, top_k=10),
        index.max_docid_length(),
      ),
      input_length=_INPUT_LENGTH,
    )  # fmt: skip
    run, seconds = evaluation.timed_run(searcher, queries)
    entry['queries_per_sec'] = round(len(queries) / seconds, 2)
    entry['gr'] = metrics.evaluate_run(qrels, run, **evaluation.METRIC_KWARGS)
    del searcher
  if _BM25.value:
    with phases.phase('bm25', queries=len(queries)) as entry:
      bm25_run = bm25.bm25_run(dataset.corpus, queries, k=100)
      entry['bm25'] = metrics.evaluate_run(
        qrels, bm25_run, **evaluation.METRIC_KWARGS
      )
  return queries


def hits(found: list, wanted: list[str]) -> dict:
  """Hits@1 and Hits@10 of served results (lists of Hit) against ids."""
  ranks = [[h.doc_id for h in hit_list] for hit_list in found]
  return {
    'hits_at_1': float(np.mean([r[:1] == [w] for r, w in zip(ranks, wanted)])),
    'hits_at_10': float(np.mean([w in r[:10] for r, w in zip(ranks, wanted)])),
  }


def serve(phases: Phases, workdir: str, dataset, queries: dict, dim: int):
  """Phases serve_load, serve_search and online_adds."""
  from gr import docids as docids_lib  # pylint: disable=g-import-not-at-top
  from gr.data import synthetic  # pylint: disable=g-import-not-at-top
  from gr.serve import retriever as serving  # pylint: disable=g-import-not-at-top

  with phases.phase('serve_load') as entry:
    served = serving.Retriever.from_checkpoint(
      os.path.join(workdir, 'model'),
      index_dir=os.path.join(workdir, 'served_index'),
      config=serving.ServingConfig(max_k=10, buckets=(1, 4, 16)),
      lexical_weight=0.0,
    )
    served.warm_up()
    entry['num_docs'] = served.num_docs
  qids = list(queries)
  wanted = [next(iter(dataset.qrels['test'][q])) for q in qids]
  with phases.phase('serve_search', queries=len(qids)) as entry:
    start = time.perf_counter()
    found = served.retrieve([queries[q] for q in qids], 10)
    entry['queries_per_sec'] = round(
      len(qids) / (time.perf_counter() - start), 2
    )
    entry.update(hits(found, wanted))
  # The run's docids came from the user's vectors: new documents must be
  # placed by the same embedder, not the service's default (MiniLM), which
  # the served index offers no argument for yet (see WORKSPACE).
  table = served.index.table
  served._namer._scheme = docids_lib.scheme_for_table(  # pylint: disable=protected-access
    table, embedder=synthetic.HashingEmbedder(dim, 0)
  )
  docs, new_queries = synthetic.fresh_documents(_ADDS.value)
  with phases.phase('online_adds', adds=len(docs)) as entry:
    times = []
    for doc in docs:
      start = time.perf_counter()
      served.add_documents([doc])
      times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    entry['add_ms'] = {
      'first': round(float(ms[0]), 1),
      'p50': round(float(np.percentile(ms, 50)), 1),
      'p99': round(float(np.percentile(ms, 99)), 1),
      'mean': round(float(ms.mean()), 1),
    }
    entry['num_docs_after'] = served.num_docs
    found = served.retrieve([new_queries[d.doc_id] for d in docs], 10)
    entry['added_found'] = hits(found, [d.doc_id for d in docs])
  served.close()


def run_phases(phases: Phases, workdir: str, data_dir: str) -> None:
  """Every phase in order (module docstring)."""
  from gr.data import beir  # pylint: disable=g-import-not-at-top
  from gr.experiments import run  # pylint: disable=g-import-not-at-top

  with phases.phase('generate') as entry:
    entry['spec'] = generate(data_dir, _DOCS.value, _EVAL.value)
  with phases.phase('load') as entry:
    dataset = beir.BeirDataset.load(data_dir)
    entry['documents'] = len(dataset.corpus)
  index_dir = os.path.join(workdir, 'index')
  model, index = build_index(phases, dataset, data_dir, index_dir)
  with phases.phase('tasks') as entry:
    register, _ = run.docid_tasks(
      run.corpus_name(data_dir), dataset, {},
      {'indexing': 1.0, 'retrieval': 1.0}, _INPUT_LENGTH, workdir=workdir,
    )  # fmt: skip
    mixture = register(index)
    entry['mixture'] = mixture
  model, params = train(phases, model, index, mixture, workdir, data_dir)
  queries = evaluate(phases, model, params, index, dataset)
  del params, index
  serve(phases, workdir, dataset, queries, 64)


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  data_dir = _DATA_DIR.value or os.path.join(workdir, 'data')
  output = _OUTPUT.value or os.path.join(
    REPO, 'docs/results/one_million', f'scale_{_DOCS.value}.json'
  )
  commit = subprocess.run(
    ['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'],
    capture_output=True, text=True, check=False,
  ).stdout.strip()  # fmt: skip
  phases = Phases(
    output,
    {
      'docs': _DOCS.value,
      'command': ' '.join(sys.argv),
      'commit': commit,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'machine': f'{platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPUs',
      'load_before': load(),
    },
  )
  start = time.perf_counter()
  run_phases(phases, workdir, data_dir)
  phases.record['total_wall_s'] = round(time.perf_counter() - start, 1)
  phases.record['load_after'] = load()
  phases.save()


if __name__ == '__main__':
  app.run(main)
