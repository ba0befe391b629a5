r"""The BERT encoder (all-MiniLM-L6-v2) beside PyTorch's, on the same shapes.

  python scripts/bench_encoder.py --out=/tmp/bench_encoder.json \
    [--shapes=1x16,16x16,1x128,8x128,32x128,64x128] [--reps=5]

For each [batch, length] shape: the best of --reps timed passes of gr's
jitted encoder (gr/model/bert.py, mean-pooled and normalised, as the
corpus embedder, the online adds and the query side run it) and of Hugging
Face transformers' PyTorch BertModel with the same weights and tokens (the
peer; torch threads = the CPU's cores). Prints tokens/s, GFLOP/s (2 FLOPs
per multiply-add of the matmuls, attention included) beside this CPU's
measured fp32 matmul peak, and gr / PyTorch as a speed ratio, and writes
them with the machine's load before and after as JSON. The two must agree:
the pooled vectors are compared (max abs difference) on every shape.
"""

import json
import os
import platform

from absl import app
from absl import flags
import numpy as np

from gr import bench_env
from gr.search import flops

_OUT = flags.DEFINE_string('out', '/tmp/bench_encoder.json', 'JSON output.')
_SHAPES = flags.DEFINE_list(
  'shapes',
  ['1x16', '16x16', '1x128', '8x128', '32x128', '64x128'],
  'batch x length shapes.',
)
_REPS = flags.DEFINE_integer('reps', 5, 'Timed passes per shape (best).')


def time_shape(embedder, peer, batch: int, length: int, peak: float) -> dict:
  """Both encoders on one [batch, length] shape of random ids -> a row."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  ids = rng.integers(1000, embedder.config.vocab_size, (batch, length))
  ids = ids.astype(np.int32)
  mask = np.ones_like(ids, bool)
  torch_ids = torch.from_numpy(ids.astype(np.int64))

  def ours():
    encode = embedder._encode  # pylint: disable=protected-access
    return jax.block_until_ready(encode(embedder.params, ids, mask))

  def theirs():
    with torch.inference_mode():
      states = peer(torch_ids, attention_mask=torch.ones_like(torch_ids))
    pooled = states.last_hidden_state.mean(1)
    return torch.nn.functional.normalize(pooled, dim=-1)

  difference = float(np.abs(np.asarray(ours()) - theirs().numpy()).max())
  config = embedder.config
  gflop = batch * flops.bert_encoder_flops(
    length, config.hidden_size, config.num_layers, config.intermediate_size
  ) / 1e9  # fmt: skip
  seconds = {
    'gr': min(bench_env.run_seconds(ours, _REPS.value)),
    'pytorch': min(bench_env.run_seconds(theirs, _REPS.value)),
  }
  row = {'batch': batch, 'length': length, 'gflop': gflop}
  row['max_abs_difference'] = difference
  for name, s in seconds.items():
    row[name] = {
      'ms': 1e3 * s,
      'tokens_per_s': batch * length / s,
      'gflops': gflop / s,
      'of_peak': gflop / s / peak,
    }
  row['gr_speed_over_pytorch'] = seconds['pytorch'] / seconds['gr']
  return row


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from gr.model import embed  # pylint: disable=g-import-not-at-top

  load_before = bench_env.machine_load('before')
  torch.set_num_threads(os.cpu_count() or 1)
  embedder = embed.Embedder.load()
  peer = transformers.BertModel.from_pretrained(embed.default_model_dir())
  peer.eval()
  peak = bench_env.matmul_peak_gflops()
  rows = []
  for shape in _SHAPES.value:
    batch, length = (int(x) for x in shape.split('x'))
    row = time_shape(embedder, peer, batch, length, peak)
    rows.append(row)
    print(
      f"{batch:>3} x {length:<4} gr {row['gr']['ms']:8.1f} ms "
      f"{row['gr']['gflops']:6.1f} GFLOP/s ({row['gr']['of_peak']:.2f} of "
      f"peak) | pytorch {row['pytorch']['ms']:8.1f} ms "
      f"{row['pytorch']['gflops']:6.1f} GFLOP/s | "
      f"gr {row['gr_speed_over_pytorch']:.2f}x | "
      f"max |diff| {row['max_abs_difference']:.1e}",
      flush=True,
    )
  record = {
    'machine': platform.platform(),
    'cores': os.cpu_count(),
    'device': str(jax.devices()[0]),
    'matmul_peak_gflops': peak,
    'shapes': rows,
    'load': [load_before, bench_env.machine_load('after')],
  }
  print(f'matmul peak {peak:.0f} GFLOP/s')
  with open(_OUT.value, 'w') as f:
    json.dump(record, f, indent=1)


if __name__ == '__main__':
  app.run(main)
