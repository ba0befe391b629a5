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
document at 1M docids. These time the trie and table edit (and the logs):
the model is a tiny T5, whose adds embed nothing.

End to end (issue 22 item 3), with --checkpoint=<run>/model: the run is
served with its lexical plan when it has a lexical_weight.json
(--lexical_weight overrides; 0 = the model alone), --searches single-query
searches are timed idle before the adds and again after them, and the run is
served in process from a fresh index dir (seeded from its artifact), and
timed as a user's add is: `add_documents` of one document (--e2e_adds
times), then of batches of 64 (--batch_adds times), embedding included
(the run's encoder, for the new docid tokens' rows); with --copied_adds=N,
N more single adds interleaved with those write their rows into a copy of
the embedding table (the path before in-place rows: `add_rows_copied`).
Bodies are the run's
own corpus bodies under new ids (the corpus model_config.json names), else
synthetic 120-word texts. Each single add is also split into its steps
(`add_stages`: naming, term sets, encoder, logs, device publish). Then
--clients threads (default 16) each run --client_ops operations at once:
3 in 4 a search, else an add of one document or a delete of one it added
(`mixed_clients`: search, add and delete latencies under the mix), after
the same clients searching only (`search_only_clients`). With
--rss_adds=N: the process RSS after 10 single adds, then after N adds and N
deletes (issue 22 item 4), then over N add-and-delete cycles at a constant
size (`rss_cycle`). Targets: one add <= 50 ms, a batch of 64 <= 500
ms, search p99 under the 16 clients <= 2x idle p99, RSS within 100 MB.
"""

import itertools
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
_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', None, 'A run to time end-to-end adds on (skips --sizes).'
)
_E2E_ADDS = flags.DEFINE_integer('e2e_adds', 100, 'Single adds timed.')
_COPIED_ADDS = flags.DEFINE_integer(
  'copied_adds',
  0,
  'Single adds timed with the rows written into a copy of the embedding '
  '(the path before in-place rows), interleaved with the --e2e_adds ones.',
)
_BATCH_ADDS = flags.DEFINE_integer('batch_adds', 5, 'Batches of 64 timed.')
_ENCODE_CHUNKS = flags.DEFINE_list(
  'encode_chunks',
  [],
  'Times the encoder alone over 64 bodies in passes of each of these sizes '
  '(e.g. 64,16,8,4), 3 times each, before the adds.',
)
_RSS_ADDS = flags.DEFINE_integer('rss_adds', 1000, 'Adds+deletes for RSS.')
_CLIENTS = flags.DEFINE_integer(
  'clients', 16, 'Mixed clients (searches, adds, deletes) at once.'
)
_CLIENT_OPS = flags.DEFINE_integer('client_ops', 12, 'Operations per client.')
_SEARCHES = flags.DEFINE_integer(
  'searches', 50, 'Single-query searches timed (idle) on the served run.'
)
_LEXICAL_WEIGHT = flags.DEFINE_float(
  'lexical_weight',
  None,
  "The served plan's weight (0: the model alone, inf: the term sets alone); "
  "unset: the run's lexical_weight.json.",
)


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


def corpus_bodies(checkpoint: str, count: int) -> list[str]:
  """Bodies of the run's corpus (cycled), else synthetic 120-word texts."""
  from gr.data import beir  # pylint: disable=g-import-not-at-top
  from gr.model import model_config  # pylint: disable=g-import-not-at-top

  run = model_config.load_model_config(
    model_config.find_model_config(checkpoint)
  )
  bodies = []
  if run.corpus_path and os.path.exists(run.corpus_path):
    for doc in beir.iter_corpus(run.corpus_path):
      bodies.append(doc.text)
      if len(bodies) == count:
        break
  if not bodies:
    rng = np.random.default_rng(0)
    words = 'market election storm court vaccine budget trade energy film'
    bodies = [' '.join(rng.choice(words.split(), 120)) for _ in range(50)]
  return [bodies[i % len(bodies)] for i in range(count)]


class StageTimes:
  """Where an add's time goes: wall seconds inside each wrapped step of
  the served index (naming, term sets, encoder, logs, device publish),
  summed per add (the steps run under the update lock, one add at a
  time). The encoder's passes are dispatched (`encode`) before the term
  sets are computed and waited for after them (`encode_wait`)."""

  STEPS = {
    'name_docids': ('_namer', 'assign'),
    'term_sets': ('_plan', 'sets_of'),
    'encode': ('_encoder', 'dispatch'),
    'encode_wait': ('_encoder', 'collect'),
    'persist_logs': (None, '_persist'),
    'plan_edit': ('_plan', 'added'),
    'publish_device': (None, '_publish'),
  }

  def __init__(self, retriever):
    self.current = {}
    retriever._document_encoder()  # pylint: disable=protected-access
    for name, (attribute, method) in self.STEPS.items():
      owner = retriever if attribute is None else getattr(retriever, attribute)
      if owner is not None:
        setattr(owner, method, self._timed(name, getattr(owner, method)))

  def _timed(self, name, function):
    def wrapper(*args, **kwargs):
      begin = time.perf_counter()
      try:
        return function(*args, **kwargs)
      finally:
        elapsed = time.perf_counter() - begin
        self.current[name] = self.current.get(name, 0.0) + elapsed

    return wrapper

  def take(self) -> dict:
    out, self.current = self.current, {}
    return out

  @staticmethod
  def summary(per_add: list[dict]) -> dict:
    """step -> {p50_ms, mean_ms} over the adds."""
    steps = sorted({k for add in per_add for k in add})
    return {
      step: {
        'p50_ms': float(np.percentile([a.get(step, 0) for a in per_add], 50))
        * 1000,
        'mean_ms': float(np.mean([a.get(step, 0) for a in per_add])) * 1000,
      }
      for step in steps
    }


def interleaved(in_place: int, copied: int) -> list[bool]:
  """`in_place` Trues and `copied` Falses, spread evenly (so both kinds of
  add see the same machine load)."""
  total = in_place + copied
  order = sorted(
    [(i / max(in_place, 1), True) for i in range(in_place)]
    + [((i + 0.5) / max(copied, 1), False) for i in range(copied)]
  )
  assert len(order) == total
  return [kind for _, kind in order]


def mixed_clients(
  retriever, queries, docs, clients: int, ops: int, search_share=0.75
) -> dict:
  """`clients` threads, each `ops` operations: a search (`search_share`
  of them), else an add of one document, or (every third of those, once
  it has one) a delete of one it added. Latencies of each kind, under the
  mix."""
  import threading  # pylint: disable=g-import-not-at-top

  lock = threading.Lock()
  times = {'search': [], 'add': [], 'delete': []}

  def client(seed: int):
    rng = np.random.default_rng(seed)
    mine = []
    for _ in range(ops):
      kind = 'search' if rng.random() < search_share else 'add'
      if kind == 'add' and mine and rng.random() < 1 / 3:
        kind = 'delete'
      begin = time.perf_counter()
      if kind == 'search':
        retriever.retrieve([queries[rng.integers(len(queries))]], 10)
      elif kind == 'add':
        with lock:
          batch = docs(1)
        retriever.add_documents(batch)
        mine.append(batch[0].doc_id)
      else:
        retriever.delete_document(mine.pop(0))
      with lock:
        times[kind].append(time.perf_counter() - begin)

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  begin = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  result = {kind: milliseconds(t) for kind, t in times.items() if t}
  result.update(clients=clients, ops=clients * ops)
  result['wall_s'] = time.perf_counter() - begin
  return result


def serve_for_bench(checkpoint: str):
  """(retriever, server start seconds) over a fresh index dir."""
  from gr.serve import retriever as serving  # pylint: disable=g-import-not-at-top

  work = tempfile.mkdtemp(prefix='bench_online_e2e_')
  start = time.perf_counter()
  retriever = serving.Retriever.from_checkpoint(
    checkpoint,
    index_dir=os.path.join(work, 'index'),
    config=serving.ServingConfig(max_k=10, buckets=(1, 4, 16)),
    lexical_weight=_LEXICAL_WEIGHT.value,
  )
  retriever.warm_up()
  return retriever, time.perf_counter() - start


def bench_end_to_end(checkpoint: str) -> dict:
  """A user's adds on a served run, embedding included (module docstring)."""
  from gr.data import beir  # pylint: disable=g-import-not-at-top

  retriever, start_s = serve_for_bench(checkpoint)
  queries = [b[:200] for b in corpus_bodies(checkpoint, _SEARCHES.value)]

  def searches():
    out = []
    for query in queries:
      begin = time.perf_counter()
      retriever.retrieve([query], 10)
      out.append(time.perf_counter() - begin)
    return out

  searches()  # first calls of the length buckets
  search_idle = searches()
  encode_chunks = encoder_by_chunk(retriever, checkpoint)
  encode_short = encoder_on_short_bodies(retriever, checkpoint)
  start_rows = retriever.model.config.vocab_size
  mixed_ops = _CLIENTS.value * _CLIENT_OPS.value
  total = (
    1
    + _E2E_ADDS.value
    + _COPIED_ADDS.value
    + 64 * (1 + _BATCH_ADDS.value)
    + mixed_ops
  )
  # Bodies repeat under new ids where the phases need more than there are.
  bodies = itertools.cycle(corpus_bodies(checkpoint, total + _RSS_ADDS.value))
  serial = iter(range(10**9))

  def docs(n):
    return [
      beir.Document(f'e2e{next(serial)}', '', next(bodies)) for _ in range(n)
    ]

  stages = StageTimes(retriever)

  def timed(n):
    """Seconds of one add of n documents, its device work included (an
    add's scatters run asynchronously: a copy of the table would otherwise
    spill into the next add's time)."""
    import jax  # pylint: disable=g-import-not-at-top

    batch = docs(n)
    begin = time.perf_counter()
    retriever.add_documents(batch)
    jax.block_until_ready((retriever.params, retriever._live.trie_arrays))  # pylint: disable=protected-access
    return time.perf_counter() - begin

  first_single, first_batch = timed(1), timed(64)  # compile-free by warm_up
  compiled, rows = retriever.compiled_count(), retriever.model.config.vocab_size
  stages.take()
  singles, single_stages, copied, copied_stages = [], [], [], []
  for in_place in interleaved(_E2E_ADDS.value, _COPIED_ADDS.value):
    retriever.rows_in_place = in_place
    (singles if in_place else copied).append(timed(1))
    (single_stages if in_place else copied_stages).append(stages.take())
  retriever.rows_in_place = True
  batches = [timed(64) for _ in range(_BATCH_ADDS.value)]
  batch_stages = stages.take()
  # Searches are timed once no growth compiles ahead in the background
  # (gr/serve/growth_ahead.py: about 45 s of one core on the demo index,
  # during which searches are slower).
  retriever.wait_for_updates()
  search_after = searches()
  # The same clients searching only: what contention alone costs.
  searching = mixed_clients(
    retriever, queries, docs, _CLIENTS.value, _CLIENT_OPS.value, 1.0
  )
  retriever.wait_for_updates()
  mixed = mixed_clients(
    retriever, queries, docs, _CLIENTS.value, _CLIENT_OPS.value
  )
  result = {
    'checkpoint': checkpoint,
    'lexical_weight': retriever.lexical_weight,
    'plan_capacities': (
      list(retriever._plan.capacities) if retriever._plan else None  # pylint: disable=protected-access
    ),
    'search_idle': milliseconds(search_idle),
    'encode_64_by_chunk': encode_chunks,
    'encode_64_short_bodies': encode_short,
    'search_after_adds': milliseconds(search_after),
    'search_only_clients': searching,
    'mixed_clients': mixed,
    'documents_at_start': retriever.num_docs - total + mixed_ops,
    'embedding_rows_at_start': start_rows,
    'server_start_s': start_s,
    'first_add_ms': first_single * 1000,
    'first_batch_of_64_ms': first_batch * 1000,
    'add': milliseconds(singles),
    'add_stages': StageTimes.summary(single_stages),
    'add_rows_copied': milliseconds(copied) if copied else None,
    'add_rows_copied_stages': (
      StageTimes.summary(copied_stages) if copied else None
    ),
    'batch_of_64': milliseconds(batches),
    'batch_of_64_stages_total_ms': {
      k: v * 1000 for k, v in batch_stages.items()
    },
    # A growth of the rows compiles a new search (its own compiled count).
    'recompiled_during_adds': retriever.compiled_count() > compiled
    or retriever.model.config.vocab_size != rows,
    'embedding_rows_after': retriever.model.config.vocab_size,
  }
  if _RSS_ADDS.value:
    result['rss'] = rss_cycle(retriever, docs)
  retriever.close()
  return result


def encoder_by_chunk(retriever, checkpoint: str) -> dict:
  """chunk -> ms of the encoder alone over 64 bodies in passes of `chunk`
  (--encode_chunks; compiled first, untimed), 3 times each."""
  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from gr.serve import online_rows  # pylint: disable=g-import-not-at-top

  if not _ENCODE_CHUNKS.value:
    return {}
  tokens = vocab_lib.encode_texts(
    retriever.index.vocab, corpus_bodies(checkpoint, 64), retriever.input_length
  )  # [64, Li]
  out = {}
  for chunk in [int(c) for c in _ENCODE_CHUNKS.value]:
    encoder = online_rows.DocumentEncoder(
      retriever.model, retriever.input_length, buckets=(1, chunk)
    )
    encoder.warm_up(retriever.params)
    times = []
    for _ in range(3):
      begin = time.perf_counter()
      encoder.vectors(retriever.params, tokens)
      times.append(time.perf_counter() - begin)
    out[chunk] = [t * 1000 for t in times]
  return out


def shapes_held(retriever) -> dict:
  """What a growth changes: embedding rows, trie node capacity and the
  plan's capacities (P, S, N, W)."""
  import jax  # pylint: disable=g-import-not-at-top

  plan = retriever._plan  # pylint: disable=protected-access
  trie = retriever._live.trie_arrays  # pylint: disable=protected-access
  return {
    'embedding_rows': retriever.model.config.vocab_size,
    'trie_shapes': [list(a.shape) for a in jax.tree.leaves(trie)],
    'trie_level_widths': list(trie.level_widths),
    'plan_capacities': list(plan.capacities) if plan else None,
  }


def encoder_on_short_bodies(retriever, checkpoint: str) -> dict:
  """ms of the encoder alone over 64 bodies of 12 words (each corpus
  body's first 12): the service's passes, cut to the input length bucket
  of their longest body, against passes at the full input length (before
  session 17), 3 times each, compiled first."""
  import jax  # pylint: disable=g-import-not-at-top

  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from gr.serve import online_rows  # pylint: disable=g-import-not-at-top

  bodies = [' '.join(b.split()[:12]) for b in corpus_bodies(checkpoint, 64)]
  tokens = vocab_lib.encode_texts(
    retriever.index.vocab, bodies, retriever.input_length
  )  # [64, Li]
  encoder = online_rows.DocumentEncoder(retriever.model, retriever.input_length)
  encoder.warm_up(retriever.params)
  full = encoder._pooled  # pylint: disable=protected-access
  size = encoder.buckets[-1]

  def full_length_passes():
    for start in range(0, len(tokens), size):
      jax.block_until_ready(
        full(retriever.params['encoder'], tokens[start : start + size])
      )

  out = {'tokens_longest': int((tokens != 0).sum(1).max())}
  for name, run in [
    ('cut_to_length_ms', lambda: encoder.vectors(retriever.params, tokens)),
    ('full_length_ms', full_length_passes),
  ]:
    times = []
    for _ in range(3):
      begin = time.perf_counter()
      run()
      times.append((time.perf_counter() - begin) * 1000)
    out[name] = times
  return out


def rss_cycle(retriever, docs) -> dict:
  """RSS after 10 single adds, then after --rss_adds adds and deletes (the
  index grows by that many documents on the way: growths included); then
  the steady state: --rss_adds cycles of one add and the delete of that
  document (an index of constant size, nothing grows), RSS after 10 cycles
  and after all."""
  added, rss = [], {}
  for n in range(_RSS_ADDS.value):
    batch = docs(1)
    retriever.add_documents(batch)
    added.append(batch[0].doc_id)
    if n + 1 == 10:
      rss['rss_mb_after_10'] = bench_env.resident_mb()
      rss['shapes_after_10'] = shapes_held(retriever)
  for doc_id in added:
    retriever.delete_document(doc_id)
  retriever.wait_for_updates()
  rss['rss_mb_after_adds_and_deletes'] = bench_env.resident_mb()
  rss['shapes_after_adds_and_deletes'] = shapes_held(retriever)
  rss['adds'] = rss['deletes'] = _RSS_ADDS.value
  for n in range(_RSS_ADDS.value):
    batch = docs(1)
    retriever.add_documents(batch)
    retriever.delete_document(batch[0].doc_id)
    if n + 1 == 10:
      rss['steady_rss_mb_after_10_cycles'] = bench_env.resident_mb()
  retriever.wait_for_updates()
  rss['steady_rss_mb_after_all_cycles'] = bench_env.resident_mb()
  rss['steady_shapes_after'] = shapes_held(retriever)
  return rss


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  if _CHECKPOINT.value:
    before = bench_env.machine_load('before')
    run = bench_end_to_end(_CHECKPOINT.value)
    result = {
      'device': str(jax.devices()[0]),
      'machine': platform.platform(),
      'commit': subprocess.run(
        ['git', '-C', REPO, 'rev-parse', 'HEAD'],
        capture_output=True,
        text=True,
      ).stdout.strip(),
      'load': [before, bench_env.machine_load('after')],
      'end_to_end': run,
    }
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return
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
