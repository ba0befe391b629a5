r"""Peak RSS of building the indexing task for N synthetic documents.

  python scripts/bench_task_memory.py --num_docs=100000 \
    --output=/tmp/bench_task_memory.json   [--quick: 10,000 documents]
    [--paths=in_memory,file,streamed] [--batches=200]

Three paths, each in a fresh process over the same corpus, naive docid table
and sentencepiece vocabulary (set up once here):

  in_memory  tasks.indexing_examples -> tasks.register_task (the Example
             list, the JSON fingerprint, from_tensor_slices, a shuffle
             buffer of the whole task)
  file       tasks.iter_indexing_examples -> example_files.write_examples
             (streamed) -> tasks.register_file_task (a bounded shuffle
             buffer of records)
  streamed   what the jobs do above streaming.Streaming.above_docs:
             tasks.register_gr_tasks writes round-robin shards (fingerprinted,
             atomically) and streams them in a bounded shuffle buffer

Each child reports its peak RSS after making the corpus (`rss_setup_mb`)
and after building the task and reading `--batches` train batches
(`rss_peak_mb`); `task_mb` is the difference. The same for the resident set
at those two moments (`rss_now_setup_mb`, `rss_now_end_mb`, `task_now_mb`):
a path whose working set stays under the setup's peak shows 0 in
`task_mb` but its own size in `task_now_mb`. Prints the machine load
before and after (gr/bench_env.py) and writes JSON.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from gr import entry

_NUM_DOCS = flags.DEFINE_integer('num_docs', 100_000, 'Synthetic documents.')
_QUICK = flags.DEFINE_bool('quick', False, '10,000 documents.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the results JSON here.')
PATHS = ('in_memory', 'file', 'streamed')
_PATHS = flags.DEFINE_list('paths', list(PATHS), 'Which paths to measure.')
_BATCHES = flags.DEFINE_integer('batches', 1, 'Train batches each reads.')
_CHILD = flags.DEFINE_enum(
  'child', None, list(PATHS), 'Internal: run one path and exit.'
)
_WORK_DIR = flags.DEFINE_string('work_dir', None, 'Internal: shared setup.')

WORDS_PER_DOC = 60
VOCAB_SIZE = 1000
BATCH_SIZE = 32


def synthetic_corpus(num_docs: int) -> dict:
  """{doc_id: Document}: WORDS_PER_DOC seeded words from a 5,000-word
  lexicon each (deterministic)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gr.data import beir  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  lexicon = [f'w{i}' for i in range(5000)]
  ids = rng.integers(0, len(lexicon), size=(num_docs, WORDS_PER_DOC))
  return {
    f'd{i}': beir.Document(f'd{i}', '', ' '.join(lexicon[j] for j in ids[i]))
    for i in range(num_docs)
  }


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
  """The process's resident set now (VmRSS), not its peak."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def _setup(work_dir: str, num_docs: int) -> None:
  """The sentencepiece model (trained on the first 2,000 bodies)."""
  from gr.index import sentencepiece_training as sp_training  # pylint: disable=g-import-not-at-top

  corpus = synthetic_corpus(min(num_docs, 2000))
  sp_training.train_sentencepiece(
    [doc.text for doc in corpus.values()],
    os.path.join(work_dir, 'spm'),
    vocab_size=VOCAB_SIZE,
  )


def run_child(path: str, work_dir: str, num_docs: int, batches: int) -> dict:
  """Builds one path's task and reads `batches` batches; returns its RSS
  record."""
  from gr.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from gr.docids import naive  # pylint: disable=g-import-not-at-top

  corpus = synthetic_corpus(num_docs)
  table = naive.NaiveScheme().assign(corpus)
  vocab = vocab_lib.Vocabulary(
    os.path.join(work_dir, 'spm.model'), table.reserved_tokens
  )
  setup, setup_now = _peak_rss_mb(), _rss_now_mb()
  start = time.time()
  name = register(path, corpus, table, vocab, work_dir)
  built = time.time()
  data = data_lib.task_batches(
    name,
    split='train',
    input_length=64,
    target_length=table_length(table, vocab),
    batch_size=BATCH_SIZE,
    seed=0,
  )
  for _ in range(batches):
    next(data)
  peak, now = _peak_rss_mb(), _rss_now_mb()
  return {
    'path': path,
    'num_docs': num_docs,
    'batches': batches,
    'build_seconds': round(built - start, 2),
    'rss_setup_mb': round(setup, 1),
    'rss_peak_mb': round(peak, 1),
    'task_mb': round(peak - setup, 1),
    'rss_now_setup_mb': round(setup_now, 1),
    'rss_now_end_mb': round(now, 1),
    'task_now_mb': round(now - setup_now, 1),
    'seconds': round(time.time() - start, 2),
  }


def register(path: str, corpus, table, vocab, work_dir: str) -> str:
  """The indexing task of `path` (module docstring), registered."""
  from gr.data import beir  # pylint: disable=g-import-not-at-top
  from gr.train import example_files  # pylint: disable=g-import-not-at-top
  from gr.train import streaming  # pylint: disable=g-import-not-at-top
  from gr.train import tasks  # pylint: disable=g-import-not-at-top

  if path == 'in_memory':
    examples = tasks.indexing_examples(corpus, table, vocab)
    return tasks.register_task(
      'bench.in_memory.v1', {tasks.TRAIN: examples}, vocab, docid_targets=True
    )
  if path == 'file':
    examples_path = os.path.join(work_dir, 'indexing.tfrecord')
    example_files.write_examples(
      examples_path,
      tasks.iter_indexing_examples(corpus, table, vocab),
      text_targets=False,
    )
    return tasks.register_file_task(
      'bench.file.v1', examples_path, vocab, docid_targets=True
    )
  names = tasks.register_gr_tasks(
    name='bench',
    dataset=beir.BeirDataset(corpus=corpus, queries={}, qrels={}),
    table=table,
    vocab=vocab,
    streaming=streaming.Streaming(
      above_docs=0, directory=os.path.join(work_dir, 'examples')
    ),
  )
  return names[tasks.INDEXING]


def table_length(table, vocab) -> int:
  """Longest docid in tokens, EOS included."""
  return 1 + max(
    len(vocab.encode_docid(d)) for ids in table.docids_of.values() for d in ids
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  num_docs = 10_000 if _QUICK.value else _NUM_DOCS.value
  if _CHILD.value:
    record = run_child(_CHILD.value, _WORK_DIR.value, num_docs, _BATCHES.value)
    print(json.dumps(record))
    return
  from gr import bench_env  # pylint: disable=g-import-not-at-top

  load_before = bench_env.machine_load('before')
  results = []
  with tempfile.TemporaryDirectory() as work_dir:
    _setup(work_dir, num_docs)
    for path in _PATHS.value:
      output = subprocess.run(
        [
          sys.executable,
          os.path.abspath(__file__),
          f'--child={path}',
          f'--work_dir={work_dir}',
          f'--num_docs={num_docs}',
          f'--batches={_BATCHES.value}',
        ],
        check=True,
        capture_output=True,
        text=True,
      ).stdout
      results.append(json.loads(output.strip().splitlines()[-1]))
      print(json.dumps(results[-1]))
  record = {
    'num_docs': num_docs,
    'batches': _BATCHES.value,
    'paths': results,
    'load': [load_before, bench_env.machine_load('after')],
  }
  if _OUTPUT.value:
    from gr import atomic_io  # pylint: disable=g-import-not-at-top

    atomic_io.write_json(_OUTPUT.value, record, indent=1)
    print(f'-> {_OUTPUT.value}')


if __name__ == '__main__':
  entry.run(main)
