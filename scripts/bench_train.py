"""Training throughput: our JAX T5 vs HF transformers' PyTorch T5, same config.

  python scripts/bench_train.py --configs tiny,d256 --batch 32 \
      --input_length 64 --target_length 8 --steps 10 --out /tmp/bench.json

Both sides train the identical T5.1.1-style network (gated-GELU, untied
logits, dropout on) with AdamW on one fixed random batch; warm-up steps
(compilation included) are excluded from the timing. Ours: jitted
models.loss_fn (+ z-loss) + optax.adamw. Theirs: T5ForConditionalGeneration
(eager attention) + torch.optim.AdamW, torch.set_num_threads(--threads).
Model FLOPs utilisation (see `train_flops`) is reported against a matmul
peak measured in the same run (`gr.bench_env.matmul_peak_gflops`), or
against --peak_tflops when given. When JAX sees a GPU, torch still runs
wherever it can (CPU here), so the ratio is not like for like. The load
average is printed before and after the runs.
"""

import functools
import os
import time
import types

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gr import atomic_io
from gr import bench_env
from gr import entry
from gr.model import models
from gr.model import network

CONFIGS = {  # name -> T5Config overrides on top of the tiny preset
  'tiny': {},
  'd256': dict(
    emb_dim=256,
    num_heads=4,
    head_dim=64,
    mlp_dim=1024,
    num_encoder_layers=4,
    num_decoder_layers=4,
  ),
}
# name -> flag holder; main() gathers their values into `args`.
_FLAGS = {
  'configs': flags.DEFINE_string(
    'configs', 'tiny,d256', f'Comma-separated names of {sorted(CONFIGS)}.'
  ),
  'vocab': flags.DEFINE_integer('vocab', 32128, 'Vocabulary size.'),
  'batch': flags.DEFINE_integer('batch', 32, 'Batch size.'),
  'input_length': flags.DEFINE_integer('input_length', 64, 'Input length.'),
  'target_length': flags.DEFINE_integer('target_length', 8, 'Target length.'),
  'warmup': flags.DEFINE_integer('warmup', 2, 'Untimed warm-up steps.'),
  'steps': flags.DEFINE_integer('steps', 10, 'Timed steps.'),
  'threads': flags.DEFINE_integer('threads', os.cpu_count(), 'torch threads.'),
  'dtype': flags.DEFINE_enum(
    'dtype', 'float32', list(network.DTYPES), 'Activation dtype.'
  ),
  'peak_tflops': flags.DEFINE_float(
    'peak_tflops',
    None,
    'Peak TFLOP/s for MFU (default: a matmul peak measured in this run).',
  ),
  'dropout': flags.DEFINE_enum(
    'dropout',
    'hash',
    ['hash', 'bernoulli'],
    'T5Config.dropout_implementation (gr/model/dropout.py).',
  ),
  'prng_impl': flags.DEFINE_enum(
    'prng_impl',
    'threefry2x32',
    ['threefry2x32', 'rbg', 'unsafe_rbg'],
    'JAX PRNG implementation (dropout masks).',
  ),
  'skip_hf': flags.DEFINE_bool('skip_hf', False, 'Skip the PyTorch side.'),
  'profile': flags.DEFINE_bool(
    'profile',
    False,
    'Also split our step: forward, forward+backward, the optimizer, the '
    'output layer alone, and every weight matmul shape alone (see '
    '`profile_step`).',
  ),
  'trace': flags.DEFINE_bool(
    'trace',
    False,
    'Also trace our step with jax.profiler and sum the XLA ops\' thread '
    'time by kind, with how busy the CPU threads were (`traced_op_times`).',
  ),
  'out': flags.DEFINE_string('out', None, 'JSON results file.'),
}


def train_flops(cfg: network.T5Config, batch: int, li: int, lt: int) -> float:
  """Matmul FLOPs of one train step: 6 x weight size x tokens it sees.

  (2 forward + 4 backward per multiply-add.) Encoder weights see B*Li
  tokens; decoder self-attention, query/out of cross-attention, MLP and
  logits see B*Lt; cross-attention key/value see B*Li. Attention scores and
  weighted values add 6 * 2 * Lq * Lk * heads * head_dim per layer and row.
  Embedding lookups, norms and softmax are not counted.
  """
  d, inner, f = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
  attn, mlp = 4 * d * inner, len(cfg.mlp_activations) * d * f + f * d
  enc = cfg.num_encoder_layers * (
    batch * li * (attn + mlp) + batch * 2 * li * li * inner
  )
  dec_tokens = batch * lt * (attn + 2 * d * inner + mlp)
  dec = cfg.num_decoder_layers * (
    dec_tokens
    + batch * li * 2 * d * inner
    + batch * 2 * (lt * lt + lt * li) * inner
  )
  return 6.0 * (enc + dec + batch * lt * d * cfg.vocab_size)


def weight_matmuls(cfg: network.T5Config, batch: int, li: int, lt: int):
  """[(name, M, K, N, count)]: every weight matmul of one forward pass, as
  x [M, K] @ w [K, N], `count` times per step (layers x uses)."""
  d, inner, f = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
  wi = len(cfg.mlp_activations)
  enc, dec = batch * li, batch * lt
  le, ld = cfg.num_encoder_layers, cfg.num_decoder_layers
  return [
    ('encoder q/k/v', enc, d, inner, 3 * le + 2 * ld),  # + cross k/v
    ('encoder out', enc, inner, d, le),
    ('encoder mlp in', enc, d, f, wi * le),
    ('encoder mlp out', enc, f, d, le),
    ('decoder q/k/v/out', dec, d, inner, 6 * ld),  # self q/k/v/o, cross q/o
    ('decoder mlp in', dec, d, f, wi * ld),
    ('decoder mlp out', dec, f, d, ld),
    ('logits', dec, d, cfg.vocab_size, 1),
  ]


def matmul_seconds(m: int, k: int, n: int, warmup: int, steps: int) -> float:
  """Seconds for one weight matmul's forward and both backward products:
  x @ w, dy @ w.T and x.T @ dy (float32, jitted together)."""
  rng = np.random.default_rng(0)
  x, w, dy = (
    jax.device_put(rng.standard_normal(s, np.float32))
    for s in ((m, k), (k, n), (m, n))
  )
  three = jax.jit(lambda x, w, dy: (x @ w, dy @ w.T, x.T @ dy))
  return time_steps(lambda: three(x, w, dy), warmup, steps)


def profile_step(cfg, batch, args) -> dict:
  """Where one train step's time goes, each part timed alone in this run.

  forward: the loss; forward_backward: its gradient; optimizer: AdamW's
  update and apply over the whole parameter tree; output_layer: logits [B*Lt,
  V] and the cross-entropy, forward and backward, from fixed decoder
  states; matmuls: every weight matmul shape of `weight_matmuls`, forward
  and backward, summed over its count (`matmul_seconds`). The matmul sum
  is what a step would take if nothing but those matmuls ran, at the
  speed this CPU gives their shapes.
  """
  model = models.EncoderDecoderModel(cfg)
  params = model.init_params(
    jax.random.PRNGKey(0), input_length=8, target_length=8
  )
  batch = jax.device_put(batch)
  rng = jax.random.PRNGKey(1)
  forward = jax.jit(lambda p, b: model.loss_fn(p, b, rng)[0])
  gradient = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b, rng)[0]))
  optimizer = optax.adamw(1e-4, weight_decay=0.01)
  grads, opt = gradient(params, batch), optimizer.init(params)

  @functools.partial(jax.jit, donate_argnums=(1,))
  def apply(grads, opt, params):
    updates, opt = optimizer.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  def optimizer_step():
    nonlocal opt
    new_params, opt = apply(grads, opt, params)
    return new_params

  tokens, d = args.batch * args.target_length, cfg.emb_dim
  states = jax.device_put(
    np.random.default_rng(0).standard_normal((tokens, d), np.float32)
  )
  kernel = jax.device_put(
    np.random.default_rng(1).standard_normal((d, cfg.vocab_size), np.float32)
    * 0.02
  )
  labels = jax.device_put(np.arange(tokens, dtype=np.int32) % cfg.vocab_size)

  def output_loss(states, kernel):
    logits = states @ kernel
    return -jnp.mean(
      jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)
    )

  output_layer = jax.jit(jax.grad(output_loss, argnums=(0, 1)))
  w, s = args.warmup, args.steps
  parts = {
    'forward': time_steps(lambda: forward(params, batch), w, s),
    'forward_backward': time_steps(lambda: gradient(params, batch), w, s),
    'optimizer': time_steps(optimizer_step, w, s),
    'output_layer': time_steps(lambda: output_layer(states, kernel), w, s),
  }
  shapes = weight_matmuls(
    cfg, args.batch, args.input_length, args.target_length
  )
  matmuls = []
  for name, m, k, n, count in shapes:
    seconds = matmul_seconds(m, k, n, w, s)
    matmuls.append(
      {
        'name': name,
        'shape': [m, k, n],
        'count': count,
        'seconds_each': seconds,
        'gflops_per_s': 6.0 * m * k * n / seconds / 1e9,
      }
    )
  parts['matmuls'] = sum(r['seconds_each'] * r['count'] for r in matmuls)
  return {'seconds': parts, 'matmul_shapes': matmuls}


def traced_op_times(step, steps: int) -> dict:
  """Thread time per XLA op kind over `steps` calls of `step()`, per step.

  Traces with jax.profiler and reads the XSpace (tensorflow's xplane
  proto): op names lose their '.N' suffix ('ynn_fusion' = a YNNPACK
  matmul, 'copy_bitcast_fusion' = a fused copy or transpose). `busy` is
  the summed thread time of the XLA worker threads over the wall time of
  the traced steps: 2.0 would be both cores busy throughout.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(step())
  folder = tempfile.mkdtemp(prefix='bench_train_trace_')
  begin = time.perf_counter()
  with jax.profiler.trace(folder):
    for _ in range(steps):
      jax.block_until_ready(step())
  wall = (time.perf_counter() - begin) / steps
  space = xplane_pb2.XSpace()
  path = glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)
  with open(path[0], 'rb') as f:
    space.ParseFromString(f.read())
  kinds, busy = {}, 0.0
  for plane in space.planes:
    for line in plane.lines:
      if 'Eigen' not in line.name:  # XLA's worker threads
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        seconds = event.duration_ps / 1e12 / steps
        if name.startswith('ThunkExecutor'):
          busy += seconds
          continue
        kind = re.sub(r'\.\d+$', '', name)
        kinds[kind] = kinds.get(kind, 0.0) + seconds
  ranked = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
  return {'seconds_by_kind': ranked, 'busy_threads': busy / wall, 'wall': wall}


def make_batch(cfg, batch, li, lt, seed=0):
  rng = np.random.RandomState(seed)
  targets = rng.randint(3, cfg.vocab_size, (batch, lt)).astype(np.int32)
  targets[:, -1] = 1
  return {
    'encoder_input_tokens': rng.randint(3, cfg.vocab_size, (batch, li)).astype(
      np.int32
    ),
    'decoder_input_tokens': np.asarray(models.shift_targets_right(targets)),
    'decoder_target_tokens': targets,
    'decoder_loss_weights': np.ones((batch, lt), np.float32),
  }


def time_steps(step, warmup: int, steps: int) -> float:
  """Seconds per step of `step()` (returns something to block on)."""
  for _ in range(warmup):
    jax.block_until_ready(step())
  start = time.perf_counter()
  for _ in range(steps):
    out = step()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def bench_ours(cfg, batch, warmup, steps, trace=False):
  model = models.EncoderDecoderModel(cfg)
  optimizer = optax.adamw(1e-4, weight_decay=0.01)
  params = model.init_params(
    jax.random.PRNGKey(0), input_length=8, target_length=8
  )
  state = {
    'params': params,
    'opt': optimizer.init(params),
    'rng': jax.random.PRNGKey(1),
  }

  @functools.partial(jax.jit, donate_argnums=(0,))  # as gr/train/loop.py
  def train_step(state, batch):
    rng, dropout_rng = jax.random.split(state['rng'])
    grads, metrics = jax.grad(model.loss_fn, has_aux=True)(
      state['params'], batch, dropout_rng
    )
    updates, opt = optimizer.update(grads, state['opt'], state['params'])
    return {
      'params': optax.apply_updates(state['params'], updates),
      'opt': opt,
      'rng': rng,
    }, metrics['loss']

  batch = jax.device_put(batch)

  def step():
    nonlocal state
    state, loss = train_step(state, batch)
    return loss

  seconds = time_steps(step, warmup, steps)
  traced = traced_op_times(step, steps) if trace else None
  return seconds, sum(x.size for x in jax.tree.leaves(params)), traced


def bench_hf(cfg, batch, warmup, steps, threads):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  hf_config = transformers.T5Config(
    vocab_size=cfg.vocab_size,
    d_model=cfg.emb_dim,
    d_kv=cfg.head_dim,
    d_ff=cfg.mlp_dim,
    num_layers=cfg.num_encoder_layers,
    num_decoder_layers=cfg.num_decoder_layers,
    num_heads=cfg.num_heads,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    dropout_rate=cfg.dropout_rate,
    attn_implementation='eager',
  )
  model = transformers.T5ForConditionalGeneration(hf_config).train()
  # transformers 5.x ties lm_head to shared; untie it as our config is.
  model.lm_head.weight = torch.nn.Parameter(
    model.shared.weight.detach().clone()
  )
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  inputs = {
    'input_ids': torch.tensor(batch['encoder_input_tokens']),
    'attention_mask': torch.tensor(batch['encoder_input_tokens'] > 0),
    'decoder_input_ids': torch.tensor(batch['decoder_input_tokens']),
    'labels': torch.tensor(batch['decoder_target_tokens']).long(),
  }

  def step():
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()

  return time_steps(step, warmup, steps), sum(
    p.numel() for p in model.parameters()
  )


def bench_config(name, args):
  cfg = network.T5Config.tiny(
    args.vocab,
    dtype=args.dtype,
    dropout_implementation=args.dropout,
    **CONFIGS[name],
  )
  batch = make_batch(cfg, args.batch, args.input_length, args.target_length)
  ours, n_ours, traced = bench_ours(
    cfg, batch, args.warmup, args.steps, trace=args.trace
  )
  row = {'config': name, 'params': int(n_ours), 'ours_s_per_step': ours}
  if traced:
    row['trace'] = traced
  if not args.skip_hf:
    theirs, n_hf = bench_hf(cfg, batch, args.warmup, args.steps, args.threads)
    row.update(hf_s_per_step=theirs, hf_params=int(n_hf))
  flops = train_flops(cfg, args.batch, args.input_length, args.target_length)
  if args.profile:
    row['profile'] = profile_step(cfg, batch, args)
    row['profile']['seconds']['step'] = ours
    row['profile']['matmul_ceiling_mfu'] = flops / (
      row['profile']['seconds']['matmuls'] * args.peak_tflops * 1e12
    )
  row['train_tflops_per_step'] = flops / 1e12
  row['ours_gflops_per_s'] = flops / ours / 1e9
  row['mfu'] = flops / ours / (args.peak_tflops * 1e12)
  if 'hf_s_per_step' in row:
    row['hf_mfu'] = flops / row['hf_s_per_step'] / (args.peak_tflops * 1e12)
  return row


def print_table(rows, args):
  tokens = args.batch * args.target_length
  print(
    f"{'config':8} {'params':>11} {'ours tok/s':>11} {'ours ex/s':>10} "
    f"{'HF tok/s':>10} {'HF ex/s':>9} {'ours/HF':>8} {'MFU':>6} "
    f"{'HF MFU':>6}"
  )
  for r in rows:
    hf = r.get('hf_s_per_step')
    ours = r['ours_s_per_step']
    print(
      f"{r['config']:8} {r['params']:>11,} {tokens / ours:>11.1f} "
      f"{args.batch / ours:>10.2f} "
      f"{tokens / hf if hf else float('nan'):>10.1f} "
      f"{args.batch / hf if hf else float('nan'):>9.2f} "
      f"{hf / ours if hf else float('nan'):>8.2f} "
      f"{r['mfu']:>6.3f} {r.get('hf_mfu', float('nan')):>6.3f}"
    )
  print(f'MFU against a peak of {args.peak_tflops * 1e3:.1f} GFLOP/s')
  for r in rows:
    if 'profile' not in r:
      continue
    seconds = r['profile']['seconds']
    print(f"{r['config']}: seconds per step, each part timed alone")
    for part, value in seconds.items():
      print(f'  {part:18} {value * 1e3:9.1f} ms {value / seconds["step"]:6.2f}')
    for m in r['profile']['matmul_shapes']:
      print(
        f"  {m['name']:18} {str(m['shape']):22} x{m['count']:<3}"
        f" {m['gflops_per_s']:7.1f} GFLOP/s"
      )
    print(
      f"  MFU if only the matmuls ran: {r['profile']['matmul_ceiling_mfu']:.3f}"
    )
  for r in rows:
    if 'trace' not in r:
      continue
    print(
      f"{r['config']}: traced thread time per step by op kind (busy threads "
      f"{r['trace']['busy_threads']:.2f} of {os.cpu_count()})"
    )
    for kind, seconds in list(r['trace']['seconds_by_kind'].items())[:8]:
      print(f'  {kind:28} {seconds * 1e3:8.1f} ms')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = types.SimpleNamespace(
    **{name: holder.value for name, holder in _FLAGS.items()}
  )
  unknown = [n for n in args.configs.split(',') if n not in CONFIGS]
  if unknown:
    raise app.UsageError(
      f'--configs: unknown {unknown}, known {sorted(CONFIGS)}'
    )
  jax.config.update('jax_default_prng_impl', args.prng_impl)
  load = [bench_env.machine_load('before')]
  measured_peak = bench_env.matmul_peak_gflops(dtype=args.dtype) / 1e3
  args.peak_source = 'flag' if args.peak_tflops else 'measured matmul'
  args.peak_tflops = args.peak_tflops or measured_peak
  rows = [bench_config(name, args) for name in args.configs.split(',')]
  load.append(bench_env.machine_load('after'))
  print_table(rows, args)
  if args.out:
    result = {
      'args': vars(args),
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0]),
      'rows': rows,
      'measured_matmul_peak_tflops': measured_peak,
      'load': load,
      'flops_formula': train_flops.__doc__,
    }
    atomic_io.write_json(args.out, result, indent=1)


if __name__ == '__main__':
  entry.run(main)
