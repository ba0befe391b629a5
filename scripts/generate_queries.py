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

import json
import os

from absl import app
from absl import flags
import gin

from gr import atomic_io
from gr import doc2query
from gr import dsi_qg
from gr import pretrained
from gr import pseudo_queries
from gr import serving
from gr.data import beir
from gr.experiments import configurables
from gr.experiments import gin_cli

flags.DEFINE_string('data_dir', None, 'BEIR folder.', required=True)
flags.DEFINE_string('model_dir', None, 'doc2query checkpoints.', required=True)
flags.DEFINE_string('output', None, 'Pseudo-queries JSONL.', required=True)
flags.DEFINE_string(
  'filtered_output',
  None,
  'Also write the queries that pass the BM25 filter here.',
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
flags.DEFINE_multi_string(
  'gin_file', ['gin/models/t5_tiny.gin'], 'Gin files that set MODEL.'
)
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings.')
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


@gin.configurable
def doc2query_model(model=gin.REQUIRED):
  return model


def held_out_sets(data_dir: str) -> dict:
  """{name: (queries, qrels)}: the test split of each query file."""
  sets = {}
  for pair in FLAGS.query_files:
    queries_file, qrels_dir = pair.split(':')
    if not os.path.exists(os.path.join(data_dir, qrels_dir, 'test.tsv')):
      continue
    dataset = beir.BeirDataset.load(
      data_dir, queries_file=queries_file, qrels_dir=qrels_dir, splits=['test']
    )
    sets[f'{os.path.dirname(queries_file) or "queries"}/test'] = (
      dataset.queries,
      dataset.qrels['test'],
    )
  return sets


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  gin_cli.quiet_orbax_info()
  gin_cli.parse_gin(
    FLAGS.gin_file, FLAGS.gin_bindings + ['doc2query_model.model = %MODEL']
  )
  dataset = dsi_qg.training_pairs(
    FLAGS.data_dir, [tuple(p.split(':')) for p in FLAGS.query_files]
  )
  model = doc2query_model()
  vocab = doc2query.model_vocabulary(
    model,
    dataset,
    os.path.join(FLAGS.model_dir, 'vocab'),
    vocab_size=FLAGS.vocab_size,
    seed=FLAGS.seed,
  )
  name = ''.join(
    c if c.isalnum() else '_'
    for c in os.path.basename(os.path.normpath(FLAGS.data_dir))
  )
  model, params = doc2query.train_doc2query(
    model=model,
    dataset=dataset,
    vocab=vocab,
    model_dir=FLAGS.model_dir,
    name=name,
    train_steps=FLAGS.train_steps,
    batch_size=FLAGS.batch_size,
    input_length=FLAGS.input_length,
    max_query_len=FLAGS.max_query_len,
    seed=FLAGS.seed,
    checkpoint_every=FLAGS.checkpoint_every,
    log_every=FLAGS.log_every,
    vector_every=FLAGS.vector_every,
    # The gin-bound loop and optimizer: train.* and OptimizerConfig.*
    # bindings apply to what is not set here.
    train_fn=configurables.train,
    optimizer=configurables.OptimizerConfig(
      learning_rate=FLAGS.learning_rate,
      schedule='cosine',
      warmup_steps=min(200, FLAGS.train_steps // 10),
    ),
  )
  config = doc2query.GenerationConfig(
    num_queries=FLAGS.num_queries,
    input_length=FLAGS.input_length,
    max_query_len=FLAGS.max_query_len,
    batch_size=FLAGS.generate_batch_size,
    seed=FLAGS.seed,
    top_k=FLAGS.top_k,
    top_p=FLAGS.top_p,
    temperature=FLAGS.temperature,
  )
  queries = doc2query.Doc2QueryGenerator(model, params, vocab, config).generate(
    dataset.corpus
  )
  pseudo_queries.write_pseudo_queries(FLAGS.output, queries)
  print(
    f'{sum(map(len, queries.values()))} queries for {len(queries)} '
    f'documents -> {FLAGS.output}'
  )
  outputs = {'generated': queries}
  if FLAGS.filtered_output:
    if FLAGS.filter_checkpoint:  # the current GR model
      ranker = dsi_qg.model_ranker(
        serving.Retriever.from_checkpoint(FLAGS.filter_checkpoint),
        FLAGS.filter_top_k,
      )
    else:
      ranker = dsi_qg.bm25_ranker(dataset.corpus, FLAGS.filter_top_k)
    kind = 'model_filtered' if FLAGS.filter_checkpoint else 'bm25_filtered'
    outputs[kind] = dsi_qg.rank_filter(ranker, queries)
    pseudo_queries.write_pseudo_queries(FLAGS.filtered_output, outputs[kind])
  if FLAGS.vector_every:
    held_docs = sorted(
      {
        d
        for _, qrels in held_out_sets(FLAGS.data_dir).values()
        for docs in qrels.values()
        for d in docs
      }
    )
    outputs['from_vectors'] = doc2query.VectorQueryGenerator(
      model, params, vocab, config
    ).generate_vectors(
      pretrained.body_vectors(
        model,
        params,
        vocab,
        {d: dataset.corpus[d] for d in held_docs},
        FLAGS.input_length,
      )
    )
  if FLAGS.report:
    held_out = held_out_sets(FLAGS.data_dir)
    report = {
      kind: dsi_qg.query_report(found, dataset, held_out, seed=FLAGS.seed)
      for kind, found in outputs.items()
    }
    with atomic_io.atomic_open(FLAGS.report) as f:
      json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == '__main__':
  gin_cli.run(main)
