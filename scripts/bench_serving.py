r"""Load benchmark of the docid decoding service, on loopback only.

  python scripts/bench_serving.py --checkpoint=runs/demo/model \
    --out=/tmp/bench_serving.json [--clients=1,8,32] [--requests=400]

In one run: (1) in-process `Retriever.retrieve` throughput on full batches
of each candidate batch size (--candidates); the fastest one is the ceiling
and, unless --buckets is given, sets the service's buckets
(gr/serve/microbatch.py `choose_buckets`: every candidate up to the fastest);
(2) the HTTP service (uvicorn on 127.0.0.1, in a thread of this process)
with those buckets under 1, 8 and 32 concurrent clients, each sending
single `POST /search` requests back to back over its own keep-alive
connection, from a separate client process (a bare asyncio HTTP/1.1
client, so that the load generator costs little of the shared CPUs). Every
level is bounded by --requests and --max_seconds. The served index is a
temporary copy seeded from the checkpoint's artifact: nothing is changed.
Writes throughput and p50/p99 latency per level as JSON, and prints the
service's fraction of in-process throughput at each level, and the model's
FLOPs per query (gr/search/flops.py: the padded query the service encodes,
the decoder steps of the longest docid + EOS, full output layer as served
and the sparse one over the docid tokens + EOS) beside this CPU's measured
fp32 matmul peak (1024^3, best of 5) and the fraction of it achieved.
"""

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from gr import bench_env
from gr.search import flops
from gr.serve import microbatch
from gr import entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'orbax model_dir.')
_OUT = flags.DEFINE_string('out', '/tmp/bench_serving.json', 'JSON output.')
_CLIENTS = flags.DEFINE_list('clients', ['1', '8', '32'], 'Concurrency levels.')
_REQUESTS = flags.DEFINE_integer('requests', 400, 'Requests per level (max).')
_SPARSE_OUTPUT = flags.DEFINE_boolean(
  'sparse_output',
  None,
  'Serve with the sparse output layer (on/off); unset: as the run recorded '
  "it (model_config.json's scoring).",
)
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 60, 'Time per level (max).')
_K = flags.DEFINE_integer('k', 10, 'Results per query.')
_CANDIDATES = flags.DEFINE_list(
  'candidates', ['1', '2', '4', '8', '16', '32'], 'Batch sizes measured.'
)
_BUCKETS = flags.DEFINE_list(
  'buckets', None, 'Service buckets (default: chosen from the candidates).'
)
_PROFILE = flags.DEFINE_integer(
  'profile_batch',
  0,
  'Instead of the load bench: time the parts of one in-process search of a '
  'batch this size (retrieve, the jitted search, the encoder; at the '
  'served input_length and at 16 tokens; without the plan, full and sparse '
  'output) and write them to --out.',
)
_CLIENT_URL = flags.DEFINE_string('client_url', None, 'Internal: client mode.')
_CLIENT_N = flags.DEFINE_integer('client_n', 1, 'Internal: client tasks.')


def queries(n: int) -> list[str]:
  words = 'market election storm court vaccine budget trade energy film match'
  rng = np.random.default_rng(0)
  return [' '.join(rng.choice(words.split(), 3)) for _ in range(n)]


async def _post(reader, writer, path: str, body: bytes) -> int:
  """One keep-alive HTTP/1.1 POST; returns the status (body read, dropped)."""
  writer.write(
    f'POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: '
    f'application/json\r\nContent-Length: {len(body)}\r\n\r\n'.encode()
    + body
  )
  await writer.drain()
  head = await reader.readuntil(b'\r\n\r\n')
  status = int(head.split(b' ', 2)[1])
  length = next(
    int(line.split(b':', 1)[1])
    for line in head.split(b'\r\n')
    if line.lower().startswith(b'content-length:')
  )
  await reader.readexactly(length)
  return status


async def client_load(url: str, clients: int) -> dict:
  """`clients` connections, each sending one request at a time (bounded)."""
  latencies, errors, deadline = [], 0, time.perf_counter() + _MAX_SECONDS.value
  texts, issued = queries(_REQUESTS.value), iter(range(_REQUESTS.value))
  host, port = url.removeprefix('http://').split(':')
  bodies = [json.dumps({'query': t, 'k': _K.value}).encode() for t in texts]

  async def one_client():
    nonlocal errors
    reader, writer = await asyncio.open_connection(host, int(port))
    for i in issued:
      if time.perf_counter() > deadline:
        break
      start = time.perf_counter()
      status = await _post(reader, writer, '/search', bodies[i])
      latencies.append(time.perf_counter() - start)
      errors += status != 200
    writer.close()

  start = time.perf_counter()
  await asyncio.gather(*(one_client() for _ in range(clients)))
  elapsed = time.perf_counter() - start
  ms = np.array(latencies) * 1000
  return {
    'clients': clients,
    'requests': len(latencies),
    'errors': errors,
    'seconds': elapsed,
    'queries_per_s': len(latencies) / elapsed,
    'p50_ms': float(np.percentile(ms, 50)),
    'p99_ms': float(np.percentile(ms, 99)),
  }


def in_process_throughput(retriever) -> dict[int, float]:
  """Queries/s of `retrieve` on full batches of each bucket size."""
  result = {}
  for batch in retriever.config.buckets:
    texts = queries(batch)
    retriever.retrieve(texts, _K.value)  # warm
    count, start = 0, time.perf_counter()
    while (
      count < _REQUESTS.value
      and time.perf_counter() - start < _MAX_SECONDS.value
    ):
      retriever.retrieve(texts, _K.value)
      count += batch
    result[batch] = count / (time.perf_counter() - start)
  return result


def serve_in_thread(retriever):
  import uvicorn  # pylint: disable=g-import-not-at-top
  from gr.serve import app as web_app  # pylint: disable=g-import-not-at-top

  server = uvicorn.Server(
    uvicorn.Config(
      web_app.create_app(retriever),
      host='127.0.0.1',
      port=0,
      log_level='warning',
    )
  )
  thread = threading.Thread(target=server.run)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  port = server.servers[0].sockets[0].getsockname()[1]
  return server, thread, f'http://127.0.0.1:{port}'


def run_clients(url: str, clients: int) -> dict:
  """One client process per level, so clients do not share our GIL."""
  output = subprocess.run(
    [
      sys.executable,
      __file__,
      f'--client_url={url}',
      f'--client_n={clients}',
      f'--requests={_REQUESTS.value}',
      f'--max_seconds={_MAX_SECONDS.value}',
      f'--k={_K.value}',
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  return json.loads(output.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CLIENT_URL.value:
    print(
      json.dumps(asyncio.run(client_load(_CLIENT_URL.value, _CLIENT_N.value)))
    )
    return
  if not _CHECKPOINT.value:
    raise app.UsageError('--checkpoint is required (a run\'s model dir)')
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  from gr.serve import retriever as serving  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  if _PROFILE.value:
    profile(serving, _PROFILE.value)
    return
  load_before = bench_env.machine_load('before')
  peak = bench_env.matmul_peak_gflops(size=1024)
  print(f'fp32 matmul peak (1024^3, best of 5): {peak:.1f} GFLOP/s')
  candidates = tuple(int(b) for b in _CANDIDATES.value)
  probe = retriever_for(serving, candidates)
  measured = in_process_throughput(probe)
  counts = query_flops(probe)
  served_output = (
    'sparse_output' if probe.config.sparse_output else 'full_output'
  )
  probe.close()
  buckets = (
    tuple(int(b) for b in _BUCKETS.value)
    if _BUCKETS.value
    else microbatch.choose_buckets(measured)
  )
  retriever = retriever_for(serving, buckets)
  result = {
    'checkpoint': os.path.abspath(_CHECKPOINT.value),
    'documents': retriever.num_docs,
    'k': _K.value,
    'device': str(jax.devices()[0]),
    'cpus': os.cpu_count(),
    'machine': platform.platform(),
    'commit': subprocess.run(
      ['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True, text=True
    ).stdout.strip(),
    'in_process': {f'batch_{b}': qps for b, qps in measured.items()},
    'buckets': list(buckets),
    'max_wait_ms': retriever.config.max_wait_ms,
  }
  server, thread, url = serve_in_thread(retriever)
  result['service'] = [run_clients(url, int(n)) for n in _CLIENTS.value]
  server.should_exit = True
  thread.join()
  retriever.close()
  result['load'] = [load_before, bench_env.machine_load('after')]
  best = max(measured.values())
  for level in result['service']:
    level['fraction_of_in_process'] = level['queries_per_s'] / best
  result['flops'] = {
    name: {**count, **flops.roofline(count['total'], peak, best)}
    for name, count in counts.items()
  }
  result['served_output'] = served_output
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  print(f'in-process best {best:.1f} q/s; buckets {buckets}')
  for name, r in result['flops'].items():
    served = ' (served)' if name == served_output else ''
    print(
      f"{name}{served}, {r['input_tokens']} tokens: {r['gflop_per_query']:.3f} GFLOP/query (encoder "
      f"{r['encoder'] / 1e9:.3f}, output layer {r['output_layer'] / 1e9:.3f});"
      f" at {best:.1f} q/s {r['achieved_gflops']:.1f} GFLOP/s = "
      f"{r['fraction_of_peak']:.2f} of the {peak:.1f} peak (ceiling "
      f"{r['ceiling_qps']:.0f} q/s)"
    )
  for level in result['service']:
    print(
      f"{level['clients']:>3} clients: {level['queries_per_s']:.1f} q/s = "
      f"{level['fraction_of_in_process']:.2f} of in-process, p50 "
      f"{level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms"
    )


def served_length(retriever, texts: list[str]) -> int:
  """The length the service pads `texts` to: the input bucket of their
  longest (gr/search/retrieval.py `input_bucket`, as Retriever cuts each
  batch), at most the run's input_length."""
  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from gr.search import retrieval  # pylint: disable=g-import-not-at-top

  length = retriever.input_length
  vocab = retriever._live.index.vocab  # pylint: disable=protected-access
  tokens = vocab_lib.encode_texts(vocab, texts, length)
  return retrieval.input_bucket(tokens, length)


def query_flops(retriever) -> dict[str, dict]:
  """FLOPs per query of the served model, the query padded to the input
  bucket of the bench's queries, with the full output layer and with the
  sparse one over the docid tokens + EOS (the run's scoring says which is
  served); steps = the longest docid + EOS."""
  live = retriever._live  # pylint: disable=protected-access
  index, search = live.index, retriever.config
  docids = [
    index.vocab.encode_docid(d)
    for ids in index.table.docids_of.values()
    for d in ids
  ]
  common = dict(
    input_tokens=served_length(retriever, queries(_REQUESTS.value)),
    beam_size=search.beam_size or search.max_k,
    steps=max(len(d) for d in docids) + 1,
    cache_len=retriever.max_decode_len,
  )
  config = retriever.model.config
  rows = len({t for d in docids for t in d}) + 1
  first_step = retriever.config.search_config(
    retriever.max_decode_len
  ).first_step
  fixed_length = len({len(d) for d in docids}) == 1
  return {
    'full_output': {
      **flops.query_flops(config, **common, first_step=first_step).as_dict(),
      **common,
      'output_rows': config.decoder.vocab_size,
      'first_step': first_step,
    },
    'sparse_output': {
      **flops.query_flops(
        config,
        **common,
        output_rows=rows,
        first_step=first_step,
        last_step_free=fixed_length,
      ).as_dict(),
      **common,
      'output_rows': rows,
      'first_step': first_step,
      'last_step_free': fixed_length,
    },
  }


def _best_ms(fn, reps: int = 7) -> list[float]:
  """[best, median] ms of `reps` runs of fn after one warm-up."""
  import jax  # pylint: disable=g-import-not-at-top

  times = bench_env.run_seconds(lambda: jax.block_until_ready(fn()), reps)
  return [min(times) * 1e3, float(np.median(times)) * 1e3]


def profile(serving, batch: int) -> None:
  """Where one served batch's time goes (see --profile_batch)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from gr.search import retrieval  # pylint: disable=g-import-not-at-top

  result = {'batch': batch, 'load': [bench_env.machine_load('before')]}
  retriever = retriever_for(serving, (batch,))
  live = retriever._live  # pylint: disable=protected-access
  texts = queries(batch)
  tokens = vocab_lib.encode_texts(
    live.index.vocab, texts, retriever.input_length
  )
  short = tokens[:, :16]
  encode = jax.jit(retriever.model.encode)
  times = {
    'retrieve': _best_ms(lambda: retriever.retrieve(texts, _K.value)),
    f'search_{tokens.shape[1]}': _best_ms(lambda: live.found(tokens)),
    f'encoder_{tokens.shape[1]}': _best_ms(lambda: encode(live.params, tokens)),
    'search_16': _best_ms(lambda: live.found(short)),
    'encoder_16': _best_ms(lambda: encode(live.params, short)),
  }
  if live.plan is not None:  # the plan's parts alone, at 16 tokens
    states = encode(live.params, short)
    scores = jax.jit(lambda plan, t, s: plan.document_scores(t, s))
    potential = jax.jit(lambda plan, a, t, s: plan.potential(a, t, s))
    times['plan_document_scores_16'] = _best_ms(
      lambda: scores(live.plan, short, states)
    )
    times['plan_potential_16'] = _best_ms(
      lambda: potential(live.plan, live.trie_arrays, short, states)
    )
  full, cut = live.found(tokens), live.found(short)
  result['same_documents_16'] = bool(
    np.array_equal(np.asarray(full.documents), np.asarray(cut.documents))
  )
  search = retrieval.fit_to_index(
    retriever.config.search_config(retriever.max_decode_len), live.index
  )
  if live.plan is not None:  # step 0 once per beam, against once per query
    for first_step in (False, True):
      fn = retrieval.make_search_fn(
        retriever.model,
        dataclasses.replace(search, first_step=first_step),
        with_plan=True,
      )
      times[f'plan_search_first_step_{first_step}_16'] = _best_ms(
        lambda fn=fn: fn(live.params, short, live.trie_arrays, live.plan)
      )
  for sparse in (False, True):
    fn = retrieval.make_search_fn(
      retriever.model, dataclasses.replace(search, sparse_output=sparse)
    )
    times[f'no_plan_sparse_{sparse}_16'] = _best_ms(
      lambda fn=fn: fn(live.params, short, live.trie_arrays)
    )
    result[f'no_plan_sparse_{sparse}_documents'] = np.asarray(
      fn(live.params, short, live.trie_arrays).documents
    ).tolist()
  retriever.close()
  result['ms_best_median'] = times
  result['load'].append(bench_env.machine_load('after'))
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=1)
  for name, (low, median) in times.items():
    print(f'{name:>28}: {low:8.1f} ms best, {median:8.1f} median')
  print(f"same documents at 16 tokens: {result['same_documents_16']}")


def retriever_for(serving, buckets):
  """A warmed-up Retriever of the checkpoint with `buckets`, on a temporary
  copy of its index (the previous one is closed by the caller)."""
  retriever = serving.Retriever.from_checkpoint(
    _CHECKPOINT.value,
    index_dir=tempfile.mkdtemp(prefix='bench_index'),
    config=serving.ServingConfig(
      max_k=max(10, _K.value),
      buckets=buckets,
      sparse_output=_SPARSE_OUTPUT.value,
    ),
  )
  retriever.warm_up()
  return retriever


if __name__ == '__main__':
  entry.run(main)
