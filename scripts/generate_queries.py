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
"""
import os
import sys

from absl import app
from absl import flags
import gin

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gr import doc2query  # pylint: disable=g-import-not-at-top,wrong-import-position
from gr import gin_cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from gr import pseudo_queries  # pylint: disable=g-import-not-at-top,wrong-import-position
from gr import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from gr.data import beir  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('data_dir', None, 'BEIR folder.', required=True)
flags.DEFINE_string('model_dir', None, 'doc2query checkpoints.', required=True)
flags.DEFINE_string('output', None, 'Pseudo-queries JSONL.', required=True)
flags.DEFINE_multi_string('gin_file', ['gin/models/t5_tiny.gin'],
                          'Gin files that set MODEL.')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings.')
flags.DEFINE_integer('train_steps', 2000, 'doc2query training steps.')
flags.DEFINE_integer('batch_size', 64, 'Training batch size.')
flags.DEFINE_integer('checkpoint_every', 500, 'Checkpoint every N steps.')
flags.DEFINE_float('learning_rate', 1e-3, 'AdamW peak learning rate.')
flags.DEFINE_integer('vocab_size', 8000, 'sentencepiece pieces.')
flags.DEFINE_integer('input_length', 256, 'Body tokens read.')
flags.DEFINE_integer('max_query_len', 32, 'Query tokens, EOS included.')
flags.DEFINE_integer('num_queries', 5, 'Samples per document (deduped).')
flags.DEFINE_integer('top_k', 10, 'Top-k sampling (0: off).')
flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass.')
flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
flags.DEFINE_integer('generate_batch_size', 32, 'Documents per jitted call.')
flags.DEFINE_integer('seed', 0, 'Seed for vocab, training and sampling.')
FLAGS = flags.FLAGS


@gin.configurable
def doc2query_model(model=gin.REQUIRED):
  return model


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  gin_cli.quiet_orbax_info()
  gin_cli.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings +
                    ['doc2query_model.model = %MODEL'])
  dataset = beir.BeirDataset.load(FLAGS.data_dir)
  vocab = doc2query.load_or_train_vocab(
      dataset, os.path.join(FLAGS.model_dir, 'vocab'),
      vocab_size=FLAGS.vocab_size, seed=FLAGS.seed)
  name = ''.join(c if c.isalnum() else '_' for c in
                 os.path.basename(os.path.normpath(FLAGS.data_dir)))
  model, params = doc2query.train_doc2query(
      model=doc2query_model(), dataset=dataset, vocab=vocab,
      model_dir=FLAGS.model_dir, name=name, train_steps=FLAGS.train_steps,
      batch_size=FLAGS.batch_size, input_length=FLAGS.input_length,
      max_query_len=FLAGS.max_query_len, seed=FLAGS.seed,
      checkpoint_every=FLAGS.checkpoint_every,
      optimizer=train_lib.OptimizerConfig(
          learning_rate=FLAGS.learning_rate, schedule='cosine',
          warmup_steps=min(200, FLAGS.train_steps // 10)))
  queries = doc2query.generate_queries(
      model, params, vocab, dataset.corpus, n=FLAGS.num_queries,
      input_length=FLAGS.input_length, max_query_len=FLAGS.max_query_len,
      batch_size=FLAGS.generate_batch_size, seed=FLAGS.seed,
      top_k=FLAGS.top_k, top_p=FLAGS.top_p, temperature=FLAGS.temperature)
  pseudo_queries.write_pseudo_queries(FLAGS.output, queries)
  print(f'{sum(map(len, queries.values()))} queries for {len(queries)} '
        f'documents -> {FLAGS.output}')


if __name__ == '__main__':
  sys.argv = gin_cli.rewrite_gin_shorthand(sys.argv)
  app.run(main)
