r"""Benchmarks trie-constrained beam search (issues 5, 13); JSON + a table.

  python scripts/bench_decoding.py --out=/tmp/bench_decoding.json --quick
  python scripts/bench_decoding.py --mode=output_layer --quick \
      --models=tiny,small --sizes=100000
  python scripts/bench_decoding.py --mode=trie --out=/tmp/bench_trie.json
  PYTHONPATH=/tmp/static python scripts/bench_decoding.py --mode=static \
      --out=/tmp/bench_static.json

Measured side by side in one run, same model config, batch and beam size,
warm-up (compilation) excluded, median of --reps runs interleaved so that
load from other processes hits every variant alike:

- overhead: unconstrained beam search vs the sparse trie constraint (and
  the dense [B, K, V] mask path) at each --sizes docid count. All tries get
  the capacities of the largest one, so one compiled function serves every
  size (as when a served index grows) and only the contents differ. Docids
  are synthetic semantic-style paths (--levels digits of --branching each,
  one token per level and digit at the end of the vocabulary, then EOS); the
  unconstrained baseline has EOS suppressed so both decode --levels + 1
  positions.
- peer: HF transformers' PyTorch T5 of the same config and weights (ours
  imported with gr.model.hf_import) generating with `prefix_allowed_tokens_fn` over
  a Python dict trie (GENRE/NCI), same docids, queries, batch and beams,
  torch threads = --threads; queries/s ours / theirs, and how often both
  return the same top-1 docid.
- build: host trie build time (per-docid inserts and the vectorised bulk
  build), device upload time and device bytes per docid.
- trie (also --mode=trie alone): --trie_docids random docids of
  --trie_tokens tokens over --trie_vocab (default 1M x 8 over 2,048):
  device bytes per docid, bulk build seconds (wall and CPU, median of 3),
  and decoding time per query with a free model (logits = a query bias + a
  fixed row per previous token; no network), gr's constrained beam search
  against a fixed-length beam search over one CSR per trie level with each
  level's static width (STATIC-style; `make_csr_search`), and how often
  both return the same top-1 document.

- static (--mode=static alone): STATIC (github.com/youtube/
  static-constraint-decoding, `sparse_transition_jax`), imported when its
  checkout is on PYTHONPATH and never copied here, against gr's
  constrained beam search on STATIC's own benchmark shape: batch 2, beam 70
  (30 tokens per beam at its dense step), --trie_tokens random tokens over
  --trie_vocab (8 over 2,048) at each --static_sizes count, and its free
  model (`RandomModel`: uniform random logits from a PRNG key; gr carries
  the key as a 0-d cache). Same docids (tokens in [2, V); gr's end in EOS),
  same model, same key. gr three ways: 'gr' (step 0 over every beam, the
  model's log-prob of each docid's EOS scored), 'gr_first_step' (step 0
  once per input, as STATIC does) and 'gr_static_score' (also a forced EOS
  scores 0: STATIC's score, and no model call at the EOS step). Wall and
  process-CPU ratios gr / STATIC per round (--static_rounds rounds of
  --reps interleaved runs), device bytes per docid, build seconds (median
  of 3; STATIC's includes the lexsort its builder needs), and how often
  'gr_static_score' returns STATIC's top-1 docid.

Every variant projects the cross-attention keys and values once per query
(as retrieval.Searcher does), except 'uncached'.

--mode=output_layer times, side by side at each --sizes count, the sparse
trie search three ways: 'uncached' (cross-attention K/V projected at every
step, the code before issue 13), 'sparse' (K/V once per query, full
[N, V] output layer) and 'sparse_output' (K/V once, and below the root only
the <= W trie-allowed tokens' output rows: [N, W] logits, scores normalised
over them, SearchConfig.sparse_output). It reports the speed-ups and how
often the top-1 document of 'sparse_output' equals the full normaliser's
(random weights: a sanity check, not a quality measurement).

The load average is printed before and after the runs, with a warning when
it is above 0.5 per core (timings of a shared machine are not comparable).

--device=gpu runs the same on the default JAX/torch GPU with the t5_base
config (nothing here is GPU-specific).
"""

import json
import os
import statistics
import time

from absl import flags

from gr import entry

_OUT = flags.DEFINE_string('out', None, 'Write the results JSON here.')
_DEVICE = flags.DEFINE_enum('device', 'cpu', ['cpu', 'gpu'], 'JAX platform.')
_MODELS = flags.DEFINE_list(
  'models', None, 'Model configs (default tiny,small; base on GPU).'
)
_SIZES = flags.DEFINE_list(
  'sizes', ['1000', '100000', '1000000'], 'Docid counts for the overhead table.'
)
_PEER_SIZE = flags.DEFINE_integer(
  'peer_size', 100000, 'Docids for the HF comparison (0 = skip).'
)
_PEER_MODELS = flags.DEFINE_list(
  'peer_models', ['tiny'], 'Model configs compared with HF.'
)
_BATCH = flags.DEFINE_integer('batch', 8, 'Queries per batch.')
_BEAM = flags.DEFINE_integer('beam', 10, 'Beam size (= top_k).')
_REPS = flags.DEFINE_integer('reps', 7, 'Timed repetitions (median).')
_QUICK = flags.DEFINE_bool(
  'quick',
  False,
  'Fewer reps for models other than tiny (3), no dense-mask variant for them.',
)
_LEVELS = flags.DEFINE_integer('levels', 6, 'Docid tokens before EOS.')
_BRANCHING = flags.DEFINE_integer('branching', 10, 'Digits per level.')
_VOCAB = flags.DEFINE_integer('vocab', 32128, 'Vocabulary size.')
_INPUT_LENGTH = flags.DEFINE_integer('input_length', 32, 'Query tokens.')
_THREADS = flags.DEFINE_integer(
  'threads', os.cpu_count(), 'torch intra-op threads (JAX uses all cores).'
)
_MODE = flags.DEFINE_enum(
  'mode',
  'all',
  ['all', 'output_layer', 'trie', 'static'],
  'all: overhead, peer, build and trie tables; output_layer: the sparse '
  'output layer vs the full one (and vs cross-attention K/V per step); '
  'trie: the trie table alone; static: gr against STATIC on its benchmark '
  'shape.',
)
_STATIC_SIZES = flags.DEFINE_list(
  'static_sizes', ['100000', '1000000'], 'Random docids for --mode=static.'
)
_STATIC_ROUNDS = flags.DEFINE_integer(
  'static_rounds', 3, '--mode=static: rounds of --reps interleaved runs.'
)
_TRIE_DOCIDS = flags.DEFINE_integer(
  'trie_docids', 1000000, 'Random docids for the trie table (0 = skip).'
)
_TRIE_TOKENS = flags.DEFINE_integer(
  'trie_tokens', 8, 'Tokens per random docid (before EOS).'
)
_TRIE_VOCAB = flags.DEFINE_integer(
  'trie_vocab', 2048, 'Vocabulary of the random docids.'
)

EOS = 1


def semantic_docids(count, levels, branching, vocab, seed=0):
  """`count` distinct random paths -> [count, levels + 1] int32, EOS last."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  total = branching**levels
  if count > total:
    raise ValueError(f'--sizes: {count} docids > {branching}**{levels}')
  rng = np.random.default_rng(seed)
  paths = np.sort(rng.choice(total, count, replace=False))
  digits = (paths[:, None] // branching ** np.arange(levels)[::-1]) % branching
  first = vocab - levels * branching  # docid tokens close the vocabulary
  tokens = first + branching * np.arange(levels) + digits
  eos = np.full((count, 1), EOS)
  return np.concatenate([tokens, eos], axis=1).astype(np.int32)


def model_config(name, vocab):
  from gr.model import network  # pylint: disable=g-import-not-at-top

  return getattr(network.T5Config, name)(vocab, dropout_rate=0.0)


def build_tries(sizes, levels, branching, vocab):
  """{size: (docids, DocidTrie)}, all at the largest trie's capacities.

  Bulk-built; also returns the seconds the largest took.
  """
  from gr.index import docid_trie  # pylint: disable=g-import-not-at-top

  docids = {n: semantic_docids(n, levels, branching, vocab) for n in sizes}
  build = lambda n, **capacity: docid_trie.DocidTrie.from_padded(
    docids[n], range(n), vocab_size=vocab, **capacity
  )
  largest = max(sizes)
  start = time.perf_counter()
  tries = {largest: build(largest)}
  seconds = time.perf_counter() - start
  arrays = tries[largest].to_device()  # its capacities, for every size
  for n in sizes:
    if n != largest:
      tries[n] = build(
        n,
        capacity=arrays.child_start.shape[0],
        level_capacity=arrays.level_widths,
      )
  return {n: (docids[n], tries[n]) for n in sizes}, seconds


VARIANTS = ('none', 'sparse', 'dense', 'uncached', 'sparse_output')


def make_search(model, beam, max_len, variant):
  """Jitted (params, queries [B, Li], trie_arrays) -> scores [B, beam].

  variant: 'none' (unconstrained, EOS barred), 'sparse' (trie constraint),
  'dense' (its [B, K, V] mask), 'uncached' ('sparse' with cross-attention
  K/V projected at every step), 'sparse_output' ('sparse' with the sparse
  output layer). Constrained variants return documents [B, beam].
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gr.decode import beam_search as beam_lib  # pylint: disable=g-import-not-at-top
  from gr.decode import constraint as constraint_lib  # pylint: disable=g-import-not-at-top
  from gr.decode import model_decoder  # pylint: disable=g-import-not-at-top

  assert variant in VARIANTS, variant

  @jax.jit
  def search(params, queries, trie_arrays):
    batch = queries.shape[0]
    decoder = model_decoder.model_decoder(
      model,
      params,
      queries,
      rows_per_input=beam,
      cache_rows=batch,  # beam search repeats it per beam
      max_decode_len=max_len,
      cached_cross_attention=variant != 'uncached',
      sparse_output=variant == 'sparse_output',
    )
    step_fn, cache = decoder.tokens_to_logits, decoder.cache

    def tokens_to_logits(decoder_tokens, cache, step):
      logits, cache = step_fn(decoder_tokens, cache, step)
      # no EOS: decode max_len positions like the trie
      return logits.at[:, EOS].set(-jnp.inf), cache

    if variant == 'none':
      return beam_lib.beam_search(
        tokens_to_logits, cache, batch, beam_size=beam, max_decode_len=max_len
      )[1]
    return constraint_lib.constrained_beam_search(
      step_fn,
      cache,
      batch,
      trie_arrays,
      beam_size=beam,
      max_decode_len=max_len,
      dense_mask=variant == 'dense',
      sparse_output=variant == 'sparse_output',
    ).documents

  return search


def median_times(calls, reps):
  """{name: (median wall s, median process CPU s)} of `calls`, interleaved.

  CPU time (all threads) is steadier than wall time on a shared machine.
  """
  import jax  # pylint: disable=g-import-not-at-top

  for call in calls.values():
    jax.block_until_ready(call())  # compile + warm-up
  times = {name: ([], []) for name in calls}
  for _ in range(reps):
    for name, call in calls.items():
      wall, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(call())
      times[name][0].append(time.perf_counter() - wall)
      times[name][1].append(time.process_time() - cpu)
  return {
    name: (statistics.median(w), statistics.median(c))
    for name, (w, c) in times.items()
  }


def random_queries(batch, length, vocab, seed=1):
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  queries = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  queries[:, -1] = EOS
  return queries


def decode_flops(cfg, batch: int, beam: int, li: int, steps: int) -> float:
  """Matmul FLOPs of one constrained search of `batch` queries (full
  output layer, cross-attention K/V once per query): 2 per multiply-add.

  Encoder over B*Li tokens; cross-attention K/V over B*Li once; each of
  `steps` decoder steps runs B*beam tokens through self-attention, the
  cross-attention query/output, the MLP and the [d, V] output layer, and
  attends over its cached keys and the Li encoder states. The trie's
  gathers, top-k and norms are not counted.
  """
  d, inner, f = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
  attn, mlp = 4 * d * inner, len(cfg.mlp_activations) * d * f + f * d
  encoder = cfg.num_encoder_layers * batch * li * (attn + mlp + 2 * li * inner)
  cross_kv = cfg.num_decoder_layers * batch * li * 2 * d * inner
  rows = batch * beam
  per_step = rows * (
    cfg.num_decoder_layers * (attn + 2 * d * inner + mlp) + d * cfg.vocab_size
  )
  attend = cfg.num_decoder_layers * rows * 2 * inner * (steps * (steps + 1) / 2)
  attend += cfg.num_decoder_layers * rows * 2 * inner * li * steps
  return 2.0 * (encoder + cross_kv + steps * per_step + attend)


def add_roofline(rows, name, peak_gflops):
  """Each row gains FLOPs per query and the sparse search's GFLOP/s and
  fraction of the measured matmul peak."""
  cfg = model_config(name, _VOCAB.value)
  for row in rows:
    flops = decode_flops(
      cfg, row['batch'], row['beam'], _INPUT_LENGTH.value, row['max_decode_len']
    )
    row['gflop_per_query'] = flops / row['batch'] / 1e9
    row['sparse_gflop_per_s'] = flops / (row['sparse_ms'] / 1e3) / 1e9
    row['sparse_fraction_of_peak'] = row['sparse_gflop_per_s'] / peak_gflops


def overhead_rows(name, tries, reps, with_dense):
  """Times unconstrained, sparse and dense-mask search for one model."""
  variants = ['none', 'sparse'] + (['dense'] if with_dense else [])
  rows, _ = variant_rows(name, tries, reps, variants, baseline='none')
  for row in rows:
    print(json.dumps(row), flush=True)
  return rows


def output_layer_rows(name, tries, reps):
  """Times the full output layer against the sparse one (and per-step
  cross-attention K/V), and compares their top-1 documents."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rows, top1s = variant_rows(
    name,
    tries,
    reps,
    ['uncached', 'sparse', 'sparse_output'],
    baseline='sparse',
    with_top1=True,
  )
  for row, top1 in zip(rows, top1s):
    row['top1_same_as_full_normaliser'] = float(
      np.mean(top1['sparse_output'] == top1['sparse'])
    )
    row['top1_uncached_equal'] = bool(
      np.all(top1['uncached'] == top1['sparse'])
    )
    row['sparse_output_speedup'] = row['sparse_ms'] / row['sparse_output_ms']
    row['cached_kv_speedup'] = row['uncached_ms'] / row['sparse_ms']
    print(json.dumps(row), flush=True)
  return rows


def variant_rows(name, tries, reps, variants, baseline, with_top1=False):
  """Per trie size: a row of {variant}_ms / _cpu_ms and overhead % vs
  `baseline`, and (with_top1) {variant: top-1 documents [B]}."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gr.model import models  # pylint: disable=g-import-not-at-top

  model = models.EncoderDecoderModel(model_config(name, _VOCAB.value))
  params = model.init_params(
    jax.random.PRNGKey(0), input_length=_INPUT_LENGTH.value, target_length=8
  )
  queries = random_queries(_BATCH.value, _INPUT_LENGTH.value, _VOCAB.value)
  max_len = _LEVELS.value + 1
  fns = {v: make_search(model, _BEAM.value, max_len, v) for v in variants}
  rows, top1s = [], []
  for size, (_, trie) in sorted(tries.items()):
    arrays = trie.to_device()
    calls = {
      v: (lambda f=f, a=arrays: f(params, queries, a)) for v, f in fns.items()
    }
    seconds = median_times(calls, reps)
    if with_top1:
      top1s.append({v: np.asarray(c())[:, 0] for v, c in calls.items()})
    row = dict(
      model=name,
      docids=size,
      reps=reps,
      batch=_BATCH.value,
      beam=_BEAM.value,
      max_decode_len=max_len,
    )
    for v, (wall, cpu) in seconds.items():
      row.update({f'{v}_ms': 1e3 * wall, f'{v}_cpu_ms': 1e3 * cpu})
      if v != baseline:
        row[f'{v}_overhead_pct'] = 100 * (wall / seconds[baseline][0] - 1)
        row[f'{v}_cpu_overhead_pct'] = 100 * (cpu / seconds[baseline][1] - 1)
    rows.append(row)
  return rows, top1s


def dict_trie(docids):
  """Nested dicts {token: {...}}: the host trie of GENRE/NCI."""
  root = {}
  for row in docids.tolist():
    node = root
    for token in row:
      node = node.setdefault(token, {})
  return root


def hf_generate_fn(hf_model, trie_dict, beam, max_len, torch_device):
  """queries [B, Li] numpy -> HF constrained beam search output ids."""
  import torch  # pylint: disable=g-import-not-at-top

  def allowed(batch_id, sent):
    del batch_id
    node = trie_dict
    for token in sent.tolist()[1:]:  # skip the decoder start token
      node = node.get(token)
      if node is None:
        return [0]  # a dead (-inf) beam off the trie
    return list(node.keys()) or [0]

  def generate(queries):
    ids = torch.as_tensor(queries, device=torch_device)
    with torch.no_grad():
      return hf_model.generate(
        input_ids=ids,
        attention_mask=ids > 0,
        num_beams=beam,
        num_return_sequences=beam,
        max_new_tokens=max_len,
        prefix_allowed_tokens_fn=allowed,
        length_penalty=0.0,
        do_sample=False,
        early_stopping=False,
      )

  return generate


def hf_model_and_params(name, vocab, torch_device):
  """A random HF T5 of config `name` and the same weights as our params."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from gr.model import hf_import  # pylint: disable=g-import-not-at-top

  ours = model_config(name, vocab)
  torch.manual_seed(0)
  config = transformers.T5Config(
    vocab_size=vocab,
    d_model=ours.emb_dim,
    d_kv=ours.head_dim,
    d_ff=ours.mlp_dim,
    num_layers=ours.num_encoder_layers,
    num_decoder_layers=ours.num_decoder_layers,
    num_heads=ours.num_heads,
    feed_forward_proj='gated-gelu',
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=EOS,
  )
  hf_model = transformers.T5ForConditionalGeneration(config).eval()
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  config_ours = hf_import.config_from_hf(config.to_dict(), dropout_rate=0.0)
  params = hf_import.params_from_hf_state_dict(state, config_ours)
  return hf_model.to(torch_device), config_ours, params


def peer_row(name, docids, trie, reps):
  """Queries/s of ours (sparse) vs HF + dict trie on the same inputs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from gr.model import models  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_THREADS.value)
  torch_device = 'cuda' if _DEVICE.value == 'gpu' else 'cpu'
  hf_model, config, params = hf_model_and_params(
    name, _VOCAB.value, torch_device
  )
  max_len = _LEVELS.value + 1
  ours = make_search(
    models.EncoderDecoderModel(config), _BEAM.value, max_len, 'sparse'
  )
  theirs = hf_generate_fn(
    hf_model, dict_trie(docids), _BEAM.value, max_len, torch_device
  )
  queries = random_queries(_BATCH.value, _INPUT_LENGTH.value, _VOCAB.value)
  arrays = trie.to_device()
  seconds = median_times(
    {
      'ours': lambda: ours(params, queries, arrays),
      'hf': lambda: theirs(queries),
    },
    reps,
  )
  (ours_s, ours_cpu), (hf_s, hf_cpu) = seconds['ours'], seconds['hf']
  our_top = np.asarray(ours(params, queries, arrays))[:, 0]
  hf_ids = theirs(queries).cpu().numpy()[:: _BEAM.value, 1:]  # [B, L] top-1
  by_docid = {tuple(row): i for i, row in enumerate(docids.tolist())}
  hf_top = [by_docid.get(tuple(row[:max_len].tolist()), -1) for row in hf_ids]
  batch = _BATCH.value
  row = dict(
    model=name,
    docids=len(docids),
    batch=batch,
    beam=_BEAM.value,
    reps=reps,
    torch_threads=_THREADS.value,
    ours_qps=batch / ours_s,
    hf_qps=batch / hf_s,
    speedup=hf_s / ours_s,
    cpu_speedup=hf_cpu / ours_cpu,
    top1_agreement=float(np.mean(our_top == np.array(hf_top))),
  )
  print(json.dumps(row), flush=True)
  return row


def build_row(docids, trie, bulk_build_s):
  """Host build (bulk and per docid), upload time, device bytes per docid."""
  import jax  # pylint: disable=g-import-not-at-top
  from gr.index import docid_trie  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  docid_trie.DocidTrie.build(
    [tuple(row) for row in docids.tolist()],
    range(len(docids)),
    vocab_size=_VOCAB.value,
  )
  row = dict(
    docids=len(docids),
    bulk_build_s=bulk_build_s,
    insert_build_s=time.perf_counter() - start,
  )
  start = time.perf_counter()
  jax.block_until_ready(trie.to_device())
  row.update(
    to_device_s=time.perf_counter() - start,
    nodes=trie.num_nodes,
    device_bytes=trie.memory_bytes(),
    bytes_per_docid=trie.memory_bytes() / len(trie),
  )
  print(json.dumps(row), flush=True)
  return row


def random_docids(count, length, vocab, seed=0):
  """About `count` distinct random docids [n, length + 1] int32 (tokens in
  [2, vocab), EOS last), shuffled."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  tokens = np.unique(rng.integers(2, vocab, (count, length)), axis=0)
  rng.shuffle(tokens)
  eos = np.full((len(tokens), 1), EOS)
  return np.concatenate([tokens, eos], axis=1).astype(np.int32)


def csr_levels(docids):
  """The trie of fixed-length docids [n, L] as one CSR per level.

  Nodes are numbered per depth in sorted order. Level d: offsets [n_d + 1]
  (the children of node i at depth d are nodes offsets[i] .. offsets[i+1]
  - 1 at depth d + 1) and tokens [n_{d+1}] (the edge into each child).
  Returns (offsets per level, tokens per level, widths per level, leaf
  documents [n]: the row of docids each depth-L node ends).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  order = np.lexsort(docids.T[::-1])
  rows = docids[order]
  changed = np.zeros(len(rows), bool)
  changed[0] = True
  node = np.zeros(len(rows), np.int64)  # each row's node one depth up
  offsets, tokens = [], []
  for depth in range(rows.shape[1]):
    changed[1:] |= rows[1:, depth] != rows[:-1, depth]
    starts = np.flatnonzero(changed)
    offsets.append(
      np.searchsorted(node[starts], np.arange(node[-1] + 2)).astype(np.int32)
    )
    tokens.append(rows[starts, depth].astype(np.int16))
    node = np.cumsum(changed) - 1
  widths = tuple(int(np.diff(o).max()) for o in offsets)
  return offsets, tokens, widths, order.astype(np.int32)


def free_logits(bias, table, previous):
  """The free model: query bias [B, V] + a fixed row per previous token
  ([V, V] table, previous [B, K]) -> logits [B, K, V]. Its cost is one
  gather, the same for both decoders."""
  return bias[:, None, :] + table[previous]


def make_csr_search(widths, beam):
  """Jitted (bias, table, offsets, tokens, leaf documents) -> documents
  [B, beam]: beam search over `csr_levels`, unrolled with each level's
  static width (the STATIC-style fixed-length reference decoder)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  @jax.jit
  def search(bias, table, offsets, tokens, leaf_documents):
    batch = bias.shape[0]
    nodes = jnp.zeros((batch, 1), jnp.int32)  # the root: one beam
    scores = jnp.zeros((batch, 1), jnp.float32)
    previous = jnp.zeros((batch, 1), jnp.int32)  # BOS
    for depth, width in enumerate(widths):
      log_probs = jax.nn.log_softmax(free_logits(bias, table, previous))
      start = offsets[depth][nodes]
      count = offsets[depth][nodes + 1] - start
      slots = start[..., None] + jnp.arange(width)  # [B, K, W]
      child_tokens = jnp.take(tokens[depth], slots, mode='clip').astype(
        jnp.int32
      )
      picked = jnp.take_along_axis(log_probs, child_tokens, axis=2)
      candidates = jnp.where(
        jnp.arange(width) < count[..., None],
        scores[..., None] + picked,
        -jnp.inf,
      ).reshape(batch, -1)
      scores, index = jax.lax.top_k(candidates, beam)
      nodes = jnp.take_along_axis(slots.reshape(batch, -1), index, axis=1)
      previous = jnp.take_along_axis(
        child_tokens.reshape(batch, -1), index, axis=1
      )
    return leaf_documents[nodes]

  return search


def make_free_search(beam, max_len):
  """Jitted (bias, table, trie_arrays) -> documents [B, beam]: gr's
  constrained beam search with the free model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gr.decode import constraint as constraint_lib  # pylint: disable=g-import-not-at-top

  @jax.jit
  def search(bias, table, trie_arrays):
    queries = jnp.arange(bias.shape[0] * beam) // beam  # of each row [N]

    def tokens_to_logits(decoder_tokens, cache, step):
      del step  # the model keeps no state: a 0-d cache, never gathered
      logits = free_logits(bias[queries], table, decoder_tokens)
      return logits[:, 0], cache  # [N, 1, V] --> [N, V]

    return constraint_lib.constrained_beam_search(
      tokens_to_logits,
      jnp.zeros((), jnp.int32),
      bias.shape[0],
      trie_arrays,
      beam_size=beam,
      max_decode_len=max_len,
    ).documents

  return search


def trie_row(count, length, vocab, reps):
  """The trie at `count` random docids: device bytes, bulk build time, and
  decoding with a free model, gr's search vs the level-CSR reference."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gr.index import docid_trie  # pylint: disable=g-import-not-at-top

  docids = random_docids(count, length, vocab)
  builds = []
  for _ in range(3):
    wall, cpu = time.perf_counter(), time.process_time()
    trie = docid_trie.DocidTrie.from_padded(
      docids, np.arange(len(docids)), vocab_size=vocab
    )
    builds.append((time.perf_counter() - wall, time.process_time() - cpu))
  arrays = trie.to_device()
  device_bytes = sum(x.nbytes for x in jax.tree.leaves(arrays))
  offsets, tokens, widths, leaves = csr_levels(docids)
  csr = [jnp.asarray(x) for x in offsets], [jnp.asarray(x) for x in tokens]
  csr_bytes = sum(x.nbytes for x in jax.tree.leaves(csr)) + leaves.nbytes
  rng = np.random.default_rng(2)
  bias = jnp.asarray(rng.normal(size=(_BATCH.value, vocab)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(vocab, vocab)), jnp.float32)
  ours = make_free_search(_BEAM.value, length + 1)
  theirs = make_csr_search(widths, _BEAM.value)
  leaves = jnp.asarray(leaves)
  calls = {
    'gr': lambda: ours(bias, table, arrays),
    'csr': lambda: theirs(bias, table, *csr, leaves),
  }
  seconds = median_times(calls, reps)
  top1 = {name: np.asarray(call())[:, 0] for name, call in calls.items()}
  per_query = lambda name: 1e3 * seconds[name][0] / _BATCH.value
  row = dict(
    docids=len(docids),
    docid_tokens=length,
    vocab=vocab,
    batch=_BATCH.value,
    beam=_BEAM.value,
    reps=reps,
    nodes=trie.num_nodes,
    device_bytes=device_bytes,
    bytes_per_docid=device_bytes / len(docids),
    csr_bytes_per_docid=csr_bytes / len(docids),
    bulk_build_s=statistics.median(w for w, _ in builds),
    bulk_build_cpu_s=statistics.median(c for _, c in builds),
    level_widths=list(arrays.level_widths),
    csr_widths=list(widths),
    gr_ms_per_query=per_query('gr'),
    csr_ms_per_query=per_query('csr'),
    gr_cpu_ms_per_query=1e3 * seconds['gr'][1] / _BATCH.value,
    csr_cpu_ms_per_query=1e3 * seconds['csr'][1] / _BATCH.value,
    gr_over_csr=seconds['gr'][0] / seconds['csr'][0],
    top1_agreement=float(np.mean(top1['gr'] == top1['csr'])),
  )
  print(json.dumps(row), flush=True)
  return row


# STATIC (github.com/youtube/static-constraint-decoding) as a peer: its
# benchmark shape, imported from PYTHONPATH when it is there, never copied.
STATIC_BATCH, STATIC_BEAM, STATIC_TOKENS_PER_BEAM = 2, 70, 30
# gr's variants against STATIC: step 0 over every beam or once per input
# (first_step), and the model's log-prob of each docid's forced EOS scored
# (gr's default) or not (STATIC's score: a fixed-length docid's tokens).
GR_VS_STATIC = {
  'gr': dict(first_step=False, score_forced_eos=True),
  'gr_first_step': dict(first_step=True, score_forced_eos=True),
  'gr_static_score': dict(first_step=True, score_forced_eos=False),
}


def import_static():
  """(decoding_jax, csr_utils) of STATIC, or (None, why it did not import)."""
  try:
    from static_decoding import csr_utils  # pylint: disable=g-import-not-at-top
    from static_decoding import decoding_jax  # pylint: disable=g-import-not-at-top
  except ImportError as error:  # not on PYTHONPATH, or its deps missing
    return None, f'{type(error).__name__}: {error}'
  return (decoding_jax, csr_utils), None


def static_index(csr_utils, tokens, vocab):
  """STATIC's index of docid tokens [n, L] (lexsorted first: its input
  contract): (device arrays, level widths, build seconds incl. the sort)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  ordered = tokens[np.lexsort(tokens.T[::-1])]
  packed, indptr, widths, *masks = csr_utils.build_static_index(
    ordered, vocab, dense_lookup_layers=2
  )
  seconds = time.perf_counter() - start
  arrays = tuple(jnp.asarray(x) for x in (packed, indptr, *masks))
  return arrays, tuple(int(w) for w in widths), seconds


def make_static_search(decoding_jax, model, widths, length, vocab):
  """(key, STATIC arrays) -> tokens [B, beam, L] (its jitted search)."""

  def search(key, arrays):
    packed, indptr, start_mask, dense_mask, dense_states = arrays
    return decoding_jax.sparse_transition_jax(
      model, key, STATIC_BATCH, STATIC_BEAM, STATIC_TOKENS_PER_BEAM, 0,
      length, vocab, widths, packed, indptr, start_mask, dense_mask,
      dense_states, d_dense=2,
    )  # fmt: skip

  return search


def make_random_model_search(model, length, first_step, score_forced_eos):
  """Jitted (key, trie_arrays) -> `ConstrainedResult`: gr's search with
  STATIC's random model (its PRNG key is the cache: 0-d, shared by rows)."""
  import jax  # pylint: disable=g-import-not-at-top
  from gr.decode import constraint as constraint_lib  # pylint: disable=g-import-not-at-top

  def tokens_to_logits(decoder_tokens, key, step):
    del step
    logits, key = model(decoder_tokens, key)  # [n, 1, V]
    return logits[:, 0], key  # --> [n, V]

  @jax.jit
  def search(key, trie_arrays):
    return constraint_lib.constrained_beam_search(
      tokens_to_logits,
      key,
      STATIC_BATCH,
      trie_arrays,
      beam_size=STATIC_BEAM,
      max_decode_len=length + 1,
      first_step=tokens_to_logits if first_step else None,
      score_forced_eos=score_forced_eos,
    )

  return search


def median_build(build, reps=3):
  """(median seconds, last result) of `build()` run `reps` times."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    result = build()
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def static_row(static, count, length, vocab, reps, rounds):
  """gr against STATIC at `count` random docids on STATIC's shape: time
  ratios per round (each --reps interleaved runs), bytes per docid, build
  seconds, and how often gr (STATIC's score) and STATIC agree on top-1."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gr.index import docid_trie  # pylint: disable=g-import-not-at-top

  decoding_jax, csr_utils = static
  docids = random_docids(count, length, vocab)  # tokens in [2, V), then EOS
  gr_build, trie = median_build(
    lambda: docid_trie.DocidTrie.from_padded(
      docids, np.arange(len(docids)), vocab_size=vocab
    )
  )
  static_build, (static_arrays, widths, _) = median_build(
    lambda: static_index(csr_utils, docids[:, :length], vocab)
  )
  arrays = trie.to_device()
  model = decoding_jax.RandomModel(vocab)
  theirs = make_static_search(decoding_jax, model, widths, length, vocab)
  ours = {
    name: make_random_model_search(model, length, **options)
    for name, options in GR_VS_STATIC.items()
  }
  key = jax.random.key(0)
  calls = {'static': lambda: theirs(key, static_arrays)}
  calls.update(
    {n: (lambda f=f: f(key, arrays).documents) for n, f in ours.items()}
  )
  per_round = [median_times(calls, reps) for _ in range(rounds)]
  ratios = {  # wall time, and process CPU time (steadier under load)
    name: [t[name][0] / t['static'][0] for t in per_round] for name in ours
  }
  cpu_ratios = {
    name: [t[name][1] / t['static'][1] for t in per_round] for name in ours
  }
  same = [
    np.array_equal(
      np.asarray(theirs(k, static_arrays))[:, 0],
      np.asarray(ours['gr_static_score'](k, arrays).sequences)[:, 0, :length],
    )
    for k in jax.random.split(jax.random.key(1), 10)
  ]
  device_bytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  row = dict(
    docids=len(docids),
    docid_tokens=length,
    vocab=vocab,
    batch=STATIC_BATCH,
    beam=STATIC_BEAM,
    tokens_per_beam=STATIC_TOKENS_PER_BEAM,
    reps=reps,
    rounds=rounds,
    ms={name: [1e3 * t[name][0] for t in per_round] for name in per_round[0]},
    cpu_ms={
      name: [1e3 * t[name][1] for t in per_round] for name in per_round[0]
    },
    ratio=ratios,
    ratio_median={n: statistics.median(r) for n, r in ratios.items()},
    cpu_ratio=cpu_ratios,
    cpu_ratio_median={n: statistics.median(r) for n, r in cpu_ratios.items()},
    gr_bytes_per_docid=device_bytes(arrays) / len(docids),
    static_bytes_per_docid=device_bytes(static_arrays) / len(docids),
    gr_build_s=gr_build,
    static_build_s=static_build,
    gr_level_widths=list(arrays.level_widths),
    static_level_widths=list(widths),
    top1_same_static_score=float(np.mean(same)),
  )
  print(json.dumps(row), flush=True)
  return row


def print_static_table(rows):
  """The STATIC rows as text: ratios per round, memory, build."""
  print(
    f'\ngr / STATIC time on its shape (batch {STATIC_BATCH}, beam '
    f'{STATIC_BEAM}, free random model), per round (median of --reps)'
  )
  for r in rows:
    print(
      f"{r['docids']:8d} docids x {r['docid_tokens']} tokens, V="
      f"{r['vocab']}: STATIC ms "
      + ' '.join(f'{t:.1f}' for t in r['ms']['static'])
    )
    for name, ratios in r['ratio'].items():
      cpu = r['cpu_ratio'][name]
      print(
        f'  {name:16} wall ' + ' '.join(f'{x:.3f}' for x in ratios)
        + f"  (median {r['ratio_median'][name]:.3f}, spread "
        f'{min(ratios):.3f}-{max(ratios):.3f}); CPU '
        + ' '.join(f'{x:.3f}' for x in cpu)
        + f"  (median {r['cpu_ratio_median'][name]:.3f})"
      )  # fmt: skip
    print(
      f"  bytes/docid gr {r['gr_bytes_per_docid']:.1f}, STATIC "
      f"{r['static_bytes_per_docid']:.1f}; build s gr {r['gr_build_s']:.2f}"
      f", STATIC {r['static_build_s']:.2f} (sort incl.); widths gr "
      f"{r['gr_level_widths']}, STATIC {r['static_level_widths']}; same "
      f"top-1 (gr_static_score) {r['top1_same_static_score']:.2f}"
    )


def static_results(results):
  """--mode=static: the STATIC rows, or why STATIC is missing."""
  static, why = import_static()
  if static is None:
    print(f'STATIC not importable ({why}): put its checkout on PYTHONPATH')
    results['static_import_error'] = why
    return
  results['static_module'] = static[0].__file__
  results['static'] = [
    static_row(
      static,
      int(n),
      _TRIE_TOKENS.value,
      _TRIE_VOCAB.value,
      _REPS.value,
      _STATIC_ROUNDS.value,
    )
    for n in _STATIC_SIZES.value
  ]
  print_static_table(results['static'])


def print_trie_table(r):
  """The trie row as text."""
  print(
    f"\ntrie at {r['docids']} random {r['docid_tokens']}-token docids, "
    f"V={r['vocab']}: {r['bytes_per_docid']:.1f} device bytes/docid "
    f"(level CSR {r['csr_bytes_per_docid']:.1f}), bulk build "
    f"{r['bulk_build_s']:.2f} s wall ({r['bulk_build_cpu_s']:.2f} s CPU); "
    f"widths {r['level_widths']} (CSR {r['csr_widths']})"
  )
  print(
    f"free-model decoding, batch {r['batch']}, beam {r['beam']}: gr "
    f"{r['gr_ms_per_query']:.2f} ms/query ({r['gr_cpu_ms_per_query']:.2f} "
    f"CPU), level-CSR reference {r['csr_ms_per_query']:.2f} "
    f"({r['csr_cpu_ms_per_query']:.2f} CPU): gr/CSR "
    f"{r['gr_over_csr']:.2f}; same top-1 {r['top1_agreement']:.2f}"
  )


def print_output_layer_table(results):
  """The output_layer rows as aligned text."""
  print(
    f"\n{results['device']}; batch {_BATCH.value}, beam {_BEAM.value}, "
    f"{_LEVELS.value}x{_BRANCHING.value}-ary docids, V={_VOCAB.value}"
  )
  print(
    'ms per batch, wall (process CPU); sparse trie constraint with: '
    'cross-attention K/V per step | K/V once + full output layer | '
    'K/V once + sparse output layer'
  )
  print(
    f"{'model':6} {'docids':>8} {'K/V per step':>16} {'full output':>16}"
    f" {'sparse output':>16} {'K/V x':>6} {'sparse x':>8} "
    f"{'same top-1':>10}"
  )
  cell = lambda r, v: f"{r[f'{v}_ms']:7.1f} ({r[f'{v}_cpu_ms']:6.1f})"
  for r in results['output_layer']:
    print(
      f"{r['model']:6} {r['docids']:8d} {cell(r, 'uncached')} "
      f"{cell(r, 'sparse')} {cell(r, 'sparse_output')} "
      f"{r['cached_kv_speedup']:6.2f} {r['sparse_output_speedup']:8.2f} "
      f"{r['top1_same_as_full_normaliser']:10.2f}"
    )


def print_table(results):
  """The overhead, peer and build rows as aligned text."""
  print(
    f"\n{results['device']}; batch {_BATCH.value}, beam {_BEAM.value}, "
    f"{_LEVELS.value}x{_BRANCHING.value}-ary docids, V={_VOCAB.value}"
  )
  print('ms per batch, wall (process CPU); overhead % vs unconstrained')
  print(
    f"{'model':6} {'docids':>8} {'unconstrained':>15} {'sparse trie':>15}"
    f" {'ovh %':>13} {'dense mask':>15} {'ovh %':>13}"
    f" {'GFLOP/q':>8} {'GFLOP/s':>8} {'of peak':>7}"
  )
  cell = lambda r, v: (
    f"{r[f'{v}_ms']:6.1f} ({r[f'{v}_cpu_ms']:6.1f})"
    if f'{v}_ms' in r
    else f"{'-':>15}"
  )
  pct = lambda r, v: (
    f"{r[f'{v}_overhead_pct']:5.1f} ({r[f'{v}_cpu_overhead_pct']:5.1f})"
    if f'{v}_ms' in r
    else f"{'-':>13}"
  )
  for r in results['overhead']:
    print(
      f"{r['model']:6} {r['docids']:8d} {cell(r, 'none')} "
      f"{cell(r, 'sparse')} {pct(r, 'sparse')} {cell(r, 'dense')} "
      f"{pct(r, 'dense')} {r.get('gflop_per_query', float('nan')):8.3f} "
      f"{r.get('sparse_gflop_per_s', float('nan')):8.1f} "
      f"{r.get('sparse_fraction_of_peak', float('nan')):7.3f}"
    )
  if 'matmul_peak_gflops' in results:
    print(
      f"roofline: fp32 matmul peak {results['matmul_peak_gflops']:.1f} "
      'GFLOP/s measured in this run (gr.bench_env)'
    )
  for r in results['peer']:
    print(
      f"vs HF+dict trie ({r['model']}, {r['docids']} docids): ours "
      f"{r['ours_qps']:.1f} q/s, HF {r['hf_qps']:.2f} q/s, "
      f"{r['speedup']:.1f}x (CPU time {r['cpu_speedup']:.1f}x); "
      f"same top-1 {r['top1_agreement']:.2f}"
    )
  b = results['build']
  print(
    f"build at {b['docids']} docids: inserts {b['insert_build_s']:.1f} s"
    f", bulk {b['bulk_build_s']:.1f} s, upload {b['to_device_s']:.2f} s, "
    f"{b['bytes_per_docid']:.1f} device bytes/docid"
  )


def main(argv):
  del argv
  os.environ['JAX_PLATFORMS'] = 'cuda' if _DEVICE.value == 'gpu' else 'cpu'
  import jax  # pylint: disable=g-import-not-at-top

  from gr import atomic_io  # pylint: disable=g-import-not-at-top
  from gr import bench_env  # pylint: disable=g-import-not-at-top

  def finish(results):
    results['load'].append(bench_env.machine_load('after'))
    if _OUT.value:
      atomic_io.write_json(_OUT.value, results, indent=1)

  models = _MODELS.value or (
    ['base'] if _DEVICE.value == 'gpu' else ['tiny', 'small']
  )
  device = jax.devices()[0]
  results = dict(
    device=f'{device.platform}: {device.device_kind}',
    cpu_count=os.cpu_count(),
    jax=jax.__version__,
    load=[bench_env.machine_load('before')],
    flags={
      f: getattr(flags.FLAGS, f)
      for f in (
        'batch',
        'beam',
        'reps',
        'quick',
        'levels',
        'branching',
        'vocab',
        'input_length',
        'threads',
        'mode',
        'trie_docids',
        'trie_tokens',
        'trie_vocab',
        'static_sizes',
        'static_rounds',
      )
    },
  )
  if _MODE.value == 'static':
    static_results(results)
    finish(results)
    return
  if _MODE.value == 'trie':
    results['trie'] = trie_row(
      _TRIE_DOCIDS.value, _TRIE_TOKENS.value, _TRIE_VOCAB.value, _REPS.value
    )
    print_trie_table(results['trie'])
    finish(results)
    return
  peer_size = _PEER_SIZE.value if _MODE.value == 'all' else 0
  sizes = sorted(
    {int(n) for n in _SIZES.value} | ({peer_size} if peer_size else set())
  )
  tries, bulk_s = build_tries(
    sizes, _LEVELS.value, _BRANCHING.value, _VOCAB.value
  )
  overhead_tries = {int(n): tries[int(n)] for n in _SIZES.value}
  if _MODE.value == 'output_layer':
    results['output_layer'] = []
    for name in models:
      reps = 3 if _QUICK.value and name != 'tiny' else _REPS.value
      results['output_layer'] += output_layer_rows(name, overhead_tries, reps)
    print_output_layer_table(results)
    finish(results)
    return
  results['build'] = build_row(*tries[max(sizes)], bulk_s)
  results['overhead'] = []
  results['matmul_peak_gflops'] = bench_env.matmul_peak_gflops()
  for name in models:
    quick = _QUICK.value and name != 'tiny'
    rows = overhead_rows(
      name, overhead_tries, 3 if quick else _REPS.value, with_dense=not quick
    )
    add_roofline(rows, name, results['matmul_peak_gflops'])
    results['overhead'] += rows
  results['peer'] = [
    peer_row(name, *tries[_PEER_SIZE.value], 3 if _QUICK.value else _REPS.value)
    for name in _PEER_MODELS.value
    if _PEER_SIZE.value
  ]
  if _TRIE_DOCIDS.value:
    results['trie'] = trie_row(
      _TRIE_DOCIDS.value, _TRIE_TOKENS.value, _TRIE_VOCAB.value, _REPS.value
    )
  print_table(results)
  if 'trie' in results:
    print_trie_table(results['trie'])
  finish(results)


if __name__ == '__main__':
  entry.run(main)
