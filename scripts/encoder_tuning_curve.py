r"""The encoder tuning's learning curve: dense MRR@10 on dev and test by step.

  python scripts/encoder_tuning_curve.py [--gin_file=configs/demo.gin]
      [--every=20] [--out=docs/results/news/tuned_encoder/learning_curve.json]

Tunes the config's pretrained encoder exactly as its run does
(`run_experiment.encoder_tuning`, gr/experiments/tuned_encoder.py: the
train queries of every query set, BM25 hard negatives if set) and, at step
0 and every `--every` steps, embeds the whole corpus with the encoder as it
is and scores exact-cosine retrieval (MRR@10) on the dev and test queries
of each query set. Test is traced, never chosen on. Each corpus embedding
costs as much as the run's own (minutes on a CPU). Writes JSON after every
point, atomically.
"""

from gr import console

# Before anything imports TensorFlow: its C++ start-up lines go to the log.
console.quiet_native_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import gin  # noqa: E402

from gr import atomic_io  # noqa: E402
from gr.data import beir  # noqa: E402
from gr.experiments import dev_selection  # noqa: E402
from gr.experiments import gin_cli  # noqa: E402
from gr.experiments import run  # noqa: E402
from gr.experiments import tuned_encoder  # noqa: E402
from gr.model import embed  # noqa: E402
from gr.train import encoder_tuning  # noqa: E402

_GIN_FILES, _GIN_BINDINGS = gin_cli.define_gin_flags(['configs/demo.gin'])
_EVERY = flags.DEFINE_integer('every', 20, 'Steps between curve points.')
_OUT = flags.DEFINE_string(
  'out', 'docs/results/news/tuned_encoder/learning_curve.json', 'JSON out.'
)
SPLITS = ('dev', 'test')


def _setting(name: str, default=None):
  """run_experiment's `name` as the config binds it (evaluated)."""
  try:
    reference = gin.query_parameter(f'run_experiment.{name}')
  except ValueError:
    return default
  if isinstance(reference, gin.config.ConfigurableReference):
    return reference.scoped_configurable_fn()
  return reference


def main(argv):
  del argv
  gin_cli.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  tuning = _setting('encoder_tuning')
  if tuning is None:
    raise ValueError('the config sets no run_experiment.encoder_tuning')
  data_dir, length = _setting('data_dir'), _setting('input_length')
  query_sets = _setting('query_sets', run.DEFAULT_QUERY_SETS)
  max_docs = _setting('max_docs', 0)
  encoder_dir = _setting('model').config.encoder_dir
  cache_dir = _setting('encoder_cache_dir') or tempfile.mkdtemp()
  dataset = dev_selection.subset(beir.BeirDataset.load(data_dir), max_docs)
  held = {
    split: dev_selection.held_out_queries(data_dir, query_sets, split, max_docs)
    for split in ('train', *SPLITS)
  }
  pairs, negatives = tuned_encoder.tuning_inputs(
    dataset, list(held['train'].values()), tuning
  )
  start = embed.Embedder.load(encoder_dir, max_length=length)
  doc_ids, curve = list(dataset.corpus), []

  def point(step: int, embedder: embed.Embedder) -> None:
    vectors = embed.document_embeddings(dataset.corpus, embedder, cache_dir)
    scores = {'step': step}
    for split in SPLITS:
      for name, mrr in tuned_encoder.dense_mrr(
        embedder, doc_ids, vectors, held[split]
      ).items():
        scores[f'{name}/{split}'] = round(mrr, 4)
    curve.append(scores)
    logging.info('curve point %s', scores)
    print(json.dumps(scores), flush=True)
    record = {'data_dir': os.path.abspath(data_dir), 'pairs': len(pairs),
      'settings': dataclasses.asdict(tuning), 'dense_MRR@10': curve}  # fmt: skip
    atomic_io.write_json(_OUT.value, record, indent=1)

  def on_step(step, params):
    if step % _EVERY.value == 0 or step == steps:
      point(step, embed.Embedder(start.config, params, start.tokenizer, length))

  steps = tuning.steps_for(len(pairs))
  point(0, start)
  encoder_tuning.tune(start, pairs, tuning, negatives, on_step=on_step)


if __name__ == '__main__':
  gin_cli.run(main, console=True)
