r"""DSI-QG: trains (or loads) doc2query on a BEIR folder, writes its queries.

  python scripts/generate_queries.py --data_dir=data/news \
    --model_dir=/tmp/gr_d2q \
    --output=data/news/pseudo_queries/dsi_qg_tiny.jsonl \
    --gin_file=gin/models/t5_tiny.gin --vocab_size=4000 --train_steps=600 \
    --batch_size=32 --learning_rate=3e-3 --input_length=64 --max_query_len=24 \
    --num_queries=5 --top_k=10

The model learns body -> query text from the train qrels (for the news
benchmark: body -> title) and samples --num_queries queries per document
of the corpus from its body only. Run again with the same --model_dir, it
resumes (or just loads) the model. The vocabulary is kept in model_dir/vocab.
Output: one `{"_id", "queries"}` JSON line per document, written atomically.
The pipeline is gr/experiments/generate_queries.py; this script parses flags.
The console shows status lines; the full log (gin config, INFO lines) is
in model_dir/logs/generate_queries-<time>.log (--verbose: on the console
too).
"""

from gr import console

# Before anything imports TensorFlow: its C++ start-up lines go to the log.
console.quiet_native_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from gr.experiments import generate_queries  # noqa: E402
from gr.experiments import gin_cli  # noqa: E402

flags.DEFINE_string('data_dir', None, 'BEIR folder.', required=True)
flags.DEFINE_string('model_dir', None, 'doc2query checkpoints.', required=True)
flags.DEFINE_string('output', None, 'Pseudo-queries JSONL.', required=True)
flags.DEFINE_string(
  'filtered_output',
  None,
  'Also write the queries that pass the BM25 filter here.',
)
flags.DEFINE_string(
  'filter_checkpoint',
  None,
  'Filter with this GR run (a trained checkpoint) instead of BM25.',
)
flags.DEFINE_integer(
  'filter_top_k', 10, 'Keep a query if its document is in BM25 top k.'
)
flags.DEFINE_string('report', None, 'Write the quality report (JSON) here.')
flags.DEFINE_list(
  'query_files',
  ['queries.jsonl:qrels', 'subtitles/queries.jsonl:subtitles/qrels'],
  'queries_file:qrels_dir pairs whose train qrels teach '
  'doc2query (those that exist).',
)
gin_cli.define_gin_flags(
  ['gin/models/t5_tiny.gin'], 'Gin files that set MODEL.'
)
flags.DEFINE_integer('train_steps', 2000, 'doc2query training steps.')
flags.DEFINE_integer('batch_size', 64, 'Training batch size.')
flags.DEFINE_integer('checkpoint_every', 500, 'Checkpoint every N steps.')
flags.DEFINE_integer('log_every', 100, 'Log the loss every N steps.')
flags.DEFINE_float('learning_rate', 1e-3, 'AdamW peak learning rate.')
flags.DEFINE_integer('vocab_size', 8000, 'sentencepiece pieces (T5 only).')
flags.DEFINE_integer('input_length', 256, 'Body tokens read.')
flags.DEFINE_integer('max_query_len', 32, 'Query tokens, EOS included.')
flags.DEFINE_integer(
  'vector_every',
  0,
  'Pretrained encoder: every k-th training row sees only '
  'its document vector (the generative memory).',
)
flags.DEFINE_integer('num_queries', 5, 'Samples per document (deduped).')
flags.DEFINE_integer('top_k', 10, 'Top-k sampling (0: off).')
flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass.')
flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
flags.DEFINE_integer('generate_batch_size', 32, 'Documents per jitted call.')
flags.DEFINE_integer('seed', 0, 'Seed for vocab, training and sampling.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  gin_cli.parse_gin(
    FLAGS.gin_file, FLAGS.gin_bindings + ['doc2query_model.model = %MODEL']
  )
  console.log_to(FLAGS.model_dir)
  generate_queries.generate_queries(
    data_dir=FLAGS.data_dir,
    model_dir=FLAGS.model_dir,
    output=FLAGS.output,
    filtered_output=FLAGS.filtered_output,
    filter_top_k=FLAGS.filter_top_k,
    filter_checkpoint=FLAGS.filter_checkpoint,
    report=FLAGS.report,
    query_files=[tuple(pair.split(':')) for pair in FLAGS.query_files],
    train_steps=FLAGS.train_steps,
    batch_size=FLAGS.batch_size,
    checkpoint_every=FLAGS.checkpoint_every,
    log_every=FLAGS.log_every,
    learning_rate=FLAGS.learning_rate,
    vocab_size=FLAGS.vocab_size,
    input_length=FLAGS.input_length,
    max_query_len=FLAGS.max_query_len,
    vector_every=FLAGS.vector_every,
    num_queries=FLAGS.num_queries,
    top_k=FLAGS.top_k,
    top_p=FLAGS.top_p,
    temperature=FLAGS.temperature,
    generate_batch_size=FLAGS.generate_batch_size,
    seed=FLAGS.seed,
  )


if __name__ == '__main__':
  gin_cli.run(main, console=True)
